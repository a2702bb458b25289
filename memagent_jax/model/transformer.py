"""The Qwen2/Qwen2.5 and Llama 3 decoder in Flax NNX.

Inputs are token ids with per-token positions and segment ids, so one code path serves right padding,
left padding and packed rows (many conversations in one row): a token attends to earlier tokens of its
own segment only, and segment id 0 marks padding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from memagent_jax.model.attention import block_causal_attention
from memagent_jax.model.config import ModelConfig
from memagent_jax.model.layers import KeySequence, RMSNorm, apply_rope, logical_param, rope_inverse_frequencies


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
    """Positions that restart at 0 at each new segment (padding, segment 0, gets position 0)."""
    seq_len = segment_ids.shape[-1]
    index = jnp.arange(seq_len, dtype=jnp.int32)
    is_start = jnp.concatenate(
        [jnp.ones_like(segment_ids[..., :1], bool), segment_ids[..., 1:] != segment_ids[..., :-1]], axis=-1
    )
    start = jax.lax.cummax(jnp.where(is_start, index, 0), axis=segment_ids.ndim - 1)
    return jnp.where(segment_ids > 0, index - start, 0).astype(jnp.int32)


def _normal(cfg: ModelConfig) -> nnx.Initializer:
    return jax.nn.initializers.normal(cfg.initializer_range)


class Attention(nnx.Module):
    """Grouped-query attention with rotary positions and optional q/k/v bias (Qwen2)."""

    def __init__(self, cfg: ModelConfig, *, rngs: KeySequence):
        self.cfg = cfg
        d, h, kv, hd, wd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.weight_dtype
        self.q_proj = logical_param(rngs, _normal(cfg), (d, h, hd), wd, ("embed", "heads", "head_dim"))
        self.k_proj = logical_param(rngs, _normal(cfg), (d, kv, hd), wd, ("embed", "kv_heads", "head_dim"))
        self.v_proj = logical_param(rngs, _normal(cfg), (d, kv, hd), wd, ("embed", "kv_heads", "head_dim"))
        self.o_proj = logical_param(rngs, _normal(cfg), (h, hd, d), wd, ("heads", "head_dim", "embed"))
        if cfg.qkv_bias:
            zeros = jax.nn.initializers.zeros
            self.q_bias = logical_param(rngs, zeros, (h, hd), wd, ("heads", "head_dim"))
            self.k_bias = logical_param(rngs, zeros, (kv, hd), wd, ("kv_heads", "head_dim"))
            self.v_bias = logical_param(rngs, zeros, (kv, hd), wd, ("kv_heads", "head_dim"))

    def project_qkv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [B, T, D] -> rotated q [B, T, H, hd], rotated k and v [B, T, KV, hd] (compute dtype)."""
        dt = self.cfg.compute_dtype
        q = jnp.einsum("btd,dhk->bthk", x, self.q_proj[...].astype(dt))
        k = jnp.einsum("btd,dhk->bthk", x, self.k_proj[...].astype(dt))
        v = jnp.einsum("btd,dhk->bthk", x, self.v_proj[...].astype(dt))
        if self.cfg.qkv_bias:
            q = q + self.q_bias[...].astype(dt)
            k = k + self.k_bias[...].astype(dt)
            v = v + self.v_bias[...].astype(dt)
        inv_freq = rope_inverse_frequencies(self.cfg.head_dim, self.cfg.rope_theta, self.cfg.rope_scaling)
        return apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq), v

    def project_out(self, attended: jax.Array) -> jax.Array:
        """[B, T, H, hd] -> [B, T, D]."""
        return jnp.einsum("bthk,hkd->btd", attended, self.o_proj[...].astype(self.cfg.compute_dtype))

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        q, k, v = self.project_qkv(x, positions)
        return self.project_out(block_causal_attention(q, k, v, segment_ids))


class MLP(nnx.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: KeySequence):
        self.dtype = cfg.compute_dtype
        d, f, wd = cfg.hidden_size, cfg.intermediate_size, cfg.weight_dtype
        self.gate_proj = logical_param(rngs, _normal(cfg), (d, f), wd, ("embed", "mlp"))
        self.up_proj = logical_param(rngs, _normal(cfg), (d, f), wd, ("embed", "mlp"))
        self.down_proj = logical_param(rngs, _normal(cfg), (f, d), wd, ("mlp", "embed"))

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = x @ self.gate_proj[...].astype(self.dtype)
        up = x @ self.up_proj[...].astype(self.dtype)
        return (jax.nn.silu(gate) * up) @ self.down_proj[...].astype(self.dtype)


