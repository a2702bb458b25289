"""The shape contract of the paged KV arrays that every paged-attention backend checks first.

Kept apart from engine/attention.py so the backends (reference, Pallas GPU, TPU) import it without importing the
dispatcher that imports them.
"""

from __future__ import annotations

import jax


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
