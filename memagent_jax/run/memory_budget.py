"""Per-device memory of a colocated GRPO run, computed abstractly (no allocation): does a config fit?

Everything a training run keeps on each device at the peak of an update, item by item:

- params (the master weights, in param_dtype: float32 in every shipped config), optimizer state (in its
  state_dtype, float32), reference weights (the frozen KL reference, a copy of the starting weights in
  the compute dtype), gradients (float32 sums) and the compute-dtype copies of the weights that the
  forward and backward passes read (none when compute and master dtypes agree), all in the training
  layout;
- the engine's own copy of the weights in the rollout layout and the compute dtype (it never aliases the
  trained ones);
- the engine's KV pages (the engine places its cache replicated over the mesh: every device holds all
  pages);
- the activations of one micro-batch kept for the backward pass (`activation_bytes` gives the formula).

Parameter and optimizer-state shards come from the real model and optimizer traced with `nnx.eval_shape` /
`jax.eval_shape` and the real sharding rules, so they are exact (a test checks them byte for byte against
allocated arrays). `mesh` may be a `jax.sharding.AbstractMesh`: a TPU slice can be budgeted on a laptop.
Activations are an estimate; XLA's own scheduling, fusion and allocator slack come on top.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

from memagent_jax.engine.kv_cache import kv_cache_bytes
from memagent_jax.model import attention
from memagent_jax.model.config import ModelConfig
from memagent_jax.model.sharding import Rules, as_mesh_axes, logical_to_spec, state_shardings
from memagent_jax.model.transformer import Transformer
from memagent_jax.rl.optimizer import optimizer_state_shardings
from memagent_jax.rl.precision import cast_floating

# HBM per device as JAX sees it (one JAX device per GPU; one per TPU v4/v5p chip, whose two TensorCores
# run as one "megacore" device; one per single-core v5e/v6e chip).
DEVICE_MEMORY_BYTES: dict[str, float] = {
    "A100-40GB": 40e9,
    "A100": 80e9,
    "H100": 80e9,
    "H200": 141e9,
    "B200": 192e9,
    "TPU v4": 32e9,
    "TPU v5e": 16e9,
    "TPU v5p": 95e9,
    "TPU v6e": 32e9,
}

# Float32 bytes XLA keeps per attention score (query, key, head) for the backward pass of the model's
# attention (the scores einsum runs with preferred_element_type=float32, so whatever the compute dtype):
# two float32 [heads, queries, keys] arrays, as measured with XLA's compiled memory analysis on CPU (see
# tests/test_real_configs.py). A flash-attention backward would keep none; the bfloat16 probabilities
# alone would be 2 bytes.
SCORE_BYTES = 8
ATTENTION_BLOCK = attention.BLOCK  # model.attention.block_causal_attention's query block
LM_HEAD_F32_ARRAYS = 3  # logits, log-probs and probabilities of one LM-head piece (float32)

AnyMesh = Mesh | AbstractMesh

_ITEMS = ("params", "optimizer", "reference", "gradients", "compute_weights", "rollout_weights", "kv_cache",
          "activations")


@dataclasses.dataclass(frozen=True)
class Budget:
    """Bytes per device of each item at the peak of a GRPO update (see the module docstring)."""

    params: int
    optimizer: int
    reference: int
    gradients: int
    compute_weights: int
    rollout_weights: int
    kv_cache: int
    activations: int

    @property
    def total(self) -> int:
        return sum(self.items().values())

    def items(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _ITEMS}


def abstract_params(model_cfg: ModelConfig) -> nnx.State:
    """The model's state as ShapeDtypeStructs with their logical-axis metadata (nothing allocated)."""
    _, state = nnx.split(nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0))))
    return state


def shard_bytes(values: Any, shardings: Any) -> int:
    """Bytes one device holds of a tree of arrays (or ShapeDtypeStructs) placed with matching shardings.

    Every device of a NamedSharding holds a shard of the same shape (replicated axes hold full copies)."""
    sizes = jax.tree.map(lambda v, s: math.prod(s.shard_shape(v.shape)) * jnp.dtype(v.dtype).itemsize,
                         values, shardings)
    return int(sum(jax.tree.leaves(sizes)))


