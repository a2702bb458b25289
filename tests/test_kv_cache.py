"""The page pool: allocation, reference counts, prefix sharing and eviction."""

import random

import pytest

from memagent_jax.engine.kv_cache import NULL_PAGE, PagePool, init_kv_cache, kv_cache_bytes
from memagent_jax.model.config import get_preset


def test_allocate_is_all_or_nothing_and_never_hands_out_page_zero():
    pool = PagePool(num_pages=5, page_size=4)
    assert pool.num_available == 4
    pages = pool.allocate(3)
    assert NULL_PAGE not in pages and len(set(pages)) == 3
    assert pool.allocate(2) is None  # only one left: nothing is taken
    assert pool.num_available == 1
    pool.release(pages)
    assert pool.num_available == 4
    pool.check_invariants()


def test_release_errors():
    pool = PagePool(num_pages=3, page_size=4)
    [page] = pool.allocate(1)
    pool.release([page])
    with pytest.raises(ValueError, match="not held"):
        pool.release([page])
    with pytest.raises(ValueError, match="not held"):
        pool.release([NULL_PAGE])
    with pytest.raises(ValueError, match="page 0 is reserved"):
        PagePool(num_pages=1, page_size=4)


def test_prefix_chain_matches_only_identical_full_prefixes():
    pool = PagePool(num_pages=16, page_size=4)
    tokens = list(range(10, 21))  # 11 tokens: two full pages and a partial one
    pages = pool.allocate(3)
    parent = 0
    for index in range(2):
        parent = pool.register(pages[index], parent, tokens[index * 4:(index + 1) * 4])
    matched, ids = pool.match_prefix(tokens, len(tokens) - 1)
    assert matched == pages[:2] and len(ids) == 2
    # A limit that cuts the second page leaves only the first.
    assert pool.match_prefix(tokens, 7)[0] == pages[:1]
    # Same second page after a different first page: no match beyond the divergence.
    other = [99] + tokens[1:]
    assert pool.match_prefix(other, 10)[0] == []
    # The same page content at a different depth of the chain is a different page.
    assert pool.match_prefix(tokens[4:8] + tokens[4:8], 8)[0] == []


def test_duplicate_registration_keeps_one_indexed_copy():
    pool = PagePool(num_pages=8, page_size=2)
    a, b = pool.allocate(2)
    first = pool.register(a, 0, [1, 2])
    assert pool.register(b, 0, [1, 2]) == first
    assert pool.match_prefix([1, 2, 3], 2)[0] == [a]
    pool.release([b])  # b was never indexed: goes straight back to the free list
    pool.check_invariants()


def test_readiness_and_eviction_order():
    pool = PagePool(num_pages=4, page_size=2)
    a, b, c = pool.allocate(3)
    ids = pool.register(a, 0, [5, 6])
    pool.register(b, ids, [7, 8])
    assert not pool.is_ready(a)
    pool.mark_ready([a, b])
    assert pool.is_ready(a) and pool.is_ready(c)  # unindexed pages are always ready
    pool.release([a, b, c])
    assert pool.num_available == 3  # c free, a and b evictable but still matchable
    assert pool.match_prefix([5, 6, 7, 8, 9], 4)[0] == [a, b]
    pool.retain([a])  # a reuse takes a off the evictable list
    got = pool.allocate(2)  # c (free) first, then the least recently released evictable page, b
    assert set(got) == {c, b}
    assert pool.match_prefix([5, 6, 7, 8], 4)[0] == [a]  # b's index entry died with its eviction
    pool.check_invariants()


def test_unready_registered_page_released_is_not_left_in_the_index():
    pool = PagePool(num_pages=4, page_size=2)
    [a] = pool.allocate(1)
    pool.register(a, 0, [1, 1])
    pool.release([a])  # its prefill never ran: the content is not there, so it must not be matched
    assert pool.match_prefix([1, 1, 1], 2)[0] == []
    pool.check_invariants()


def test_random_operations_keep_invariants():
    rng = random.Random(0)
    pool = PagePool(num_pages=32, page_size=2)
    held: list[list[int]] = []
    for _ in range(500):
        if held and rng.random() < 0.45:
            pool.release(held.pop(rng.randrange(len(held))))
        else:
            tokens = [rng.randrange(3) for _ in range(rng.randrange(1, 9))]
            shared, ids = pool.match_prefix(tokens, len(tokens) - 1)
            pool.retain(shared)
            need = (len(tokens) + 1 + 1) // 2 - len(shared)
            fresh = pool.allocate(max(need, 0))
            if fresh is None:
                pool.release(shared)
                continue
            pages = shared + fresh
            parent = ids[-1] if ids else 0
            for i in range(len(shared), len(tokens) // 2):
                parent = pool.register(pages[i], parent, tokens[2 * i:2 * i + 2])
            pool.mark_ready(pages)
            held.append(pages)
        pool.check_invariants()


def test_device_cache_shape_and_size():
    cfg = get_preset("tiny")
    cache = init_kv_cache(cfg, num_pages=8, page_size=16)
    assert len(cache.k) == len(cache.v) == cfg.num_layers
    assert cache.k[0].shape == (cfg.num_kv_heads, 8, 16, cfg.head_dim)
    assert kv_cache_bytes(cfg, 8, 16) == sum(a.nbytes for a in cache.k + cache.v)
