"""Paged decode attention on TPU: JAX's own Pallas TPU kernel behind this package's signature.

jax.experimental.pallas.ops.tpu.paged_attention.paged_attention already takes the KV-head-major page layout;
this wrapper renames arguments, applies the head_dim ** -0.5 scale (the kernel does not scale scores; q
is scaled in float32, which the kernel computes in anyway), pads the page table to a whole number of compute
blocks (the kernel requires pages_per_compute_block to divide it; padding ids are page 0 and are never read
past a length)
and chooses a block size. `interpret=True` runs the kernel under Pallas' TPU interpret mode, which
simulates TPU memory and DMAs on CPU: that is how the tests cover it. Real-TPU compilation (Mosaic's layout
constraints on head_dim/page_size) and speed are untested here, and the block-size default is untuned.
Unlike the reference and the GPU kernel, JAX's kernel does not zero V in masked slots, so stale page
contents must be finite (the engine's cache starts zeroed, so they are).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention

from memagent_jax.engine.page_shapes import check_paged_shapes


def paged_decode_attention_tpu(
    q: jax.Array,
    k_pages: jax.Array,
    v_pages: jax.Array,
    page_table: jax.Array,
    lengths: jax.Array,
    *,
    interpret: bool = False,
    pages_per_compute_block: int | None = None,
) -> jax.Array:
    """q [B, H, hd] attends to keys 0..lengths[b]-1 of its paged sequence -> [B, H, hd] in q's dtype."""
    check_paged_shapes(q.shape[1], q.shape[2], k_pages, v_pages)
    page_size = k_pages.shape[2]
    max_pages = page_table.shape[1]
    if pages_per_compute_block is None:
        # ~256 keys per DMA'd block, but no more pages than a sequence can own.
        pages_per_compute_block = max(1, min(max_pages, 256 // page_size))
    padded = -(-max_pages // pages_per_compute_block) * pages_per_compute_block
    page_table = jnp.pad(page_table.astype(jnp.int32), ((0, 0), (0, padded - max_pages)))
    context = pltpu.force_tpu_interpret_mode() if interpret else contextlib.nullcontext()
    with context:
        out = paged_attention(
            q.astype(jnp.float32) * q.shape[-1] ** -0.5, k_pages, v_pages, lengths.astype(jnp.int32), page_table,
            pages_per_compute_block=pages_per_compute_block)
    return out.astype(q.dtype)