def optimizer_shardings(optimizer: optax.GradientTransformation, params: Any, param_shardings: Any,
                        mesh: AnyMesh) -> tuple[Any, Any]:
    """(abstract optimizer state, its shardings), by training's own rule (rl.optimizer.optimizer_state_shardings)
    with step counts and other scalars replicated over `mesh`."""
    return optimizer_state_shardings(optimizer, params, param_shardings, NamedSharding(mesh, PartitionSpec()))


def local_size(name: str, size: int, mesh: AnyMesh, rules: Rules) -> int:
    """How much of a dimension of logical axis `name` one device holds under the rules (a dimension the
    mesh axes do not divide stays whole, as in model.sharding.logical_to_spec)."""
    spec = logical_to_spec((name,), (size,), rules, mesh)
    return size // math.prod(mesh.shape[a] for a in as_mesh_axes(spec[0] if len(spec) else None))


def scores_per_head(row_len: int, block: int = ATTENTION_BLOCK) -> int:
    """Attention scores of one head over one packed row, as block_causal_attention computes them: query blocks
    (attention.query_block) see keys up to their own end, so the upper triangle is skipped."""
    size = attention.query_block(row_len, block)
    blocks = row_len // size
    return size * size * blocks * (blocks + 1) // 2


def activation_bytes(model_cfg: ModelConfig, mesh: AnyMesh, rules: Rules, *, row_len: int, rows_per_micro: int,
                     piece_len: int = 256, remat_layers: bool = False) -> int:
    """Estimated bytes one device keeps for the backward pass of one micro-batch (rl.update's scan body).

    The micro-batch's rows split over the `batch` rule's mesh axes; heads, KV heads, the MLP hidden and the
    vocabulary split as their rules say (Megatron-style tensor parallelism), the model dimension does not.
    With r local rows of T tokens, c the compute dtype's bytes, d the model dimension, and h, k, f, V the
    local query heads, KV heads, MLP width and vocabulary (head size e), one decoder layer keeps:

    - per token, in the compute dtype: the two normed inputs (2d), q and the attention output (2he),
      rotated k and v (2ke), and the SwiGLU gate, up, activation and product (4f); in float32: the two
      residual-stream inputs, which are also the RMSNorm inputs (2d; the stream is float32, see
      Transformer.embed), and the rotary q and k (he + ke);
    - per score: SCORE_BYTES for each of h heads x scores_per_head(T), plus the one-byte mask per score.

    Then the last hidden state and its float32 norm input per token, and one LM-head piece being
    recomputed in the backward pass (rl.logprobs checkpoints each piece): LM_HEAD_F32_ARRAYS float32
    [r, piece_len, V] arrays.

    `remat_layers=True` models decoder layers under jax.checkpoint (UpdateConfig.remat / config.train.remat):
    each layer keeps only its (float32) input, and one layer's full set above exists while it is recomputed.
    """
    c = model_cfg.compute_dtype.itemsize
    d, e = model_cfg.hidden_size, model_cfg.head_dim
    rows = local_size("batch", rows_per_micro, mesh, rules)
    heads = local_size("heads", model_cfg.num_heads, mesh, rules)
    kv_heads = local_size("kv_heads", model_cfg.num_kv_heads, mesh, rules)
    mlp = local_size("mlp", model_cfg.intermediate_size, mesh, rules)
    vocab = local_size("vocab", model_cfg.vocab_size, mesh, rules)
    tokens = rows * row_len
    per_token = c * (2 * d + 2 * heads * e + 2 * kv_heads * e + 4 * mlp) + 4 * (2 * d + (heads + kv_heads) * e)
    scores = rows * scores_per_head(row_len)
    layer = tokens * per_token + scores * (SCORE_BYTES * heads + 1)
    stored = (model_cfg.num_layers * tokens * 4 * d + layer) if remat_layers else model_cfg.num_layers * layer
    head = tokens * (c + 4) * d + LM_HEAD_F32_ARRAYS * 4 * rows * min(piece_len, row_len) * vocab
    return int(stored + head)


