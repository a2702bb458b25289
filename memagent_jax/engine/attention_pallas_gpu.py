"""Paged decode attention as a Pallas kernel for GPUs (Triton lowering), flash-decoding style.

Grid (batch, kv_head, split). One program owns one sequence, one KV head and one contiguous share of the
sequence's page blocks. It reads the sequence's length and page ids from its page-table row, then walks
its blocks with a fori_loop that stops at the last block holding a valid key. A block is `pages_per_block`
pages: their ids are loaded as a vector and K/V are gathered as [pages_per_block, page_size, head_dim]
(each page a contiguous [page_size, head_dim] tile in the KV-head-major layout), viewed as
[block_k, head_dim]. All `group` query heads of the KV head are scored at once ([G, hd] x [hd, block_k]),
keys at or past the length are masked, and an online softmax keeps a running max m, denominator denom and
accumulator acc in float32. Each split writes (m, denom, acc); a small XLA pass merges the splits.

Constraints (checked with clear errors): head_dim a power of two >= 16 and block_k = pages_per_block *
page_size a power of two >= 16 (Triton's dot wants power-of-two dims >= 16; page size 8 needs >= 2 pages
per block). The group of query heads is zero-padded to a power of two >= 16 inside the wrapper (q is
tiny; padding K/V would copy the cache). float32 inputs use full-precision (non-TF32) dots; bfloat16/
float16 q and k feed the tensor cores for the scores and accumulate in float32; the probabilities and the
PV product stay float32 whatever the input dtype (as in the trainer).

Tested only in interpret mode on CPU; speed and Triton compilation on a real GPU are unverified.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from memagent_jax.engine.page_shapes import check_paged_shapes
from memagent_jax.model.attention import MASK_VALUE


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


Carry = tuple[jax.Array, jax.Array, jax.Array]  # the online softmax's (m, denom, acc)


def _decode_kernel(
    lengths_ref: jax.Ref, page_table_ref: jax.Ref, q_ref: jax.Ref, k_ref: jax.Ref, v_ref: jax.Ref,
    acc_ref: jax.Ref, m_ref: jax.Ref, denom_ref: jax.Ref,
    *, pages_per_block: int, page_size: int, blocks_per_split: int, scale: float,
) -> None:
    block_k = pages_per_block * page_size
    split = pl.program_id(2)
    length = lengths_ref[0]
    q = q_ref[...]  # [G, hd]
    # Full-precision dots for float32 inputs; bf16/f16 run natively and accumulate in f32.
    precision = jax.lax.Precision.HIGHEST if q.dtype == jnp.float32 else None

    first = split * blocks_per_split
    last = jnp.minimum(first + blocks_per_split, pl.cdiv(length, block_k))

    def body(block: jax.Array, carry: Carry) -> Carry:
        m, denom, acc = carry
        page_ids = page_table_ref[pl.ds(pl.multiple_of(block * pages_per_block, pages_per_block),
                                        pages_per_block)]
        k = k_ref[page_ids].reshape(block_k, -1)  # gather pages_per_block pages of this KV head
        v = v_ref[page_ids].reshape(block_k, -1)
        scores = jax.lax.dot_general(
            q, k, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=jnp.float32)
        valid = block * block_k + jnp.arange(block_k) < length  # masks the ragged tail
        scores = jnp.where(valid[None, :], scores * scale, MASK_VALUE)
        m_new = jnp.maximum(m, scores.max(axis=1))
        p = jnp.where(valid[None, :], jnp.exp(scores - m_new[:, None]), 0.0)
        alpha = jnp.exp(m - m_new)
        v = jnp.where(valid[:, None], v, 0)  # stale slots may hold anything, even NaN
        # Probabilities stay float32 through the PV product, as in the trainer's attention (model/attention.py):
        # rounding them to bfloat16 would be a sampler/trainer log-prob gap of its own. Decode is bound by
        # reading the pages, so the float32 product costs little.
        pv = jax.lax.dot_general(
            p, v.astype(jnp.float32), (((1,), (0,)), ((), ())),
            precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
        return m_new, alpha * denom + p.sum(axis=1), alpha[:, None] * acc + pv

    groups, head_dim = q.shape
    init = (
        jnp.full((groups,), MASK_VALUE, jnp.float32),
        jnp.zeros((groups,), jnp.float32),
        jnp.zeros((groups, head_dim), jnp.float32),
    )
    m, denom, acc = jax.lax.fori_loop(first, last, body, init)
    acc_ref[...] = acc
    m_ref[...] = m
    denom_ref[...] = denom


def _default_pages_per_block(page_size: int) -> int:
    # ~64 keys per block: large enough for the tensor cores, small enough to keep registers in check.
    return max(1, 64 // page_size)


def _default_num_splits(batch: int, num_kv_heads: int, num_blocks: int) -> int:
    # Split the sequence only when (batch, kv_head) alone cannot fill a GPU (~128 SMs). Untuned.
    return max(1, min(num_blocks, pl.cdiv(128, batch * num_kv_heads)))


@functools.partial(jax.jit, static_argnames=("interpret", "pages_per_block", "num_splits"))
def paged_decode_attention_pallas_gpu(
    q: jax.Array,
    k_pages: jax.Array,
    v_pages: jax.Array,
    page_table: jax.Array,
    lengths: jax.Array,
    *,
    interpret: bool = False,
    pages_per_block: int | None = None,
    num_splits: int | None = None,
) -> jax.Array:
    """q [B, H, hd] attends to keys 0..lengths[b]-1 of its paged sequence -> [B, H, hd] in q's dtype.

    pages_per_block: pages per inner-loop step (default: ~64 keys). num_splits: programs per (sequence,
    KV head) along the sequence, merged afterwards (default: enough to fill a GPU for small batches).
    """
    batch, num_heads, head_dim = q.shape
    group = check_paged_shapes(num_heads, head_dim, k_pages, v_pages)
    num_kv_heads, num_pages, page_size, _ = k_pages.shape
    max_pages = page_table.shape[1]
    pages_per_block = pages_per_block or _default_pages_per_block(page_size)
    block_k = pages_per_block * page_size
    if not _is_pow2(head_dim) or head_dim < 16:
        raise ValueError(f"pallas_gpu decode needs head_dim a power of two >= 16; got {head_dim}")
    if not _is_pow2(block_k) or block_k < 16:
        raise ValueError(
            f"pallas_gpu decode needs pages_per_block * page_size a power of two >= 16; got "
            f"{pages_per_block} * {page_size}")

    num_blocks = pl.cdiv(max_pages, pages_per_block)
    num_splits = min(num_splits or _default_num_splits(batch, num_kv_heads, num_blocks), num_blocks)
    blocks_per_split = pl.cdiv(num_blocks, num_splits)
    # Pad the table (page 0 is a valid id) so every block's id vector is in bounds; padded blocks are
    # never visited because the loop stops at the sequence's length.
    padded_pages = num_splits * blocks_per_split * pages_per_block
    page_table = jnp.pad(page_table.astype(jnp.int32), ((0, 0), (0, padded_pages - max_pages)))
    groups = max(16, _next_pow2(group))
    qg = q.reshape(batch, num_kv_heads, group, head_dim)
    qg = jnp.pad(qg, ((0, 0), (0, 0), (0, groups - group), (0, 0)))

    kernel = functools.partial(
        _decode_kernel, pages_per_block=pages_per_block, page_size=page_size,
        blocks_per_split=blocks_per_split, scale=head_dim ** -0.5)
    kv_spec = pl.BlockSpec((None, num_pages, page_size, head_dim), lambda b, h, s: (h, 0, 0, 0))
    acc, m, split_denom = pl.pallas_call(
        kernel,
        grid=(batch, num_kv_heads, num_splits),
        in_specs=[
            pl.BlockSpec((1,), lambda b, h, s: (b,)),
            pl.BlockSpec((None, padded_pages), lambda b, h, s: (b, 0)),
            pl.BlockSpec((None, None, groups, head_dim), lambda b, h, s: (b, h, 0, 0)),
            kv_spec,
            kv_spec,
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, groups, head_dim), lambda b, h, s: (b, h, s, 0, 0)),
            pl.BlockSpec((None, None, None, groups), lambda b, h, s: (b, h, s, 0)),
            pl.BlockSpec((None, None, None, groups), lambda b, h, s: (b, h, s, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((batch, num_kv_heads, num_splits, groups, head_dim), jnp.float32),
            jax.ShapeDtypeStruct((batch, num_kv_heads, num_splits, groups), jnp.float32),
            jax.ShapeDtypeStruct((batch, num_kv_heads, num_splits, groups), jnp.float32),
        ],
        interpret=interpret,
        # Naming Triton explicitly: without it, pallas_call may pick the Mosaic GPU backend.
        compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=2),
        name="paged_decode_attention",
    )(lengths.astype(jnp.int32), page_table, qg, k_pages, v_pages)

    # Merge the splits: rescale each to the global max. Empty splits have split_denom == 0 and drop out.
    m_all = m.max(axis=2, keepdims=True)
    weight = jnp.exp(m - m_all)
    denom = (weight * split_denom).sum(axis=2)
    out = (weight[..., None] * acc).sum(axis=2) / jnp.maximum(denom, 1e-30)[..., None]
    out = out[:, :, :group].reshape(batch, num_heads, head_dim)
    return out.astype(q.dtype)
