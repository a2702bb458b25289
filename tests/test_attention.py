"""Paged attention: references against dense attention, Pallas kernels (interpret mode on CPU) against the
reference, and backend dispatch."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memagent_jax import compat
from memagent_jax.engine import attention
from memagent_jax.engine.attention_pallas_gpu import paged_decode_attention_pallas_gpu
from memagent_jax.engine.attention_tpu import paged_decode_attention_tpu


def _round(x: np.ndarray, dtype) -> np.ndarray:
    """x as the values `dtype` can hold, back in float64, so dense and paged see the same numbers."""
    return np.asarray(jnp.asarray(x, dtype).astype(jnp.float32), np.float64)


def _paged_cache(rng, lengths, num_kv_heads, page_size, head_dim, max_pages, dtype, garbage=np.nan):
    """Random contiguous K/V [B, max_pages * page_size, KV, hd] scattered into shuffled pages.

    Pages start filled with `garbage` (slots past a length are never valid); table entries past a sequence's
    used pages are random valid ids, possibly other sequences' pages.
    """
    batch = len(lengths)
    num_pages = batch * max_pages + 3
    keys = _round(rng.normal(size=(batch, max_pages * page_size, num_kv_heads, head_dim)), dtype)
    values = _round(rng.normal(size=keys.shape), dtype)
    k_pages = np.full((num_kv_heads, num_pages, page_size, head_dim), garbage)
    v_pages = np.full_like(k_pages, garbage)
    page_table = rng.integers(0, num_pages, size=(batch, max_pages))
    free = iter(rng.permutation(num_pages))
    for b, length in enumerate(lengths):
        for j in range(math.ceil(length / page_size)):
            page_table[b, j] = page = next(free)
            for t in range(j * page_size, min(length, (j + 1) * page_size)):
                k_pages[:, page, t % page_size] = keys[b, t]
                v_pages[:, page, t % page_size] = values[b, t]
    return (keys, values, jnp.asarray(k_pages, dtype), jnp.asarray(v_pages, dtype),
            jnp.asarray(page_table, jnp.int32))


def _dense_attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, num_visible: int) -> np.ndarray:
    """One query's heads q [H, hd] over the first num_visible keys [T, KV, hd], in float64, the slow way."""
    num_heads, head_dim = q.shape
    group = num_heads // keys.shape[1]
    out = np.zeros((num_heads, head_dim))
    for h in range(num_heads):
        if num_visible == 0:
            continue
        scores = keys[:num_visible, h // group] @ q[h] / math.sqrt(head_dim)
        probs = np.exp(scores - scores.max())
        out[h] = probs @ values[:num_visible, h // group] / probs.sum()
    return out


def _dense_decode(q, keys, values, lengths) -> np.ndarray:
    q = np.asarray(jnp.asarray(q, jnp.float32), np.float64)
    return np.stack([_dense_attention(q[b], keys[b], values[b], n) for b, n in enumerate(lengths)])


def _tolerance(dtype) -> dict:
    return dict(atol=1e-5, rtol=1e-5) if dtype == jnp.float32 else dict(atol=3e-2, rtol=3e-2)


def _as_np(x: jax.Array) -> np.ndarray:
    return np.asarray(x.astype(jnp.float32))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (8, 2)])
