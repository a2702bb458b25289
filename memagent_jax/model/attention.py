"""The one attention core that the trainer (packed rows) and the engine (paged KV cache) both compute with.

Trainer and sampler must give the same tokens the same log-probabilities up to rounding, or GRPO's
importance ratios measure numerics instead of policy change. So both call `masked_attention` with the same
numerics: scores from the compute-dtype q and k accumulated in float32, the softmax in float32, and the
probabilities kept in float32 through the PV product (rounding them to bfloat16 first was the largest part
of the bfloat16 sampler/trainer gap). The result is cast back to q's dtype.

Layout: q [B, KV, G, Q, hd] (query heads grouped by the KV head they read, GQA), k and v [B, KV, T, hd],
mask broadcastable to [B, KV, G, Q, T]. A query with no visible key gets 0 (padding queries, empty slots).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Finite rather than -inf so fully masked rows never compute inf - inf = NaN.
MASK_VALUE = -1e30
BLOCK = 128  # query block of block_causal_attention (memory_budget counts its scores)

_HIGHEST = jax.lax.Precision.HIGHEST  # float32 operands stay float32 on accelerators (no TF32/bf16 passes)


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax(q k^T / sqrt(hd)) v over the visible keys; see the module docstring for layout and numerics."""
    scores = jnp.einsum("bkgqd,bktd->bkgqt", q, k, preferred_element_type=jnp.float32, precision=_HIGHEST)
    scores = jnp.where(mask, scores * q.shape[-1] ** -0.5, MASK_VALUE)
    # The row max only shifts the exponent (the result does not depend on it): no gradient through it.
    peak = jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True))
    probs = jnp.where(mask, jnp.exp(scores - peak), 0.0)
    denom = probs.sum(axis=-1, keepdims=True)
    # Zero values no query sees: 0 * (stale NaN/inf in an unused cache slot) would still be NaN.
    seen = jnp.any(mask, axis=(-3, -2))[..., None] if mask.ndim >= 3 else True
    v = jnp.where(seen, v.astype(jnp.float32), 0.0)
    out = jnp.einsum("bkgqt,bktd->bkgqd", probs, v, precision=_HIGHEST)
    return (out / jnp.maximum(denom, 1e-30)).astype(q.dtype)


def group_queries(q: jax.Array, kv_heads: int) -> jax.Array:
    """q [B, Q, H, hd] -> [B, KV, G, Q, hd] (query head h reads KV head h // G)."""
    batch, length, heads, head_dim = q.shape
    return q.reshape(batch, length, kv_heads, heads // kv_heads, head_dim).transpose(0, 2, 3, 1, 4)


def ungroup_queries(out: jax.Array) -> jax.Array:
    """[B, KV, G, Q, hd] -> [B, Q, H, hd]."""
    batch, kv_heads, group, length, head_dim = out.shape
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, kv_heads * group, head_dim)


def query_block(length: int, block: int = BLOCK) -> int:
    """The query block block_causal_attention uses for rows of `length` tokens: `block` when it splits the
    row into two or more whole blocks, else the whole row (one dense block). The memory budget counts
    attention scores with this, so the two cannot disagree."""
    if block < 1:
        raise ValueError(f"attention query block must be >= 1, got {block}")
    return length if length <= block or length % block else block


def block_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array,
                           block: int = BLOCK) -> jax.Array:
    """Causal attention within segments of a sequence's own keys: q [B, T, H, hd], k/v [B, T, KV, hd],
    segment_ids [B, T] (0 = padding; equal ids = one sequence, as in packed rows) -> [B, T, H, hd].

    Query blocks of `block` tokens attend only to keys up to their own end: the masked upper triangle is
    never computed (about (n + 1) / 2n of the work for n blocks), and each block's scores stay small enough
    to live in cache. Masks are built per block from the segment ids, [B, block, end] each. Lengths that
    are not a multiple of `block` (or at most one block) run as one dense block, with a whole [B, T, T] mask."""
    length, kv_heads = q.shape[1], k.shape[2]
    block = query_block(length, block)
    qg = group_queries(q, kv_heads)
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, KV, T, hd]
    index = jnp.arange(length)
    outputs = []
    for start in range(0, length, block):
        end = start + block
        causal = index[start:end, None] >= index[None, :end]  # [block, end]
        queries, keys = segment_ids[:, start:end, None], segment_ids[:, None, :end]
        mask = causal[None] & (queries == keys) & (keys > 0)  # [B, block, end]
        outputs.append(masked_attention(qg[:, :, :, start:end], kt[:, :, :end], vt[:, :, :end], mask[:, None, None]))
    return ungroup_queries(jnp.concatenate(outputs, axis=3))
