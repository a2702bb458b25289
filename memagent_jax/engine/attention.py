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

BACKENDS = ("auto", "reference", "pallas_gpu", "tpu")

# Finite rather than -inf so fully masked rows never produce inf - inf = NaN.
_MASK_VALUE = -1e30


def check_paged_shapes(q_heads: int, head_dim: int, k_pages: jax.Array, v_pages: jax.Array) -> int:
    """Validates the page arrays against q's head count and size; returns the GQA group size."""
    if k_pages.ndim != 4 or k_pages.shape != v_pages.shape:
        raise ValueError(
            f"k_pages and v_pages must both be [kv_heads, pages, page_size, head_dim]; got "
            f"{k_pages.shape} and {v_pages.shape}")
    num_kv_heads, _, _, page_head_dim = k_pages.shape
    if page_head_dim != head_dim:
        raise ValueError(f"q head_dim {head_dim} != page head_dim {page_head_dim}")
    if q_heads % num_kv_heads:
        raise ValueError(f"num_heads {q_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    return q_heads // num_kv_heads


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


def _masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """q [B, KV, G, Q, hd], k/v [B, KV, T, hd], mask [B, 1, 1, Q, T] -> float32 [B, KV, G, Q, hd]."""
    hi = jax.lax.Precision.HIGHEST  # keep the truth free of TF32/bf16 passes on accelerators
    scores = jnp.einsum("bkgqd,bktd->bkgqt", q.astype(jnp.float32), k.astype(jnp.float32), precision=hi)
    scores = jnp.where(mask, scores * q.shape[-1] ** -0.5, _MASK_VALUE)
    probs = jnp.where(mask, jnp.exp(scores - scores.max(axis=-1, keepdims=True)), 0.0)
    denom = probs.sum(axis=-1, keepdims=True)
    # Zero masked values too: 0 * (stale NaN/inf in an unused slot) would still be NaN.
    v = jnp.where(mask.any(axis=(2, 3))[..., None], v.astype(jnp.float32), 0.0)
    out = jnp.einsum("bkgqt,bktd->bkgqd", probs, v, precision=hi)
    return out / jnp.maximum(denom, 1e-30)


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
    out = _masked_attention(qg, k, v, mask[:, None, None, None, :])
    return out.reshape(batch, num_heads, head_dim).astype(q.dtype)


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
    batch, chunk, num_heads, head_dim = q.shape
    group = check_paged_shapes(num_heads, head_dim, k_pages, v_pages)
    k, v = gather_sequence_kv(k_pages, v_pages, page_table)
    num_keys = k.shape[2]
    key_pos = jnp.arange(num_keys)
    mask = (key_pos[None, None, :] <= q_positions[:, :, None]) & q_valid[:, :, None]  # [B, C, T]
    qg = q.reshape(batch, chunk, num_heads // group, group, head_dim).transpose(0, 2, 3, 1, 4)
    out = _masked_attention(qg, k, v, mask[:, None, None])  # [B, KV, G, C, hd]
    out = out.transpose(0, 3, 1, 2, 4).reshape(batch, chunk, num_heads, head_dim)
    return out.astype(q.dtype)


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


def causal_chunk_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, block: int = 128
) -> jax.Array:
    """Causal attention of a chunk over itself: q [B, C, H, hd], k/v [B, C, KV, hd], valid [B, C].

    For prefill chunks that start a sequence (no earlier keys), so nothing is read back from the pages.
    Query blocks attend only to keys up to their own end, which skips the masked upper triangle:
    about (n + 1) / 2n of the full work for n blocks.
    """
    batch, chunk, num_heads, head_dim = q.shape
    kv_heads = k.shape[2]
    group = num_heads // kv_heads
    block = min(block, chunk)
    if chunk % block:
        block = chunk
    qg = q.reshape(batch, chunk, kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)  # [B, KV, G, C, hd]
    kt = k.transpose(0, 2, 1, 3)  # [B, KV, C, hd]
    vt = v.transpose(0, 2, 1, 3)
    index = jnp.arange(chunk)
    outputs = []
    for start in range(0, chunk, block):
        end = start + block
        causal = index[None, start:end, None] >= index[None, None, :end]  # [1, block, end]
        mask = causal & valid[:, None, :end] & valid[:, start:end, None]  # [B, block, end]
        outputs.append(_masked_attention(qg[:, :, :, start:end], kt[:, :, :end], vt[:, :, :end], mask[:, None, None]))
    out = jnp.concatenate(outputs, axis=3)  # [B, KV, G, C, hd]
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, chunk, num_heads, head_dim).astype(q.dtype)
