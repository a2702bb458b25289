"""Variable tracking in RULER's format: chains of assignments scattered, in order, in the noise.

Chain: ``VAR ABCDE = 12345`` then ``num_hops`` hops ``VAR XYZWV = VAR ABCDE`` ... Each line is its own
piece, in chain order (chains interleave). The question asks for the value of chain 0; the answers are
all names of that chain, in chain order (answer_mode "all"). Other chains are distractors with other
values. Names are 5 distinct upper-case letters strings, values 5-digit numbers.
"""

from __future__ import annotations

import numpy as np

from memagent_jax.data.document import Sample, Span, TextTokenizer
from memagent_jax.data.haystack import FillerLines, HaystackDocument
from memagent_jax.data.synthetic import SyntheticTask
from memagent_jax.data.words import UPPER

__all__ = ["VariableTrackingTask"]


def _names(rng: np.random.Generator, n: int) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        for row in rng.integers(0, 26, size=(n, 5)):
            name = "".join(UPPER[row])
            if name not in seen and len(names) < n:
                seen.add(name)
                names.append(name)
    return names


class VariableTrackingTask(SyntheticTask):
    answer_mode = "all"

    def __init__(self, tokenizer: TextTokenizer, target_tokens: int, *, num_chains: int = 1, num_hops: int = 4, **kw):
        if num_chains < 1 or num_hops < 0:
            raise ValueError("need num_chains >= 1 and num_hops >= 0")
        self.num_chains, self.num_hops = num_chains, num_hops
        super().__init__(tokenizer, target_tokens, **kw)

    def default_name(self) -> str:
        return f"vt_c{self.num_chains}_h{self.num_hops}"

    def sample(self, index: int) -> Sample:
        rng = self.rng(index)
        per_chain = self.num_hops + 1
        names = _names(rng, self.num_chains * per_chain)
        values = [str(10_000 + int(v)) for v in rng.choice(90_000, size=self.num_chains, replace=False)]
        chains = []
        for c in range(self.num_chains):
            chain = names[c * per_chain : (c + 1) * per_chain]
            lines = [f"VAR {chain[0]} = {values[c]}"] + [
                f"VAR {chain[h + 1]} = VAR {chain[h]}" for h in range(self.num_hops)
            ]
            chains.append(lines)

        # A random interleaving that keeps each chain in order.
        order = np.repeat(np.arange(self.num_chains), per_chain)
        rng.shuffle(order)
        cursor = [0] * self.num_chains
        ordered: list[tuple[int, str]] = []
        for c in order.tolist():
            ordered.append((c, chains[c][cursor[c]]))
            cursor[c] += 1

        stream = FillerLines()
        fixed = sum(self.planner.count(line + "\n") for _, line in ordered)
        n_units, tokens, skip = self.planner.plan(stream, self.target_tokens, fixed, len(ordered))
        total = n_units + len(ordered)
        positions = sorted(int(p) for p in rng.choice(total, size=len(ordered), replace=False))
        inserts = tuple((p, line + "\n") for p, (_, line) in zip(positions, ordered))
        spans = tuple(Span(p, line) for p, (c, line) in zip(positions, ordered) if c == 0)
        return Sample(
            index=index,
            task=self.name,
            question=f"Find all variables that are assigned the value {values[0]} in the text above.",
            answers=tuple(names[:per_chain]),
            document=HaystackDocument(stream, n_units, inserts, spans, tokens, skip=skip),
            answer_mode="all",
            meta={"target_tokens": self.target_tokens, "value": values[0]},
        )
