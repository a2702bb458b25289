"""The shared attention core (model/attention.py) against a float64 NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fixture_model import segment_mask
from memagent_jax.model.attention import (
    block_causal_attention,
    group_queries,
    masked_attention,
    query_block,
)


def _reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """q [B, T, H, hd], k/v [B, S, KV, hd], mask [B, T, S] -> [B, T, H, hd] in float64; no visible key: 0."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(mask[:, None], scores, -np.inf)
    peak = np.max(scores, axis=-1, keepdims=True)
    weights = np.where(mask[:, None], np.exp(scores - np.where(np.isfinite(peak), peak, 0.0)), 0.0)
    total = weights.sum(-1, keepdims=True)
    probs = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    return np.einsum("bhts,bshd->bthd", probs, v)


def _packed(rng: np.random.Generator, dtype=np.float32, length: int = 384):
    batch, heads, kv_heads, head_dim = 2, 4, 2, 8
    q, k, v = (rng.normal(size=(batch, length, h, head_dim)).astype(dtype) for h in (heads, kv_heads, kv_heads))
    seg = np.zeros((batch, length), np.int32)
    seg[0, :100], seg[0, 100:300], seg[0, 300:350] = 1, 2, 3  # segments across block edges, then padding
    seg[1, :] = 1
    return q, k, v, seg


@pytest.mark.parametrize("block", [128, 96, 384])
def test_block_causal_attention_matches_float64(block):
    q, k, v, seg = _packed(np.random.default_rng(0))
    out = np.asarray(jax.jit(block_causal_attention, static_argnums=4)(q, k, v, jnp.asarray(seg), block))
    expected = _reference(q, k, v, np.asarray(segment_mask(jnp.asarray(seg))))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert np.all(out[seg == 0] == 0)  # padding queries see nothing and give zeros


def test_masked_attention_grouped_layout_and_empty_rows():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(2, 5, 4, 8)).astype(np.float32)
    k, v = (rng.normal(size=(2, 7, 2, 8)).astype(np.float32) for _ in range(2))
    mask = rng.random((2, 5, 7)) < 0.5
    mask[1, 3] = False  # a query with no visible key
    out = masked_attention(group_queries(jnp.asarray(q), 2), jnp.asarray(k).transpose(0, 2, 1, 3),
                           jnp.asarray(v).transpose(0, 2, 1, 3), jnp.asarray(mask)[:, None, None])
    out = np.asarray(out).transpose(0, 3, 1, 2, 4).reshape(q.shape)
    np.testing.assert_allclose(out, _reference(q, k, v, mask), rtol=1e-5, atol=1e-6)
    assert np.all(out[1, 3] == 0)


def test_bfloat16_probabilities_stay_float32_through_the_pv_product():
    """With bfloat16 q, k, v the only rounding left is the output's own: every element is within half a
    bfloat16 spacing of the float64 result on the same (bfloat16) inputs. Rounding the probabilities to
    bfloat16 before the PV product (as the trainer once did) breaks this bound."""
    q, k, v, seg = _packed(np.random.default_rng(2), dtype=np.float32, length=256)
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
    out = np.asarray(jax.jit(block_causal_attention)(q, k, v, jnp.asarray(seg)), np.float64)
    expected = _reference(*(np.asarray(x, np.float64) for x in (q, k, v)), np.asarray(segment_mask(jnp.asarray(seg))))
    half_spacing = 2.0**-8 * np.abs(expected) * (1 + 2.0**-7) + 1e-30  # bfloat16: 8 significant bits
    assert np.all(np.abs(out - expected) <= half_spacing)


def test_gradients_are_finite_with_padding_and_match_the_dense_block():
    q, k, v, seg = _packed(np.random.default_rng(3))
    seg = jnp.asarray(seg)
    real = (seg > 0)[..., None, None]

    def loss(q, k, v, block):
        return jnp.sum(jnp.where(real, block_causal_attention(q, k, v, seg, block), 0.0) ** 2)

    blocked = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)(q, k, v, 128)
    dense = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)(q, k, v, 384)
    for a, b in zip(blocked, dense):
        assert np.all(np.isfinite(np.asarray(a)))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_query_block_splits_only_rows_it_divides_into_several_blocks():
    assert query_block(384, 128) == 128
    assert query_block(128, 128) == 128  # one block: the whole row
    assert query_block(200, 128) == 200  # not a multiple: one dense block
    assert query_block(64, 128) == 64
    with pytest.raises(ValueError, match="query block"):
        query_block(256, 0)
