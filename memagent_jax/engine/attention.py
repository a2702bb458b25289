"""Attention over a paged KV cache: pure-JAX references (the truth, and the CPU path) and backend dispatch.

Layout (per layer): k_pages, v_pages [num_kv_heads, num_pages, page_size, head_dim]. Sequence b owns the
pages page_table[b, :max_pages] (int32; entries past its used pages are arbitrary valid ids); token t of it
sits in page page_table[b, t // page_size] at offset t % page_size. Query head h reads KV head
h // (num_heads // num_kv_heads). Scores are scaled by head_dim ** -0.5 and the softmax runs in float32;
outputs come back in q's dtype. A query with no visible key (an empty decode slot, a padding query) gets 0.

Backends for decode (`paged_decode_attention`):
  "reference"  - this module, pure JAX; "auto" picks it on CPU.
  "pallas_gpu" - Pallas/Triton flash-decoding kernel (attention_pallas_gpu.py); "auto" picks it on GPU.
  "tpu"        - JAX's own Pallas TPU paged attention kernel (attention_tpu.py); "auto" picks it on TPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from memagent_jax.engine.page_shapes import check_paged_shapes
from memagent_jax.model.attention import BLOCK, block_causal_attention, group_queries, masked_attention, ungroup_queries

BACKENDS = ("auto", "reference", "pallas_gpu", "tpu")


def gather_sequence_kv(
    k_pages: jax.Array, v_pages: jax.Array, page_table: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Each sequence's keys and values made contiguous: two [B, kv_heads, max_pages * page_size, head_dim]."""
    num_kv_heads, _, page_size, head_dim = k_pages.shape
    batch, max_pages = page_table.shape

    def gather(pages: jax.Array) -> jax.Array:
        seq = pages[:, page_table]  # [kv_heads, B, max_pages, page_size, head_dim]
        seq = seq.reshape(num_kv_heads, batch, max_pages * page_size, head_dim)
        return seq.transpose(1, 0, 2, 3)

    return gather(k_pages), gather(v_pages)


def paged_decode_attention_reference(
    q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, page_table: jax.Array, lengths: jax.Array
) -> jax.Array:
    """q [B, H, hd] (the newest token of each sequence) attends to its keys 0..lengths[b]-1 -> [B, H, hd]."""
    batch, num_heads, head_dim = q.shape
    group = check_paged_shapes(num_heads, head_dim, k_pages, v_pages)
    k, v = gather_sequence_kv(k_pages, v_pages, page_table)
    num_keys = k.shape[2]
    mask = jnp.arange(num_keys)[None, :] < lengths[:, None]  # [B, T]
    qg = q.reshape(batch, num_heads // group, group, 1, head_dim)
    out = masked_attention(qg, k, v, mask[:, None, None, None, :])
    return out.reshape(batch, num_heads, head_dim)


def paged_prefill_attention_reference(
    q: jax.Array,
    k_pages: jax.Array,
    v_pages: jax.Array,
    page_table: jax.Array,
    q_positions: jax.Array,
    q_valid: jax.Array,
) -> jax.Array:
    """Causal attention for a chunk q [B, C, H, hd] at absolute positions q_positions [B, C] -> [B, C, H, hd].

    The chunk's own keys/values must already be in the pages. A query at position p sees its sequence's keys
    0..p; queries with q_valid False get zeros. Only the sequence's max_pages pages are gathered.
    """
    num_heads, head_dim = q.shape[2:]
    group = check_paged_shapes(num_heads, head_dim, k_pages, v_pages)
    k, v = gather_sequence_kv(k_pages, v_pages, page_table)
    num_keys = k.shape[2]
    key_pos = jnp.arange(num_keys)
    mask = (key_pos[None, None, :] <= q_positions[:, :, None]) & q_valid[:, :, None]  # [B, C, T]
    return ungroup_queries(masked_attention(group_queries(q, num_heads // group), k, v, mask[:, None, None]))


def resolve_backend(backend: str, q: jax.Array | None = None) -> str:
    """The concrete backend "auto" stands for: from q's devices when concrete, else jax.default_backend()."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    platform = jax.default_backend()
    if q is not None and not isinstance(q, jax.core.Tracer) and hasattr(q, "devices"):
        platform = next(iter(q.devices())).platform
    if platform in ("gpu", "cuda", "rocm"):
        return "pallas_gpu"
    if platform == "tpu":
        return "tpu"
    return "reference"


def paged_decode_attention(
    q: jax.Array,
    k_pages: jax.Array,
    v_pages: jax.Array,
    page_table: jax.Array,
    lengths: jax.Array,
    *,
    backend: str = "auto",
    interpret: bool = False,
) -> jax.Array:
    """Decode attention by the chosen backend (see module docstring); `interpret` runs Pallas kernels on CPU."""
    chosen = resolve_backend(backend, q)
    if chosen == "pallas_gpu":
        from memagent_jax.engine import attention_pallas_gpu

        return attention_pallas_gpu.paged_decode_attention_pallas_gpu(
            q, k_pages, v_pages, page_table, lengths, interpret=interpret)
    if chosen == "tpu":
        from memagent_jax.engine import attention_tpu

        return attention_tpu.paged_decode_attention_tpu(
            q, k_pages, v_pages, page_table, lengths, interpret=interpret)
    return paged_decode_attention_reference(q, k_pages, v_pages, page_table, lengths)


def causal_chunk_attention(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, block: int = BLOCK
                           ) -> jax.Array:
    """Causal attention of a chunk over itself: q [B, C, H, hd], k/v [B, C, KV, hd], valid [B, C].

    For prefill chunks that start a sequence (no earlier keys), so nothing is read back from the pages:
    the trainer's own block-causal attention, with one segment per row (invalid tokens as padding)."""
    return block_causal_attention(q, k, v, valid.astype(jnp.int32), block)
