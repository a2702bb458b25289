"""Needle-in-a-haystack tasks as RULER defines them (single, multi-key, multi-value, multi-query).

Needle: ``One of the special magic {numbers|words|uuids} for {key} is: {value}.`` on its own line. Keys are
adjective-noun words (data/words.py, RULER's lists, split between training and evaluation) or UUIDs; values
7-digit numbers, adjective-noun words or UUIDs. Haystack "noise": the repeated filler line; haystack "needle":
distractor needles with other keys. ``num_keys`` keys are inserted, the first ``num_queries`` are asked about,
each key has ``num_values`` values; the others are distractor needles (multi-key). Answers: the values of the
asked keys, all of them required (answer_mode "all").

The document opens with RULER's head line ("A special magic number is hidden within the following text. ...")
and the question is RULER's, so a sample reads exactly like a row of RULER's own generator whose ``input`` is
split at its last line (data/records.py).
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import numpy as np

from memagent_jax.data.document import Sample, Span, TextTokenizer
from memagent_jax.data.haystack import BlockStream, FillerLines, HaystackDocument, UnitStream
from memagent_jax.data.synthetic import SyntheticTask
from memagent_jax.data.words import key_space

__all__ = ["KEY_KINDS", "NeedleLines", "NeedleTask", "join_keys", "needle_head", "needle_line"]

VALUE_KINDS = ("numbers", "words", "uuids", "digits")
KEY_KINDS = ("words", "uuids")
_SINGULAR = {"numbers": "number", "words": "word", "uuids": "uuid", "digits": "digit"}


def needle_line(kind: str, key: str, value: str) -> str:
    return f"One of the special magic {kind} for {key} is: {value}."


def needle_head(kind: str, single: bool) -> str:
    """RULER's first line of a niah prompt (singular when one value is asked in all)."""
    if single:
        noun = _SINGULAR[kind]
        return (f"A special magic {noun} is hidden within the following text. Make sure to memorize it. "
                f"I will quiz you about the {noun} afterwards.")
    return (f"Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
            f"I will quiz you about the {kind} afterwards.")


def join_keys(keys: list[str]) -> str:
    """'a', 'a, and b', 'a, b, and c' (RULER's multi-query wording, its comma before 'and' included)."""
    if len(keys) == 1:
        return keys[0]
    return ", ".join(keys[:-1]) + ", and " + keys[-1]


def _uuids(rng: np.random.Generator, n: int) -> list[str]:
    return [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)]


def _values(rng: np.random.Generator, kind: str, n: int, key_split: str) -> list[str]:
    """``n`` distinct values: 7-digit numbers, adjective-noun words, UUIDs, or single digits (a toy task a
    policy can guess 10% of the time, so reinforcement learning alone gets a signal)."""
    if kind == "digits":
        if n > 10:
            raise ValueError(f"at most 10 digit values per sample, asked for {n}")
        return [str(int(d)) for d in rng.choice(10, size=n, replace=False)]
    if kind == "numbers":
        return [str(1_000_000 + int(v)) for v in rng.choice(9_000_000, size=n, replace=False)]
    if kind == "words":
        return key_space(key_split).keys(rng, n)
    return _uuids(rng, n)


def _keys(rng: np.random.Generator, kind: str, n: int, key_split: str, distinct: bool = True) -> list[str]:
    return key_space(key_split).keys(rng, n, distinct) if kind == "words" else _uuids(rng, n)


@dataclasses.dataclass(frozen=True)
class NeedleLines(BlockStream):
    """Distractor needles with random keys (never one of ``excluded``) and random values."""

    seed: int
    task_id: int
    index: int
    kind: str
    excluded: frozenset[str] = frozenset()
    key_kind: str = "words"
    key_split: str = "train"

    def rng_key(self) -> tuple[int, ...]:
        return (self.seed, self.task_id, self.index, 1)

    def make_block(self, rng: np.random.Generator, n: int) -> list[str]:
        keys = _keys(rng, self.key_kind, n, self.key_split, distinct=False)
        # Distractor values may repeat (as in RULER); only keys must avoid the asked ones.
        values = _values(rng, self.kind, n, self.key_split) if self.kind != "words" else \
            key_space(self.key_split).keys(rng, n, distinct=False)
        lines = []
        for key, value in zip(keys, values):
            while key in self.excluded:  # a redraw; excluded is a few keys of millions, so this ends at once
                key = _keys(rng, self.key_kind, 1, self.key_split)[0]
            lines.append(needle_line(self.kind, key, value) + "\n")
        return lines

    def calibration_stream(self) -> "NeedleLines":
        return NeedleLines(0, 0, 0, self.kind, key_kind=self.key_kind, key_split=self.key_split)

    def family(self) -> object:
        return (NeedleLines, self.kind, self.key_kind, self.key_split)


