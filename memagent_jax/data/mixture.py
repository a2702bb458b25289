"""Several random-access sources interleaved into one by weight.

Sources take turns in a fixed pattern of sum(weights) slots (weights as small integers; smooth weighted
round robin spreads each source's slots over the pattern), so source ``i`` holds ``w_i / sum(w)`` of every
stretch of the mixture and, after the pipeline's global shuffle, of every batch on average. One pass of
the mixture is the least number of patterns that reaches every record of every source: the longest
source (relative to its weight) is read exactly once, shorter ones cycle (their first records come once
more where the count does not divide). With equal weights this is plain round robin: element ``i`` is
element ``i // n`` of source ``i % n``.
"""

from __future__ import annotations

import fractions
import math
from typing import Any, Sequence

from memagent_jax.data.document import Sample

__all__ = ["MixtureSource", "integer_weights"]


def integer_weights(weights: Sequence[float | fractions.Fraction]) -> list[int]:
    """The smallest integers in the ratio of `weights` (decimals read as fractions up to 1/1000)."""
    if not weights:
        raise ValueError("no weights")
    exact = []
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float, fractions.Fraction)) or not w > 0:
            raise ValueError(f"weights must be positive numbers, got {w!r}")
        exact.append(fractions.Fraction(w).limit_denominator(1000))
    scale = math.lcm(*(f.denominator for f in exact))
    ints = [int(f * scale) for f in exact]
    divisor = math.gcd(*ints)
    return [n // divisor for n in ints]


def _pattern(counts: Sequence[int]) -> list[int]:
    """Source ids of one round, each id `counts[id]` times, spread out (smooth weighted round robin)."""
    total, current, order = sum(counts), [0] * len(counts), []
    for _ in range(total):
        current = [c + w for c, w in zip(current, counts)]
        pick = max(range(len(counts)), key=lambda i: (current[i], -i))
        current[pick] -= total
        order.append(pick)
    return order


class MixtureSource:
    """Sources mixed by weight (default: equal); see the module docstring."""

    def __init__(self, sources: Sequence[Any], weights: Sequence[float | fractions.Fraction] | None = None):
        if not sources:
            raise ValueError("a mixture needs at least one source")
        weights = [1] * len(sources) if weights is None else list(weights)
        if len(weights) != len(sources):
            raise ValueError(f"{len(weights)} weights for {len(sources)} sources")
        if any(len(s) == 0 for s in sources):
            raise ValueError("a mixture's sources must not be empty")
        self.sources = list(sources)
        self.counts = integer_weights(weights)
        self._pattern = _pattern(self.counts)
        seen = [0] * len(self.sources)
        self._rank = []  # slot -> how many earlier slots of the round belong to the same source
        for source in self._pattern:
            self._rank.append(seen[source])
            seen[source] += 1
        rounds = max(math.ceil(len(s) / c) for s, c in zip(self.sources, self.counts))
        self._length = len(self._pattern) * rounds

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range [0, {self._length})")
        round_, slot = divmod(int(index), len(self._pattern))
        source = self._pattern[slot]
        local = round_ * self.counts[source] + self._rank[slot]
        return self.sources[source][local % len(self.sources[source])]

    def metrics(self) -> dict[str, int]:
        """Records the sources skipped for bad content, summed by reason (readers only)."""
        total: dict[str, int] = {}
        for source in self.sources:
            counts = source.metrics() if callable(getattr(source, "metrics", None)) else {}
            for key, value in counts.items():
                total[key] = total.get(key, 0) + value
        return total

    def __repr__(self) -> str:
        return f"MixtureSource({self.sources!r}, weights={self.counts})"