def compute_weight_bytes(compute_bytes: int, model_cfg: ModelConfig, scan_layers: bool) -> int:
    """The compute-dtype weight copies of a training step (see per_device_budget's compute_weights)."""
    if scan_layers:
        return 2 * compute_bytes
    return compute_bytes if model_cfg.compute_dtype != model_cfg.weight_dtype else 0


def per_device_budget(model_cfg: ModelConfig, mesh: AnyMesh, rules: Rules, *,
                      optimizer: optax.GradientTransformation, kv_pages: int, page_size: int,
                      rollout_rules: Rules | None = None, row_len: int, rows_per_micro: int,
                      piece_len: int = 256, reference: bool = True, remat_layers: bool = False,
                      scan_layers: bool = False) -> Budget:
    """Bytes per device of a colocated GRPO run (training.TrainingRun's layout), item by item.

    rules / rollout_rules: the training and the engine's sharding rules (None: the engine uses `rules`).
    reference: a KL reference copy exists (rl.policy keeps one, in the compute dtype, when kl_coef > 0).
    gradients: two float32 params-sized trees in the training layout, the accumulator carried through the
    micro-batch scan and the current micro-batch's gradient (rl.update).
    compute_weights: the weights rounded to the compute dtype for the matmuls, counted whole (XLA may keep
    every layer's copy for the backward pass); zero when the masters are already in the compute dtype.
    With `scan_layers` (UpdateConfig.scan_layers) the layers' weights are stacked in the compute dtype
    whatever the masters' dtype, and the backward pass builds that stack's cotangent: two copies.
    """
    params = abstract_params(model_cfg)
    train_shardings = state_shardings(params, mesh, rules)
    param_bytes = shard_bytes(params, train_shardings)
    compute_bytes = shard_bytes(cast_floating(params, model_cfg.compute_dtype), train_shardings)
    opt_state, opt_shardings = optimizer_shardings(optimizer, params, train_shardings, mesh)
    rollout_shardings = state_shardings(params, mesh, rules if rollout_rules is None else rollout_rules)
    return Budget(
        params=param_bytes,
        optimizer=shard_bytes(opt_state, opt_shardings),
        reference=compute_bytes if reference else 0,
        gradients=2 * shard_bytes(cast_floating(params, jnp.float32), train_shardings),
        compute_weights=compute_weight_bytes(compute_bytes, model_cfg, scan_layers),
        rollout_weights=shard_bytes(cast_floating(params, model_cfg.compute_dtype), rollout_shardings),
        kv_cache=kv_cache_bytes(model_cfg, kv_pages, page_size),
        activations=activation_bytes(model_cfg, mesh, rules, row_len=row_len, rows_per_micro=rows_per_micro,
                                     piece_len=piece_len, remat_layers=remat_layers),
    )


def _gb(value: float) -> str:
    return f"{value / 1e9:8.2f} GB"


def format_budget(budget: Budget, device_bytes: float) -> str:
    """A small table: each item's GB per device and share of the device, the total, and what is left."""
    lines = [f"{'item':<16}{'per device':>12}{'of device':>11}"]
    for name, value in budget.items().items():
        lines.append(f"{name:<16}{_gb(value):>12}{100 * value / device_bytes:>10.1f}%")
    lines.append(f"{'total':<16}{_gb(budget.total):>12}{100 * budget.total / device_bytes:>10.1f}%")
    lines.append(f"{'device':<16}{_gb(device_bytes):>12}   free {_gb(device_bytes - budget.total).strip()}")
    return "\n".join(lines)


def check_fits(budget: Budget, device_bytes: float) -> None:
    """Raises ValueError naming the biggest items when the budget's total exceeds the device's memory."""
    if budget.total <= device_bytes:
        return
    biggest = sorted(budget.items().items(), key=lambda item: -item[1])[:3]
    named = ", ".join(f"{name} {value / 1e9:.1f} GB" for name, value in biggest)
    raise ValueError(f"needs {budget.total / 1e9:.1f} GB per device but the device has {device_bytes / 1e9:.1f} GB "
                     f"({(budget.total - device_bytes) / 1e9:.1f} GB over); biggest items: {named}")
