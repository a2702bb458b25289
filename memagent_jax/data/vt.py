"""Variable tracking as RULER defines it: chains of assignments scattered, in order, in the noise.

Chain: ``VAR ABCDE = 12345`` then ``num_hops`` hops ``VAR XYZWV = VAR ABCDE `` (RULER's trailing space kept).
Each line is its own piece, in chain order (chains interleave). The question asks for the value of chain 0;
the answers are all names of that chain, in chain order (answer_mode "all"). Other chains are distractors
with other values. Names are distinct strings of 5 upper-case letters, values 5-digit numbers.

As in RULER's files, the document opens with a worked example (``one_shot_tokens`` > 0): RULER's head line,
a short noise context with a chain of 3-letter names and another value, then that example's question and
answer ("... they are:  ABC DEF ..."), then the head line again and the real context. A reader must track
the asked value's chain and ignore the example's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from memagent_jax.data.document import Sample, Span, TextTokenizer
from memagent_jax.data.haystack import FILLER, FillerLines, HaystackDocument
from memagent_jax.data.synthetic import SyntheticTask
from memagent_jax.data.words import UPPER

__all__ = ["VT_HEAD", "VariableTrackingTask", "vt_question"]

VT_HEAD = "Memorize and track the chain(s) of variable assignment hidden in the following text."


def vt_question(value: str) -> str:
    return f"Find all variables that are assigned the value {value} in the text above."


def _chain_lines(names: list[str], value: str) -> list[str]:
    return [f"VAR {names[0]} = {value}"] + [f"VAR {b} = VAR {a} " for a, b in zip(names, names[1:])]


def _names(rng: np.random.Generator, n: int, letters: int = 5) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        for row in rng.integers(0, 26, size=(n, letters)):
            name = "".join(UPPER[row])
            if name not in seen and len(names) < n:
                seen.add(name)
                names.append(name)
    return names


class VariableTrackingTask(SyntheticTask):
    answer_mode = "all"

    def __init__(self, tokenizer: TextTokenizer, target_tokens: int, *, num_chains: int = 1, num_hops: int = 4,
                 one_shot_tokens: int = 500, **kw: Any):
        if num_chains < 1 or num_hops < 0 or one_shot_tokens < 0:
            raise ValueError("need num_chains >= 1, num_hops >= 0 and one_shot_tokens >= 0")
        self.num_chains, self.num_hops, self.one_shot_tokens = num_chains, num_hops, one_shot_tokens
        super().__init__(tokenizer, target_tokens, **kw)

    def default_name(self) -> str:
        shot = f"_shot{self.one_shot_tokens}" if self.one_shot_tokens else ""
        return f"vt_c{self.num_chains}_h{self.num_hops}{shot}"

    def _one_shot(self, rng: np.random.Generator, value: str) -> str:
        """RULER's worked example: about min(one_shot_tokens, target / 2) tokens, another value, 3-letter names;
        none when even its chain and answer do not fit that (RULER itself makes no vt prompt that short)."""
        other = value
        while other == value:
            other = str(10_000 + int(rng.integers(90_000)))
        names = _names(rng, self.num_hops + 1, letters=3)
        chain = _chain_lines(names, other)
        answer = (f"Question: {vt_question(other)} Answer: According to the chain(s) of variable assignment in the "
                  f"text above, {len(names)} variables are assigned the value {other}, they are:  {' '.join(names)}")
        fixed = self.planner.count(VT_HEAD + "\n\n" + "\n".join(chain) + "\n" + answer + "\n\n")
        budget = min(self.one_shot_tokens, self.target_tokens // 2)
        if fixed > budget:
            return ""
        noise = max(0, (budget - fixed) // max(self.planner.count(FILLER + "\n"), 1))
        lines = [FILLER] * noise
        for line, at in zip(chain, sorted(int(p) for p in rng.choice(noise + len(chain), len(chain), replace=False))):
            lines.insert(at, line)
        return VT_HEAD + "\n\n" + "\n".join(lines) + "\n" + answer + "\n\n"

    def sample(self, index: int) -> Sample:
        rng = self.rng(index)
        per_chain = self.num_hops + 1
        names = _names(rng, self.num_chains * per_chain)
        values = [str(10_000 + int(v)) for v in rng.choice(90_000, size=self.num_chains, replace=False)]
        chains = [_chain_lines(names[c * per_chain : (c + 1) * per_chain], values[c]) for c in range(self.num_chains)]

        # A random interleaving that keeps each chain in order.
        order = np.repeat(np.arange(self.num_chains), per_chain)
        rng.shuffle(order)
        cursor = [0] * self.num_chains
        ordered: list[tuple[int, str]] = []
        for c in order.tolist():
            ordered.append((c, chains[c][cursor[c]]))
            cursor[c] += 1

        # Piece 0: the worked example (if any) and the head line.
        head = (self._one_shot(rng, values[0]) if self.one_shot_tokens else "") + VT_HEAD + "\n\n"
        stream = FillerLines()
        fixed = self.planner.count(head) + sum(self.planner.count(line + "\n") for _, line in ordered)
        n_units, tokens, skip = self.planner.plan(stream, self.target_tokens, fixed, len(ordered) + 1)
        total = n_units + len(ordered)
        positions = sorted(1 + int(p) for p in rng.choice(total, size=len(ordered), replace=False))
        inserts = ((0, head),) + tuple((p, line + "\n") for p, (_, line) in zip(positions, ordered))
        # The memory keeps each assigned name: the chain so far, as the answer lists it; a hop extends it when
        # its right-hand name is the chain's last.
        spans = tuple(Span(p, line, note=line.split()[1]) for p, (c, line) in zip(positions, ordered) if c == 0)
        return Sample(
            index=index,
            task=self.name,
            question=vt_question(values[0]),
            answers=tuple(names[:per_chain]),
            document=HaystackDocument(stream, n_units, inserts, spans, tokens, skip=skip),
            answer_mode="all",
            meta={"target_tokens": self.target_tokens, "value": values[0]},
        )
