"""The jit-compiled device steps of the engine: a prefill chunk, and a block of decode steps.

Both are pure functions of (model state, cache, batch arrays); the engine compiles each once per static
shape bucket and donates the cache so pages are updated in place.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from memagent_jax.engine.kv_cache import KVCache
from memagent_jax.engine.paged_forward import paged_forward
from memagent_jax.engine.sampling import SlotSampling, sample_tokens
from memagent_jax.model.numerics import POLICY_PROGRAMS


class PrefillBatch(NamedTuple):
    tokens: jax.Array  # [B, C] int32
    positions: jax.Array  # [B, C] int32 absolute positions
    valid: jax.Array  # [B, C] bool
    page_table: jax.Array  # [B, max_pages] int32
    last_index: jax.Array  # [B] int32: index in the chunk of each row's last valid token
    sampling: SlotSampling  # per row
    step: jax.Array  # [B] int32: index of the token sampled after this chunk (its rng stream position)


class DecodeBatch(NamedTuple):
    tokens: jax.Array  # [S] int32: each slot's newest token (not yet in the cache)
    positions: jax.Array  # [S] int32: its position
    active: jax.Array  # [S] bool
    budget: jax.Array  # [S] int32: how many tokens this slot may still generate in this block
    page_table: jax.Array  # [S, max_pages] int32 (pages already cover every position written here)
    stop_ids: jax.Array  # [S, max_stop_ids] int32, -1 padded
    sampling: SlotSampling
    step: jax.Array  # [S] int32: index of the next token to generate for each slot's request


class DecodeOutput(NamedTuple):
    tokens: jax.Array  # [K, S] int32
    logprobs: jax.Array  # [K, S] float32
    emitted: jax.Array  # [K, S] bool: whether step k produced a token for slot s


def make_prefill_fn(graphdef: nnx.GraphDef, on_trace: Callable[[str], None]) -> Callable:
    """prefill(state, cache, batch, fresh) -> (tokens [B], logprobs [B], logits [B, V], cache): writes the
    chunk's KV and samples a token after each row's last valid position (used only for rows whose prompt ends
    in this chunk). `fresh` (static): every row starts at position 0, so attention needs no page reads."""

    @functools.partial(jax.jit, donate_argnums=(1,), static_argnums=(3,), compiler_options=POLICY_PROGRAMS)
    def prefill(state: nnx.State, cache: KVCache, batch: PrefillBatch, fresh: bool):
        on_trace(f"prefill{tuple(batch.tokens.shape)}/pages{batch.page_table.shape[1]}" + ("/fresh" if fresh else ""))
        model = nnx.merge(graphdef, state)
        hidden, cache = paged_forward(model, cache, batch.tokens, batch.positions, batch.valid, batch.page_table,
                                      fresh=fresh)
        last = jnp.take_along_axis(hidden, batch.last_index[:, None, None], axis=1)  # [B, 1, D]
        logits = model.logits(last)[:, 0]
        tokens, logprobs = sample_tokens(logits, batch.sampling, batch.step)
        return tokens, logprobs, logits, cache

    return prefill


def make_copy_page_fn(on_trace: Callable[[str], None]) -> Callable:
    """copy_page(cache, src, dst) -> cache: page dst of every layer becomes a copy of page src."""

    @functools.partial(jax.jit, donate_argnums=(0,))
    def copy_page(cache: KVCache, src: jax.Array, dst: jax.Array) -> KVCache:
        on_trace("copy_page")
        return KVCache(tuple(k.at[:, dst].set(k[:, src]) for k in cache.k),
                       tuple(v.at[:, dst].set(v[:, src]) for v in cache.v))

    return copy_page


def make_decode_fn(
    graphdef: nnx.GraphDef, num_steps: int, attention_backend: str, on_trace: Callable[[str], None]
) -> Callable:
    """decode(state, cache, batch) -> (DecodeOutput, cache): up to `num_steps` tokens per slot without
    returning to the host; a slot stops early on a stop id or when its budget is spent."""

    @functools.partial(jax.jit, donate_argnums=(1,), compiler_options=POLICY_PROGRAMS)
    def decode(state: nnx.State, cache: KVCache, batch: DecodeBatch):
        on_trace(f"decode{tuple(batch.tokens.shape)}x{num_steps}/pages{batch.page_table.shape[1]}")
        model = nnx.merge(graphdef, state)
        slots = batch.tokens.shape[0]

        # (step, cache, tokens, positions, active, out): the while loop's state.
        Carry = tuple[jax.Array, KVCache, jax.Array, jax.Array, jax.Array, DecodeOutput]

        def body(carry: Carry) -> Carry:
            k, cache, tokens, positions, active, out = carry
            hidden, cache = paged_forward(
                model, cache, tokens[:, None], positions[:, None], active[:, None], batch.page_table,
                decode_backend=attention_backend,
            )
            logits = model.logits(hidden)[:, 0]
            new_tokens, logprobs = sample_tokens(logits, batch.sampling, batch.step + k)
            out = DecodeOutput(
                out.tokens.at[k].set(new_tokens),
                out.logprobs.at[k].set(logprobs),
                out.emitted.at[k].set(active),
            )
            is_stop = jnp.any(new_tokens[:, None] == batch.stop_ids, axis=1)
            still = active & ~is_stop & (k + 1 < batch.budget)
            return k + 1, cache, jnp.where(active, new_tokens, tokens), positions + 1, still, out

        empty = DecodeOutput(
            jnp.zeros((num_steps, slots), jnp.int32),
            jnp.zeros((num_steps, slots), jnp.float32),
            jnp.zeros((num_steps, slots), bool),
        )
        active = batch.active & (batch.budget > 0)
        # A while loop, not a fixed count: the block ends as soon as every slot has stopped.
        _, cache, _, _, _, out = jax.lax.while_loop(
            lambda carry: (carry[0] < num_steps) & jnp.any(carry[4]),
            body,
            (jnp.int32(0), cache, batch.tokens, batch.positions, active, empty),
        )
        return out, cache

    return decode
