"""Building blocks of the decoder: parameters with logical axis names, RMSNorm, rotary embeddings."""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from memagent_jax.model.config import ModelConfig, RopeScaling

Initializer = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]


class KeySequence:
    """Per-parameter keys fold_in(base, 0), fold_in(base, 1), ... from one base key.

    The model's modules draw from this instead of nnx.Rngs: under tracing (eval_shape, a sharded jit init)
    each nnx.Rngs draw costs time proportional to the trace so far, which made building a deep model
    quadratic in its depth (2.9 s for 48 layers).
    """

    def __init__(self, base: jax.Array):
        self._base = base
        self._count = 0

    def params(self) -> jax.Array:
        key = jax.random.fold_in(self._base, self._count)
        self._count += 1
        return key


def logical_param(
    keys: KeySequence, init: Initializer, shape: tuple[int, ...], dtype: jnp.dtype, axes: tuple[str | None, ...]
) -> nnx.Param:
    """A parameter tagged with logical axis names; sharding.py maps those names to mesh axes."""
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {axes} do not match shape {shape}")
    return nnx.Param(init(keys.params(), shape, dtype), logical_axes=axes)


class RMSNorm(nnx.Module):
    """Root-mean-square norm computed in float32 (as HF Qwen2/Llama do), scaled by a learned weight."""

    def __init__(self, size: int, eps: float, cfg: ModelConfig, *, rngs: KeySequence):
        self.eps = eps
        self.dtype = cfg.compute_dtype
        self.weight = logical_param(rngs, jax.nn.initializers.ones, (size,), cfg.weight_dtype, ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # HF casts back to the activation dtype before scaling; doing the same keeps bf16 parity.
        return self.weight[...].astype(self.dtype) * normed.astype(self.dtype)


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> jax.Array:
    """Per-pair inverse frequencies, with Llama 3 scaling (long wavelengths slowed, short ones kept)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if scaling is None:
        return inv_freq
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    in_between = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(in_between, blended, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotates [..., T, heads, head_dim] by per-token positions [..., T] (half-split layout, as HF)."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [..., T, head_dim/2]
    cos = jnp.cos(angles)[..., None, :]
    sin = jnp.sin(angles)[..., None, :]
    x32 = x.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x.dtype)
