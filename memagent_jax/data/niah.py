"""Needle-in-a-haystack tasks in RULER's format (single, multi-key, multi-value, multi-query).

Needle: ``One of the special magic {numbers|words|uuids} for {key} is: {value}.`` on its own line.
Haystack "noise": the repeated filler line; haystack "needle": distractor needles with other keys.
``num_keys`` keys are inserted, the first ``num_queries`` are asked about, each key has ``num_values``
values; the others are distractor needles (multi-key). Answers: the values of the asked keys, in
question order then insertion order; all of them are required (answer_mode "all").
"""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np

from memagent_jax.data.document import Sample, Span, TextTokenizer
from memagent_jax.data.haystack import BlockStream, FillerLines, HaystackDocument, UnitStream
from memagent_jax.data.synthetic import SyntheticTask
from memagent_jax.data.words import VALUE_WORDS, key_by_number, num_keys

__all__ = ["NeedleLines", "NeedleTask", "join_keys", "needle_line"]

VALUE_KINDS = ("numbers", "words", "uuids", "digits")
_SINGULAR = {"numbers": "number", "words": "word", "uuids": "uuid", "digits": "digit"}


def needle_line(kind: str, key: str, value: str) -> str:
    return f"One of the special magic {kind} for {key} is: {value}."


def join_keys(keys: list[str]) -> str:
    """'a', 'a and b', 'a, b, and c' (RULER's multi-query wording)."""
    if len(keys) <= 2:
        return " and ".join(keys)
    return ", ".join(keys[:-1]) + ", and " + keys[-1]


def _values(rng: np.random.Generator, kind: str, n: int) -> list[str]:
    """``n`` distinct values: 7-digit numbers, words, UUIDs, or single digits (a toy task a policy can
    guess 10% of the time, so reinforcement learning alone gets a signal)."""
    if kind == "digits":
        if n > 10:
            raise ValueError(f"at most 10 digit values per sample, asked for {n}")
        return [str(int(d)) for d in rng.choice(10, size=n, replace=False)]
    if kind == "numbers":
        return [str(1_000_000 + int(v)) for v in rng.choice(9_000_000, size=n, replace=False)]
    if kind == "words":
        if n > len(VALUE_WORDS):
            raise ValueError(f"at most {len(VALUE_WORDS)} word values per sample, asked for {n}")
        return [VALUE_WORDS[int(i)] for i in rng.choice(len(VALUE_WORDS), size=n, replace=False)]
    return [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)]


@dataclasses.dataclass(frozen=True)
class NeedleLines(BlockStream):
    """Distractor needles with random keys (never one of ``excluded``) and random values."""

    seed: int
    task_id: int
    index: int
    kind: str
    excluded: frozenset[str] = frozenset()

    def rng_key(self) -> tuple[int, ...]:
        return (self.seed, self.task_id, self.index, 1)

    def make_block(self, rng: np.random.Generator, n: int) -> list[str]:
        total = num_keys()
        numbers = rng.integers(0, total, n).tolist()
        if self.kind == "words":  # distractor values may repeat; only keys must avoid the asked ones
            values = [VALUE_WORDS[int(i)] for i in rng.integers(0, len(VALUE_WORDS), n)]
        else:
            values = _values(rng, self.kind, n)
        lines = []
        for k, v in zip(numbers, values):
            key = key_by_number(k)
            while key in self.excluded:  # deterministic step to the next key (excluded is small)
                k = (k + 1) % total
                key = key_by_number(k)
            lines.append(needle_line(self.kind, key, v) + "\n")
        return lines

    def calibration_stream(self) -> "NeedleLines":
        return NeedleLines(0, 0, 0, self.kind)

    def family(self) -> object:
        return (NeedleLines, self.kind)


class NeedleTask(SyntheticTask):
    """RULER niah. Presets: single (1,1,1), multikey (4 keys, 1 asked), multivalue (4 values),
    multiquery (4 keys, all asked); see tasks.py."""

    answer_mode = "all"

    def __init__(
        self,
        tokenizer: TextTokenizer,
        target_tokens: int,
        *,
        num_keys: int = 1,
        num_values: int = 1,
        num_queries: int = 1,
        value_kind: str = "numbers",
        haystack: str = "noise",
        **kwargs,
    ):
        if value_kind not in VALUE_KINDS:
            raise ValueError(f"value_kind must be one of {VALUE_KINDS}, got {value_kind!r}")
        if haystack not in ("noise", "needle"):
            raise ValueError(f"haystack must be 'noise' or 'needle', got {haystack!r}")
        if not 1 <= num_queries <= num_keys or num_values < 1:
            raise ValueError("need 1 <= num_queries <= num_keys and num_values >= 1")
        self.num_keys, self.num_values, self.num_queries = num_keys, num_values, num_queries
        self.value_kind, self.haystack = value_kind, haystack
        super().__init__(tokenizer, target_tokens, **kwargs)

    def default_name(self) -> str:
        return f"niah_k{self.num_keys}_v{self.num_values}_q{self.num_queries}_{self.haystack}_{self.value_kind}"

    def question(self, keys: list[str]) -> str:
        kind = self.value_kind
        if len(keys) == 1 and self.num_values == 1:
            return f"What is the special magic {_SINGULAR[kind]} for {keys[0]} mentioned in the provided text?"
        return f"What are all the special magic {kind} for {join_keys(keys)} mentioned in the provided text?"

    def sample(self, index: int) -> Sample:
        rng = self.rng(index)
        keys = [key_by_number(int(k)) for k in rng.choice(num_keys(), size=self.num_keys, replace=False)]
        values = _values(rng, self.value_kind, self.num_keys * self.num_values)
        by_key = {k: values[i * self.num_values : (i + 1) * self.num_values] for i, k in enumerate(keys)}
        needles = [(k, v, needle_line(self.value_kind, k, v)) for k in keys for v in by_key[k]]
        needles = [needles[int(i)] for i in rng.permutation(len(needles))]

        stream: UnitStream = (
            FillerLines()
            if self.haystack == "noise"
            else NeedleLines(self.seed, self.task_id, index, self.value_kind, frozenset(keys))
        )
        fixed = sum(self.planner.count(line + "\n") for _, _, line in needles)
        n_units, tokens, skip = self.planner.plan(stream, self.target_tokens, fixed, len(needles))
        total = n_units + len(needles)
        positions = sorted(int(p) for p in rng.choice(total, size=len(needles), replace=False))

        asked = keys[: self.num_queries]
        inserts = tuple((p, line + "\n") for p, (_, _, line) in zip(positions, needles))
        spans = tuple(Span(p, line) for p, (k, _, line) in zip(positions, needles) if k in asked)
        doc = HaystackDocument(stream, n_units, inserts, spans, tokens, skip=skip)
        return Sample(
            index=index,
            task=self.name,
            question=self.question(asked),
            answers=tuple(v for k in asked for v in by_key[k]),
            document=doc,
            answer_mode="all",
            meta={
                "target_tokens": self.target_tokens,
                "depths": tuple(round(p / max(total - 1, 1), 4) for p in positions),
                "keys": tuple(keys),
            },
        )
