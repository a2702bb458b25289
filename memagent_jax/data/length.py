"""Hitting a token-length target without tokenizing the whole document.

A haystack document has ``fixed`` tokens of inserted pieces plus ``n`` filler units (plus, for
multi-document contexts, one ``Document {k}:`` header per piece). ``LengthPlanner.plan`` picks ``n``:

* uniform units (the noise line): the unit is tokenized once; the length is exact up to rounding;
* varying units, target <= ``exact_limit``: units are tokenized one by one until the target is
  reached, so the length is exact up to half a unit;
* varying units, longer targets: the mean unit length is measured once per (tokenizer, stream family)
  on ``calibration_units`` units and used for every sample; with thousands of units per document the
  sample-to-sample spread is well under 1%.

All counts rely on piece-wise additivity (see document.py): tokens(a + b) = tokens(a) + tokens(b)
when ``a`` ends with a newline and ``b`` starts with a non-space.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections import OrderedDict

from memagent_jax.data.document import TextTokenizer
from memagent_jax.data.haystack import UnitStream, doc_header

__all__ = ["LengthPlanner"]

_SPARES = 32  # candidate units for the final swaps in exact mode
_MAX_SWAPS = 8


class LengthPlanner:
    """Token counting with caches, owned by one task generator (one tokenizer)."""

    def __init__(self, tokenizer: TextTokenizer, exact_limit: int = 131_072, calibration_units: int = 2048):
        self.tokenizer = tokenizer
        self.exact_limit = exact_limit
        self.calibration_units = calibration_units
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()  # Grain reads samples from several threads
        self._means: dict[object, float] = {}
        self._headers: dict[int, int] = {}

    def __getstate__(self) -> dict:  # locks do not pickle (spawned Grain workers get a copy)
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        """Token count of ``text``, cached for short repeated texts (filler lines, templates)."""
        n = self._counts.get(text)
        if n is None:
            n = len(self.tokenizer.encode(text))
            if len(text) <= 4096:
                with self._lock:
                    self._counts[text] = n
                    if len(self._counts) > 4096:
                        self._counts.popitem(last=False)
        return n

    def mean_unit_tokens(self, stream: UnitStream) -> float:
        key = stream.family()
        if key not in self._means:
            n = 1 if stream.uniform else self.calibration_units
            units = itertools.islice(stream.calibration_stream().units(0), n)
            self._means[key] = sum(self.count(u) for u in units) / n
        return self._means[key]

    def header_tokens(self, num_pieces: int) -> int:
        """Tokens of the headers ``Document 1:`` ... ``Document {num_pieces}:``, counted once per digit
        length (exact for tokenizers whose digit splitting depends only on the number of digits)."""
        total, d = 0, 1
        while 10 ** (d - 1) <= num_pieces:
            lo, hi = 10 ** (d - 1), min(num_pieces, 10**d - 1)
            if d not in self._headers:
                self._headers[d] = self.count(doc_header(lo))
            total += (hi - lo + 1) * self._headers[d]
            d += 1
        return total

    def plan(
        self, stream: UnitStream, target_tokens: int, fixed_tokens: int, num_inserts: int, numbered: bool = False
    ) -> tuple[int, int, frozenset[int]]:
        """(number of units, expected token length, stream units to skip) closest to ``target_tokens``.

        The skip set is empty except in exact mode, where a few units may be swapped for later ones of
        better lengths: units are ~20-100 tokens, too coarse for 2% at 1K tokens without it.
        """
        if target_tokens <= 0:
            raise ValueError(f"target_tokens must be positive, got {target_tokens}")

        def headers(n: int) -> int:
            return self.header_tokens(n + num_inserts) if numbered else 0

        if stream.uniform or target_tokens > self.exact_limit:
            mean = self.mean_unit_tokens(stream)

            def total(n: int) -> float:
                return fixed_tokens + n * mean + headers(n)

            # Largest n with total(n) <= target, by bisection (total grows with n).
            lo, hi = 0, max(1, int(target_tokens / max(mean, 1e-9)) + 2)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if total(mid) <= target_tokens else (lo, mid - 1)
            n = lo + 1 if abs(total(lo + 1) - target_tokens) < abs(total(lo) - target_tokens) else lo
            return n, round(total(n)), frozenset()

        # Exact: count units in order until the target is passed, plus a few spare candidates.
        counts: list[int] = []
        used = 0
        units = stream.units(0)
        while fixed_tokens + used + headers(len(counts)) < target_tokens:
            counts.append(self.count(next(units)))
            used += counts[-1]
        n = len(counts)
        best = fixed_tokens + used + headers(n)
        if n and abs(best - counts[-1] - headers(n) + headers(n - 1) - target_tokens) <= abs(best - target_tokens):
            n, best = n - 1, best - counts[-1] - headers(n) + headers(n - 1)
        spares = counts[n:] + [self.count(next(units)) for _ in range(_SPARES - (len(counts) - n))]
        # Swaps: drop a used unit, use a spare instead (the unused units before the last used one are
        # skipped). Each swap takes the pair that best closes the gap; a few suffice.
        used = dict(enumerate(counts[:n]))  # stream index -> tokens
        free = {n + j: c for j, c in enumerate(spares)}
        for _ in range(_MAX_SWAPS):
            gap = target_tokens - best
            if gap == 0:
                break
            by_count: dict[int, int] = {}
            for i, c in used.items():
                by_count.setdefault(c, i)
            values = sorted(by_count)
            swap = None  # (error, dropped, added)
            for j, c in free.items():
                k = bisect.bisect_left(values, c - gap)  # best unit to drop has count near c - gap
                for v in values[max(k - 1, 0) : k + 1]:
                    err = abs(gap - (c - v))
                    if err < abs(gap) and (swap is None or err < swap[0]):
                        swap = (err, by_count[v], j)
            if swap is None:
                break
            _, i, j = swap
            best += free[j] - used[i]
            used[j] = free.pop(j)
            del used[i]
        last = max(used, default=-1)
        return n, best, frozenset(k for k in range(last) if k not in used)
