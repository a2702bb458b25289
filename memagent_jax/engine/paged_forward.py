"""The decoder's forward pass over a paged KV cache (prefill chunks and decode steps).

It reuses the model's own modules (norms, projections, MLP, LM head) and replaces only attention: each
token's key and value are written into its sequence's page, then queries attend over the pages.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from memagent_jax.engine import attention
from memagent_jax.engine.kv_cache import NULL_PAGE, KVCache
from memagent_jax.model.transformer import Transformer


def write_slots(
    positions: jax.Array, valid: jax.Array, page_table: jax.Array, page_size: int
) -> tuple[jax.Array, jax.Array]:
    """(page, offset) of each token [B, C]; invalid tokens write to the reserved null page."""
    page_index = jnp.clip(positions // page_size, 0, page_table.shape[1] - 1)
    pages = jnp.take_along_axis(page_table, page_index, axis=1)
    return jnp.where(valid, pages, NULL_PAGE), jnp.where(valid, positions % page_size, 0)


def _write_kv(cache: KVCache, layer: int, k: jax.Array, v: jax.Array, pages: jax.Array, offsets: jax.Array) -> KVCache:
    # k, v [B, C, KV, hd] -> the layer's pages [KV, P, page_size, hd]. The two index arrays are adjacent
    # advanced indices after a slice, so the indexed view is [KV, B, C, hd] (NumPy rules).
    k_pages, v_pages = cache.k[layer], cache.v[layer]
    k_new = k_pages.at[:, pages, offsets].set(jnp.moveaxis(k, 2, 0).astype(k_pages.dtype), mode="drop")
    v_new = v_pages.at[:, pages, offsets].set(jnp.moveaxis(v, 2, 0).astype(v_pages.dtype), mode="drop")
    return cache.replace_layer(layer, k_new, v_new)


def paged_forward(
    model: Transformer,
    cache: KVCache,
    tokens: jax.Array,
    positions: jax.Array,
    valid: jax.Array,
    page_table: jax.Array,
    *,
    decode_backend: str = "auto",
    fresh: bool = False,
) -> tuple[jax.Array, KVCache]:
    """Runs tokens [B, C] at absolute positions [B, C] (valid [B, C] marks real tokens).

    Keys/values of earlier positions must already be in the pages named by page_table [B, max_pages].
    Returns the final hidden states [B, C, D] (before the final norm) and the updated cache.
    C == 1 is a decode step and uses the paged decode kernel; longer chunks use prefill attention over the
    pages, or, when `fresh` (every row starts its sequence at position 0 in this chunk), attention over
    the chunk's own keys without reading the pages back.
    """
    page_size = cache.page_size
    pages, offsets = write_slots(positions, valid, page_table, page_size)
    x = model.embed(tokens)
    for index, layer in enumerate(model.layers):
        attn = layer.self_attn
        q, k, v = attn.project_qkv(layer.input_layernorm(x), positions)
        cache = _write_kv(cache, index, k, v, pages, offsets)
        if tokens.shape[1] == 1:
            lengths = jnp.where(valid[:, 0], positions[:, 0] + 1, 0)
            out = attention.paged_decode_attention(
                q[:, 0], cache.k[index], cache.v[index], page_table, lengths, backend=decode_backend
            )[:, None]
        elif fresh:
            out = attention.causal_chunk_attention(q, k, v, valid)
        else:
            out = attention.paged_prefill_attention_reference(
                q, cache.k[index], cache.v[index], page_table, positions, valid
            )
        x = x + attn.project_out(out)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return x, cache