def test_decode_reference_matches_dense(dtype, num_heads, num_kv_heads):
    rng = np.random.default_rng(0)
    page_size, max_pages, head_dim = 4, 5, 16
    # One token, exactly two pages, the whole table, ragged, and an empty slot.
    lengths = [1, 2 * page_size, max_pages * page_size, 13, 0]
    keys, values, k_pages, v_pages, table = _paged_cache(
        rng, lengths, num_kv_heads, page_size, head_dim, max_pages, dtype)
    q = jnp.asarray(rng.normal(size=(len(lengths), num_heads, head_dim)), dtype)
    out = attention.paged_decode_attention_reference(q, k_pages, v_pages, table, jnp.asarray(lengths))
    assert out.dtype == dtype and out.shape == q.shape
    np.testing.assert_allclose(_as_np(out), _dense_decode(q, keys, values, lengths), **_tolerance(dtype))
    assert np.all(_as_np(out)[-1] == 0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_prefill_reference_matches_dense_causal(dtype):
    """A chunk in the middle of each sequence (earlier chunks already paged) sees keys 0..its position."""
    rng = np.random.default_rng(1)
    page_size, max_pages, head_dim, num_heads, num_kv_heads, chunk = 4, 6, 16, 6, 2, 5
    starts = [7, 0, 12]  # sequence 1 is its first chunk; sequence 2 ends with 2 padding queries
    num_valid = [chunk, chunk, 3]
    lengths = [s + n for s, n in zip(starts, num_valid)]  # the chunk's own K/V are already written
    keys, values, k_pages, v_pages, table = _paged_cache(
        rng, lengths, num_kv_heads, page_size, head_dim, max_pages, dtype)
    q = jnp.asarray(rng.normal(size=(len(starts), chunk, num_heads, head_dim)), dtype)
    positions = jnp.asarray([[s + i for i in range(chunk)] for s in starts], jnp.int32)
    valid = jnp.asarray([[i < n for i in range(chunk)] for n in num_valid])
    out = attention.paged_prefill_attention_reference(q, k_pages, v_pages, table, positions, valid)
    assert out.dtype == dtype and out.shape == q.shape

    q64 = np.asarray(q.astype(jnp.float32), np.float64)
    expected = np.zeros(q.shape)
    for b, (start, n) in enumerate(zip(starts, num_valid)):
        for i in range(n):
            expected[b, i] = _dense_attention(q64[b, i], keys[b], values[b], start + i + 1)
    np.testing.assert_allclose(_as_np(out), expected, **_tolerance(dtype))
    assert np.all(_as_np(out)[2, 3:] == 0)


def test_prefill_reference_single_query_equals_decode():
    rng = np.random.default_rng(2)
    lengths = [3, 8, 17]
    _, _, k_pages, v_pages, table = _paged_cache(rng, lengths, 2, 4, 16, 5, jnp.float32)
    q = jnp.asarray(rng.normal(size=(3, 4, 16)), jnp.float32)
    lengths = jnp.asarray(lengths)
    prefill = attention.paged_prefill_attention_reference(
        q[:, None], k_pages, v_pages, table, (lengths - 1)[:, None], jnp.ones((3, 1), bool))
    decode = attention.paged_decode_attention_reference(q, k_pages, v_pages, table, lengths)
    np.testing.assert_allclose(prefill[:, 0], decode, atol=1e-6)


# (page_size, pages_per_block, num_heads, num_kv_heads, head_dim, dtype, num_splits): page sizes 8/16/32,
# GQA groups 1, 2, 3, 4, 8, both dtypes, one and several splits.
_KERNEL_CASES = [
    (8, 2, 4, 4, 32, jnp.float32, 1),
    (16, 1, 8, 4, 16, jnp.bfloat16, 2),
    (16, 4, 8, 2, 32, jnp.float32, 3),
    (8, None, 6, 2, 16, jnp.bfloat16, None),
    (32, None, 8, 1, 64, jnp.float32, 2),
    (32, 1, 16, 2, 16, jnp.bfloat16, 1),
]


@pytest.mark.parametrize(
    "page_size,pages_per_block,num_heads,num_kv_heads,head_dim,dtype,num_splits", _KERNEL_CASES)
def test_pallas_gpu_decode_interpret_matches_reference(
    page_size, pages_per_block, num_heads, num_kv_heads, head_dim, dtype, num_splits
):
    rng = np.random.default_rng(page_size + num_heads)
    max_pages = 6
    # Empty slot, one token, a page boundary, the full table, and a random ragged length.
    lengths = [0, 1, page_size, max_pages * page_size, int(rng.integers(2, max_pages * page_size))]
    keys, values, k_pages, v_pages, table = _paged_cache(
        rng, lengths, num_kv_heads, page_size, head_dim, max_pages, dtype)
    q = jnp.asarray(rng.normal(size=(len(lengths), num_heads, head_dim)), dtype)
    lengths = jnp.asarray(lengths, jnp.int32)
    out = paged_decode_attention_pallas_gpu(
        q, k_pages, v_pages, table, lengths, interpret=True,
        pages_per_block=pages_per_block, num_splits=num_splits)
    ref = attention.paged_decode_attention_reference(q, k_pages, v_pages, table, lengths)
    assert out.dtype == dtype and out.shape == q.shape
    assert np.all(np.isfinite(_as_np(out)))
    tol = dict(atol=2e-5, rtol=2e-5) if dtype == jnp.float32 else dict(atol=2e-2, rtol=2e-2)
    np.testing.assert_allclose(_as_np(out), _as_np(ref), **tol)
    np.testing.assert_allclose(_as_np(out), _dense_decode(q, keys, values, lengths), **_tolerance(dtype))


def test_pallas_gpu_rejects_shapes_triton_cannot_tile():
    q = jnp.zeros((1, 2, 24))
    pages = jnp.zeros((1, 4, 16, 24))
    table = jnp.zeros((1, 2), jnp.int32)
    with pytest.raises(ValueError, match="head_dim"):
        paged_decode_attention_pallas_gpu(q, pages, pages, table, jnp.ones(1, jnp.int32), interpret=True)
    q, pages = jnp.zeros((1, 2, 16)), jnp.zeros((1, 4, 8, 16))
    with pytest.raises(ValueError, match="pages_per_block"):
        paged_decode_attention_pallas_gpu(
            q, pages, pages, table, jnp.ones(1, jnp.int32), interpret=True, pages_per_block=1)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pallas_gpu_lowers_to_triton_without_a_gpu(dtype):
    """Lowering for CUDA runs the Pallas->Triton IR translation in Python: every construct has a Triton rule.
    jax >= 0.11 needs a target GPU for that, which compat.gpu_lowering_target supplies as an abstract H100."""
    q = jax.ShapeDtypeStruct((2, 8, 64), dtype)
    pages = jax.ShapeDtypeStruct((2, 9, 16, 64), dtype)
    table = jax.ShapeDtypeStruct((2, 5), jnp.int32)
    lengths = jax.ShapeDtypeStruct((2,), jnp.int32)
    with compat.gpu_lowering_target():
        lowered = jax.jit(paged_decode_attention_pallas_gpu).trace(q, pages, pages, table, lengths).lower(
            lowering_platforms=("cuda",))
    assert "xla.gpu.triton" in lowered.as_text()


def test_tpu_kernel_interpret_matches_reference():
    """JAX's TPU kernel under TPU interpret mode. It rounds K/V to bfloat16 internally, so bf16 pages compare
    tightly and float32 pages only to bf16 accuracy."""
    rng = np.random.default_rng(3)
    page_size, max_pages, head_dim, num_heads, num_kv_heads = 8, 4, 32, 8, 2
    lengths = [0, 1, page_size, max_pages * page_size, 19]
    for dtype, tol in [(jnp.bfloat16, 2e-2), (jnp.float32, 1e-2)]:
        # JAX's kernel does not zero masked V slots, so stale slots must be finite (as the engine's are).
        _, _, k_pages, v_pages, table = _paged_cache(
            rng, lengths, num_kv_heads, page_size, head_dim, max_pages, dtype, garbage=100.0)
        q = jnp.asarray(rng.normal(size=(len(lengths), num_heads, head_dim)), dtype)
        lens = jnp.asarray(lengths, jnp.int32)
        out = paged_decode_attention_tpu(q, k_pages, v_pages, table, lens, interpret=True,
                                         pages_per_compute_block=3)
        ref = attention.paged_decode_attention_reference(q, k_pages, v_pages, table, lens)
        assert out.dtype == dtype and out.shape == q.shape
        np.testing.assert_allclose(_as_np(out), _as_np(ref), atol=tol, rtol=tol)


def test_dispatch_auto_uses_reference_on_cpu_and_rejects_unknown_backends():
    rng = np.random.default_rng(4)
    lengths = [5, 0, 12]
    _, _, k_pages, v_pages, table = _paged_cache(rng, lengths, 2, 8, 16, 2, jnp.float32)
    q = jnp.asarray(rng.normal(size=(3, 4, 16)), jnp.float32)
    lens = jnp.asarray(lengths, jnp.int32)
    assert attention.resolve_backend("auto", q) == "reference"
    assert jax.jit(lambda x: jnp.zeros(()) if attention.resolve_backend("auto", x) == "reference"
                   else jnp.ones(()))(q) == 0  # traced q falls back to jax.default_backend()
    ref = attention.paged_decode_attention_reference(q, k_pages, v_pages, table, lens)
    np.testing.assert_array_equal(attention.paged_decode_attention(q, k_pages, v_pages, table, lens), ref)
    gpu = attention.paged_decode_attention(q, k_pages, v_pages, table, lens, backend="pallas_gpu",
                                           interpret=True)
    np.testing.assert_allclose(gpu, ref, atol=2e-5)
    with pytest.raises(ValueError, match="pallas_gpu") as err:
        attention.paged_decode_attention(q, k_pages, v_pages, table, lens, backend="cuda")
    assert all(name in str(err.value) for name in attention.BACKENDS)


@pytest.mark.parametrize("chunk, block", [(64, 16), (48, 32), (40, 128)])
def test_causal_chunk_attention_matches_dense(chunk, block):
    """The fresh-prefill path (a chunk attending to itself, in causal blocks) against dense attention."""
    rng = np.random.default_rng(3)
    batch, heads, kv_heads, head_dim = 3, 4, 2, 16
    q = rng.standard_normal((batch, chunk, heads, head_dim)).astype(np.float32)
    k = rng.standard_normal((batch, chunk, kv_heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((batch, chunk, kv_heads, head_dim)).astype(np.float32)
    lengths = [chunk, chunk - 7, 1]
    valid = np.arange(chunk)[None, :] < np.asarray(lengths)[:, None]
    out = _as_np(attention.causal_chunk_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                                  jnp.asarray(valid), block=block))
    for b, length in enumerate(lengths):
        for t in range(length):
            expected = _dense_attention(q[b, t], k[b, : t + 1], v[b, : t + 1], t + 1)
            np.testing.assert_allclose(out[b, t], expected, atol=1e-5)
        assert np.all(out[b, length:] == 0)  # padding queries give zeros


def test_engine_prefill_and_trainer_attention_agree_in_bfloat16():
    """Sampler and trainer compute attention with one core: on the same bfloat16 q, k and v the engine's
    paged prefill and the trainer's block-causal attention over a packed row agree to the last bit (at most
    one bfloat16 step on a few elements). Rounding the trainer's probabilities to bfloat16 before the PV
    product, as it once did, changed ~40% of the outputs here, by up to 50x their size on near-zero ones."""
    from memagent_jax.model.attention import block_causal_attention

    rng = np.random.default_rng(2)
    batch, length, heads, kv_heads, head_dim, page_size = 2, 256, 4, 2, 16, 16
    lengths = [256, 200]
    keys, values, k_pages, v_pages, table = _paged_cache(rng, lengths, kv_heads, page_size, head_dim,
                                                         length // page_size, jnp.bfloat16)
    q = jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), jnp.bfloat16)
    valid = np.arange(length)[None, :] < np.asarray(lengths)[:, None]
    positions = jnp.asarray(np.broadcast_to(np.arange(length), (batch, length)), jnp.int32)
    engine = jax.jit(attention.paged_prefill_attention_reference)(q, k_pages, v_pages, table, positions,
                                                                   jnp.asarray(valid))
    trainer = jax.jit(block_causal_attention)(q, jnp.asarray(keys, jnp.bfloat16), jnp.asarray(values, jnp.bfloat16),
                                              jnp.asarray(valid, jnp.int32))
    engine, trainer = (np.asarray(x, np.float64)[valid] for x in (engine, trainer))
    differ = engine != trainer
    assert differ.mean() < 0.005
    assert np.all(np.abs(engine - trainer) <= 2.0**-7 * np.abs(engine) + 1e-30)