class NeedleTask(SyntheticTask):
    """RULER niah; see tasks.py for the presets. ``key_kind`` "uuids" is RULER's niah_multikey_3."""

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
        key_kind: str = "words",
        haystack: str = "noise",
        **kwargs: Any,
    ):
        if value_kind not in VALUE_KINDS:
            raise ValueError(f"value_kind must be one of {VALUE_KINDS}, got {value_kind!r}")
        if key_kind not in KEY_KINDS:
            raise ValueError(f"key_kind must be one of {KEY_KINDS}, got {key_kind!r}")
        if haystack not in ("noise", "needle"):
            raise ValueError(f"haystack must be 'noise' or 'needle', got {haystack!r}")
        if not 1 <= num_queries <= num_keys or num_values < 1:
            raise ValueError("need 1 <= num_queries <= num_keys and num_values >= 1")
        self.num_keys, self.num_values, self.num_queries = num_keys, num_values, num_queries
        self.value_kind, self.key_kind, self.haystack = value_kind, key_kind, haystack
        super().__init__(tokenizer, target_tokens, **kwargs)

    def default_name(self) -> str:
        keys = "" if self.key_kind == "words" else f"_{self.key_kind}keys"
        return f"niah_k{self.num_keys}_v{self.num_values}_q{self.num_queries}_{self.haystack}_{self.value_kind}{keys}"

    @property
    def _single(self) -> bool:
        return self.num_queries * self.num_values == 1

    def question(self, keys: list[str]) -> str:
        kind = self.value_kind
        if self._single:
            return f"What is the special magic {_SINGULAR[kind]} for {keys[0]} mentioned in the provided text?"
        return f"What are all the special magic {kind} for {join_keys(keys)} mentioned in the provided text?"

    def sample(self, index: int) -> Sample:
        rng = self.rng(index)
        keys = _keys(rng, self.key_kind, self.num_keys, self.key_split)
        values = _values(rng, self.value_kind, self.num_keys * self.num_values, self.key_split)
        by_key = {k: values[i * self.num_values : (i + 1) * self.num_values] for i, k in enumerate(keys)}
        needles = [(k, v, needle_line(self.value_kind, k, v)) for k in keys for v in by_key[k]]
        needles = [needles[int(i)] for i in rng.permutation(len(needles))]

        stream: UnitStream = (
            FillerLines()
            if self.haystack == "noise"
            else NeedleLines(self.seed, self.task_id, index, self.value_kind, frozenset(keys), self.key_kind,
                             self.key_split)
        )
        head = needle_head(self.value_kind, self._single) + "\n"
        fixed = self.planner.count(head) + sum(self.planner.count(line + "\n") for _, _, line in needles)
        n_units, tokens, skip = self.planner.plan(stream, self.target_tokens, fixed, len(needles) + 1)
        total = n_units + len(needles)
        # Piece 0 is the head line; needles go anywhere after it.
        positions = sorted(1 + int(p) for p in rng.choice(total, size=len(needles), replace=False))

        asked = keys[: self.num_queries]
        inserts = ((0, head),) + tuple((p, line + "\n") for p, (_, _, line) in zip(positions, needles))
        # The memory keeps a needle's value alone: the question names the keys, and the tiny quickstart model
        # copies 4 pieces far more reliably than a 20-piece sentence (BENCHMARKS.md "RULER's task definitions").
        spans = tuple(Span(p, line, note=v) for p, (k, v, line) in zip(positions, needles) if k in asked)
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
                "depths": tuple(round((p - 1) / max(total - 1, 1), 4) for p in positions),
                "keys": tuple(keys),
            },
        )
