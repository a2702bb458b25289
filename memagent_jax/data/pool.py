"""Multi-document contexts drawn from a pool of paragraphs (HotpotQA, SQuAD).

A context is a question's own paragraphs plus distractors drawn without replacement from the rest of a
sorted pool, written ``Document {k}:\\n{paragraph}`` (k from 1) and joined by blank lines. Contexts are
kept as arrays of pool indices and generated piece by piece, so a 25,600-document context is never
built as one string unless asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from memagent_jax.data.haystack import doc_header

__all__ = ["draw_distractors", "numbered_pieces"]


def draw_distractors(rng: np.random.Generator, pool_size: int, exclude: Iterable[int], k: int) -> np.ndarray:
    """``k`` distinct pool indices in ``[0, pool_size)`` outside ``exclude``, in increasing order.

    One ``rng.choice`` over the ranks of the allowed indices, mapped back to indices: no list of the
    (up to tens of thousands) allowed indices is built."""
    skip = np.unique(np.fromiter(exclude, np.int64))
    if skip.size and not 0 <= skip[0] <= skip[-1] < pool_size:
        raise IndexError(f"excluded indices must lie in [0, {pool_size})")
    allowed = pool_size - len(skip)
    if not 0 <= k <= allowed:
        raise ValueError(f"cannot draw {k} distractors from a pool of {pool_size} with {len(skip)} excluded")
    ranks = np.sort(rng.choice(allowed, k, replace=False))
    # The r-th allowed index is r plus the number of excluded indices at or below it; ``skip - arange``
    # is how many allowed indices precede each excluded one, so a binary search finds that number.
    return ranks + np.searchsorted(skip - np.arange(len(skip)), ranks, side="right")


def numbered_pieces(pool: Sequence[str], order: Sequence[int], start: int = 0) -> Iterator[str]:
    """Pieces ``start, start+1, ...`` of the context ``order``: ``Document {k}:\\n{paragraph}`` each
    followed by a blank line except the last."""
    last = len(order) - 1
    for k in range(start, len(order)):
        yield doc_header(k + 1) + pool[order[k]] + ("\n\n" if k < last else "")
