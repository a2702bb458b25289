"""Lazy haystack documents: a deterministic stream of filler units with a few inserted pieces.

A synthetic document is ``num_units`` units of a ``UnitStream`` (filler lines, distractor needles,
distractor paragraphs) with inserted pieces (needles, assignments, gold paragraphs) at fixed piece
positions. Nothing is stored per unit: unit ``j`` is regenerated from (seed, task, sample, j) when
the document is read, so a 10M-token document costs a few hundred bytes until it is streamed.
"""

from __future__ import annotations

import abc
import bisect
import dataclasses
from collections.abc import Iterator

import numpy as np

from memagent_jax.data.document import Document, Span

__all__ = ["BlockStream", "FillerLines", "HaystackDocument", "UnitStream", "doc_header"]


# RULER's noise haystack line (RULER's synthetic tasks, Hsieh et al., 2024).
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


class UnitStream(abc.ABC):
    """An endless, deterministic sequence of text units, each ending with its separator."""

    # True when every unit is the same text: lengths are then computed exactly without sampling.
    uniform: bool = False

    @abc.abstractmethod
    def units(self, start: int = 0) -> Iterator[str]:
        """Units ``start, start+1, ...`` (endless)."""

    @abc.abstractmethod
    def calibration_stream(self) -> "UnitStream":
        """A stream of the same kind independent of any sample: its mean unit length is cached per
        tokenizer and stands for every sample's (see length.py)."""

    def family(self) -> object:
        """Cache key for the calibration: streams of one family have the same length distribution."""
        return type(self)


@dataclasses.dataclass(frozen=True)
class FillerLines(UnitStream):
    """RULER's noise haystack: the same filler line over and over."""

    line: str = FILLER + "\n"
    uniform = True

    def units(self, start: int = 0) -> Iterator[str]:
        while True:
            yield self.line

    def calibration_stream(self) -> "FillerLines":
        return self

    def family(self) -> object:
        return (FillerLines, self.line)


class BlockStream(UnitStream):
    """A stream whose units are drawn in blocks of ``block`` from ``np.random.default_rng([*key, b])``,
    so unit j is found without generating units 0..j-1 and one RNG serves many units."""

    block: int = 256

    @abc.abstractmethod
    def rng_key(self) -> tuple[int, ...]:
        """Identifies the stream (seed, task, sample, ...)."""

    @abc.abstractmethod
    def make_block(self, rng: np.random.Generator, n: int) -> list[str]:
        """``n`` consecutive units from one block RNG."""

    def units(self, start: int = 0) -> Iterator[str]:
        b, skip = divmod(start, self.block)
        while True:
            rng = np.random.default_rng([*self.rng_key(), b])
            yield from self.make_block(rng, self.block)[skip:]
            b, skip = b + 1, 0


def doc_header(position: int) -> str:
    """The header MemAgent puts before the ``position``-th (1-based) document of a context."""
    return f"Document {position}:\n"


@dataclasses.dataclass(frozen=True)
class HaystackDocument(Document):
    """``num_units`` units of ``stream`` with ``inserts`` placed at given piece positions.

    inserts: ((piece_index, text), ...) sorted by piece_index; piece_index counts all pieces.
    tokens: the planned token length (see length.py).
    numbered: prefix piece k (0-based) with ``Document {k+1}:\\n`` (multi-document contexts).
    """

    stream: UnitStream
    num_units: int
    inserts: tuple[tuple[int, str], ...]
    answer_spans: tuple[Span, ...]
    tokens: int
    numbered: bool = False
    skip: frozenset[int] = frozenset()  # stream units left out (see LengthPlanner.plan)

    def __post_init__(self) -> None:
        positions = [p for p, _ in self.inserts]
        if positions != sorted(set(positions)):
            raise ValueError("insert positions must be distinct and sorted")
        if positions and not 0 <= positions[0] <= positions[-1] < self.num_pieces:
            raise ValueError(f"insert positions must lie in [0, {self.num_pieces})")

    @property
    def num_pieces(self) -> int:
        return self.num_units + len(self.inserts)

    @property
    def approx_tokens(self) -> int:
        return self.tokens

    @property
    def spans(self) -> tuple[Span, ...]:
        return self.answer_spans

    def iter_pieces(self, start: int = 0) -> Iterator[str]:
        positions = [p for p, _ in self.inserts]
        k = bisect.bisect_left(positions, start)  # next insert to place
        units = self._used_units(start - k)
        for i in range(start, self.num_pieces):
            if k < len(positions) and positions[k] == i:
                body = self.inserts[k][1]
                k += 1
            else:
                body = next(units)
            yield doc_header(i + 1) + body if self.numbered else body

    def _used_units(self, start: int) -> Iterator[str]:
        """Units of the stream without the skipped ones, from the ``start``-th used unit on."""
        s = start
        for k in sorted(self.skip):  # stream index of the start-th used unit
            if k <= s:
                s += 1
        for j, unit in enumerate(self.stream.units(s), start=s):
            if j not in self.skip:
                yield unit

    def __repr__(self) -> str:
        return (
            f"HaystackDocument({type(self.stream).__name__}, {self.num_units} units, "
            f"{len(self.inserts)} inserts, ~{self.tokens} tokens)"
        )
