"""The paged KV cache: device page arrays, and the host-side pool that owns the pages.

Pages hold `page_size` tokens of keys and values for every layer and KV head. A sequence owns a list of
pages (its page table). Pages are reference-counted: a full page whose tokens (and all tokens before it)
equal another sequence's is shared instead of recomputed, which is how the G rollouts of one sample, and
the conversations that share a template head and question, prefill their common prefix once.

Page 0 is never handed out: unused page-table entries and the writes of idle decode slots point at it.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from memagent_jax.model.config import ModelConfig

NULL_PAGE = 0


class KVCache(NamedTuple):
    """Per layer, keys and values [kv_heads, pages, page_size, head_dim] (KV-head-major pages).

    One array per layer rather than one stacked array: a layer's pages are then read and updated in
    place, where slicing a stacked array costed a copy of the layer per use on CPU.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]

    @property
    def page_size(self) -> int:
        return self.k[0].shape[2]

    def replace_layer(self, layer: int, k: jax.Array, v: jax.Array) -> "KVCache":
        return KVCache(self.k[:layer] + (k,) + self.k[layer + 1:], self.v[:layer] + (v,) + self.v[layer + 1:])


def init_kv_cache(
    cfg: ModelConfig, num_pages: int, page_size: int, sharding: NamedSharding | None = None
) -> KVCache:
    """Zeroed pages in the model's compute dtype, created directly in `sharding` when given."""
    shape = (cfg.num_kv_heads, num_pages, page_size, cfg.head_dim)

    def zeros() -> KVCache:
        layers = range(cfg.num_layers)
        return KVCache(tuple(jnp.zeros(shape, cfg.compute_dtype) for _ in layers),
                       tuple(jnp.zeros(shape, cfg.compute_dtype) for _ in layers))

    if sharding is None:
        return jax.jit(zeros)()
    per_layer = tuple(sharding for _ in range(cfg.num_layers))
    return jax.jit(zeros, out_shardings=KVCache(per_layer, per_layer))()


def kv_cache_bytes(cfg: ModelConfig, num_pages: int, page_size: int) -> int:
    per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * cfg.compute_dtype.itemsize
    return per_token * num_pages * page_size


@dataclasses.dataclass
class _CachedPage:
    key: tuple[int, tuple[int, ...]]  # (content id of the previous page, tokens of this page)
    content_id: int
    ready: bool  # False until the prefill that writes it has run


class PagePool:
    """Host bookkeeping: free pages, reference counts and the index of shareable full pages.

    A full page is identified by its exact content chain: (content id of the page before it, its tokens).
    Pages whose count drops to zero stay indexed (evictable, least recently used first) so a later
    request with the same prefix can still reuse them; they are reclaimed only when free pages run out.
    """

    def __init__(self, num_pages: int, page_size: int):
        if num_pages < 2:
            raise ValueError(f"num_pages must be >= 2 (page 0 is reserved), got {num_pages}")
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.num_pages = num_pages
        self.page_size = page_size
        self._refcount = [0] * num_pages
        self._free: collections.deque[int] = collections.deque(range(1, num_pages))
        self._evictable: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._index: dict[tuple[int, tuple[int, ...]], int] = {}
        self._cached: dict[int, _CachedPage] = {}
        self._next_content_id = 1  # 0 is the content id "before the first page"

    # -- capacity ---------------------------------------------------------------------------------

    @property
    def num_available(self) -> int:
        """Pages that allocate() can hand out now (free plus evictable cached pages)."""
        return len(self._free) + len(self._evictable)

    def refcount(self, page: int) -> int:
        return self._refcount[page]

    # -- allocation -------------------------------------------------------------------------------

    def allocate(self, count: int) -> list[int] | None:
        """`count` fresh pages (refcount 1), or None if there are not enough: all or nothing."""
        if count > self.num_available:
            return None
        pages = []
        for _ in range(count):
            if self._free:
                page = self._free.popleft()
            else:
                page, _ = self._evictable.popitem(last=False)
                self._forget(page)
            self._refcount[page] = 1
            pages.append(page)
        return pages

    def retain(self, pages: Sequence[int]) -> None:
        for page in pages:
            if self._refcount[page] == 0:
                self._evictable.pop(page, None)
            self._refcount[page] += 1

    def release(self, pages: Sequence[int]) -> None:
        for page in pages:
            if page == NULL_PAGE or self._refcount[page] <= 0:
                raise ValueError(f"release of page {page} that is not held")
            self._refcount[page] -= 1
            if self._refcount[page] == 0:
                cached = self._cached.get(page)
                if cached is not None and cached.ready:
                    self._evictable[page] = None
                else:
                    self._forget(page)
                    self._free.append(page)

    def _forget(self, page: int) -> None:
        cached = self._cached.pop(page, None)
        if cached is not None and self._index.get(cached.key) == page:
            del self._index[cached.key]

    # -- prefix sharing ---------------------------------------------------------------------------

    def match_prefix(self, tokens: Sequence[int], max_tokens: int) -> tuple[list[int], list[int]]:
        """Longest chain of indexed full pages equal to tokens[:k * page_size] with k * page_size <= max_tokens.

        Returns (pages, content ids). The caller retains the pages it decides to use.
        """
        pages: list[int] = []
        content_ids: list[int] = []
        parent = 0
        size = self.page_size
        for start in range(0, max_tokens - size + 1, size):
            page = self._index.get((parent, tuple(tokens[start : start + size])))
            if page is None:
                break
            pages.append(page)
            parent = self._cached[page].content_id
            content_ids.append(parent)
        return pages, content_ids

    def register(self, page: int, parent_content_id: int, tokens: Sequence[int]) -> int:
        """Indexes a full page held by the caller, whose KV will be written by a prefill not yet run.

        Returns its content id (the parent of the next page). If an identical page is already indexed,
        this page stays private and the existing content id is returned, so chains stay consistent.
        """
        if len(tokens) != self.page_size:
            raise ValueError(f"only full pages are shared: got {len(tokens)} tokens, page_size {self.page_size}")
        key = (parent_content_id, tuple(int(t) for t in tokens))
        existing = self._index.get(key)
        if existing is not None:
            return self._cached[existing].content_id
        content_id = self._next_content_id
        self._next_content_id += 1
        self._index[key] = page
        self._cached[page] = _CachedPage(key, content_id, ready=False)
        return content_id

    def mark_ready(self, pages: Sequence[int]) -> None:
        """The prefill that writes these pages has been dispatched; later readers may now use them."""
        for page in pages:
            cached = self._cached.get(page)
            if cached is not None:
                cached.ready = True

    def forget_prefixes(self) -> None:
        """Drops the whole prefix index (e.g. the weights changed, so cached KV is stale). Held pages stay
        held but are no longer shareable; evictable pages become free."""
        while self._evictable:
            page, _ = self._evictable.popitem(last=False)
            self._free.append(page)
        self._index.clear()
        self._cached.clear()

    def is_ready(self, page: int) -> bool:
        cached = self._cached.get(page)
        return cached is None or cached.ready

    def check_invariants(self) -> None:
        """Every page is exactly one of: reserved, held, free or evictable (for tests)."""
        held = {p for p in range(1, self.num_pages) if self._refcount[p] > 0}
        free, evictable = set(self._free), set(self._evictable)
        assert not (held & free) and not (held & evictable) and not (free & evictable)
        assert held | free | evictable == set(range(1, self.num_pages)), "a page was lost"
        assert self._refcount[NULL_PAGE] == 0