class DecoderLayer(nnx.Module):
    """Pre-norm residual block: attention then MLP."""

    def __init__(self, cfg: ModelConfig, *, rngs: KeySequence):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg, rngs=rngs)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.input_layernorm(x), positions, segment_ids)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nnx.Module):
    """Decoder-only language model: token embedding, N decoder layers, final norm, LM head."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, wd = cfg.hidden_size, cfg.weight_dtype
        rngs = KeySequence(rngs.params())  # one nnx.Rngs draw for the whole model (see KeySequence)
        self.embed_tokens = logical_param(rngs, _normal(cfg), (cfg.vocab_size, d), wd, ("vocab", "embed"))
        self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(d, cfg.rms_norm_eps, cfg, rngs=rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = logical_param(rngs, _normal(cfg), (d, cfg.vocab_size), wd, ("embed", "vocab"))

    def embed(self, tokens: jax.Array) -> jax.Array:
        """The residual stream's start [B, T, D], in float32 whatever the compute dtype.

        The embedding is rounded to the compute dtype first (so float32 masters and the engine's bfloat16
        copy give the same stream). The stream stays float32: each layer adds its compute-dtype output to
        it, and only the normed inputs of the matmuls are rounded. A bfloat16 stream rounds every residual
        add, and those roundings fall differently in programs of different shapes (the engine's decode
        steps, the trainer's packed rows): at 12 layers the bfloat16 sampler/trainer log-prob gap's mean is
        2.35e-2 with a bfloat16 stream and 1.64e-2 with this one (benchmarks/logprob_gap.py)."""
        return jnp.take(self.embed_tokens[...], tokens, axis=0).astype(self.cfg.compute_dtype).astype(jnp.float32)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Final norm and LM head; logits in float32 whatever the compute dtype."""
        hidden = self.norm(hidden)
        if self.cfg.tie_word_embeddings:
            table = self.embed_tokens[...].astype(self.cfg.compute_dtype)
            return jnp.einsum("btd,vd->btv", hidden, table, preferred_element_type=jnp.float32)
        head = self.lm_head[...].astype(self.cfg.compute_dtype)
        return jnp.einsum("btd,dv->btv", hidden, head, preferred_element_type=jnp.float32)

    def __call__(
        self,
        tokens: jax.Array,
        *,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        """tokens [B, T] -> logits [B, T, vocab] in float32.

        segment_ids [B, T]: 0 marks padding, equal ids form one sequence (packing); default all ones.
        positions [B, T]: rotary positions; default restarts at 0 at each segment start.
        """
        return self.logits(self.hidden_states(tokens, segment_ids=segment_ids, positions=positions))

    def hidden_states(
        self,
        tokens: jax.Array,
        *,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        remat: bool = False,
        scan: bool = False,
    ) -> jax.Array:
        """The last decoder layer's output [B, T, hidden] (before the final norm). Training computes the
        LM head piece by piece from this, so [B, T, vocab] logits never exist at once.

        remat: keep only each layer's input for the backward pass and recompute the rest (attention
        scores, MLP intermediates): about a third more compute for activations that no longer grow
        with the number of layers' internals, what long rows on accelerators need.
        scan: run the layers as one `lax.scan` over their stacked weights instead of unrolled, so the
        program holds one layer, not num_layers copies of it: the compile time of a 28-layer update falls
        by about the depth (BENCHMARKS.md "Compile time at real sizes"). Same arithmetic as unrolled; the
        price is one stacked compute-dtype copy of the layers' weights per call."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens, dtype=jnp.int32)
        if positions is None:
            positions = positions_from_segments(segment_ids)
        x = self.embed(tokens)
        if scan:
            return _scan_layers(list(self.layers), x, positions, segment_ids, self.cfg.compute_dtype, remat)
        run_layer = jax.checkpoint(_run_layer) if remat else _run_layer
        for layer in self.layers:
            x = run_layer(layer, x, positions, segment_ids)
        return x


def _run_layer(layer: DecoderLayer, x: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
    return layer(x, positions, segment_ids)


def stack_layer_weights(layers: list[DecoderLayer], dtype: jnp.dtype) -> tuple[nnx.GraphDef, nnx.State]:
    """(one layer's graphdef, every layer's weights stacked on a new leading axis) for a scan over layers.

    Floating weights are cast to the compute dtype before stacking: each layer casts them at use anyway
    (a cast to the same dtype is exact), and the stacked copy is then the compute copy, not the masters."""
    graphdef, first = nnx.split(layers[0])
    states = [first] + [nnx.split(layer)[1] for layer in layers[1:]]

    def stack(*values: jax.Array) -> jax.Array:
        if jnp.issubdtype(values[0].dtype, jnp.floating):
            values = tuple(v.astype(dtype) for v in values)
        return jnp.stack(values)

    return graphdef, jax.tree.map(stack, *states)


def _scan_layers(layers: list[DecoderLayer], x: jax.Array, positions: jax.Array, segment_ids: jax.Array,
                 dtype: jnp.dtype, remat: bool) -> jax.Array:
    graphdef, stacked = stack_layer_weights(layers, dtype)

    def body(hidden: jax.Array, weights: nnx.State) -> tuple[jax.Array, None]:
        return nnx.merge(graphdef, weights)(hidden, positions, segment_ids), None

    x, _ = jax.lax.scan(jax.checkpoint(body) if remat else body, x, stacked)
    return x
