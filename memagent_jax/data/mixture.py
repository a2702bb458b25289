"""Several random-access sources interleaved into one: element i is element i // n of source i % n."""

from __future__ import annotations

from typing import Sequence

from memagent_jax.data.document import Sample

__all__ = ["MixtureSource"]


class MixtureSource:
    """Round-robin over sources (e.g. several synthetic tasks), as long as n times the shortest one, so
    every task keeps an equal share after any shuffle of the indices."""

    def __init__(self, sources: Sequence[object]):
        if not sources:
            raise ValueError("a mixture needs at least one source")
        self.sources = list(sources)
        self._length = len(self.sources) * min(len(s) for s in self.sources)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range [0, {self._length})")
        count = len(self.sources)
        return self.sources[index % count][index // count]

    def __repr__(self) -> str:
        return f"MixtureSource({self.sources!r})"
