"""Test helpers for the model: a dense reference attention mask, HF-style padding masks as segment ids, and
placing or inspecting a module's shardings. The package itself never needs them (it builds packed rows with
segment ids and creates models sharded from the start), so they live with the tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from memagent_jax.model.sharding import Rules, state_shardings


def segment_mask(segment_ids: jax.Array) -> jax.Array:
    """[B, T, T] boolean: query i may see key j iff j <= i and both are in the same non-pad segment."""
    seq_len = segment_ids.shape[-1]
    causal = jnp.tril(jnp.ones((seq_len, seq_len), bool))
    same = segment_ids[..., :, None] == segment_ids[..., None, :]
    return causal & same & (segment_ids[..., None, :] > 0)


def padding_to_segments(attention_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """HF-style 0/1 attention mask (left or right padding) -> (segment_ids, positions counted on real tokens)."""
    mask = attention_mask.astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0) * mask
    return mask, positions.astype(jnp.int32)


def shard_module(module: nnx.Module, mesh: Mesh, rules: Rules) -> nnx.Module:
    """Places an existing module's state on the mesh per the rules (a copy; the input is untouched)."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.device_put(state, state_shardings(state, mesh, rules)))


def describe_shardings(state: nnx.State) -> dict[str, PartitionSpec | None]:
    """'layers.0.self_attn.q_proj' -> PartitionSpec of the placed array (None where it has no spec)."""
    out: dict[str, PartitionSpec | None] = {}
    for path, variable in nnx.to_flat_state(state):
        value = variable.get_value() if isinstance(variable, nnx.Variable) else variable
        sharding = getattr(value, "sharding", None)
        out[".".join(str(p) for p in path)] = getattr(sharding, "spec", None)
    return out
