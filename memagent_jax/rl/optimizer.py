"""AdamW with warm-up, a learning-rate schedule and global-norm gradient clipping, placed like the params.

The optimizer's state (Adam's moments) lives in `state_dtype`, float32 by default whatever the parameters'
dtype: bfloat16(0.999) is 1.0, so a bfloat16 second moment would never decay (see rl/precision.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from memagent_jax.rl.precision import STATE_DTYPES, cast_floating

SCHEDULES = ("constant", "cosine", "linear")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 1e-6  # MemAgent: 1e-6, 20 warm-up steps, then constant
    warmup_steps: int = 20
    schedule: str = "constant"
    total_steps: int = 0  # decay horizon for cosine/linear (after warm-up)
    end_lr_fraction: float = 0.0  # cosine/linear end at learning_rate * this
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clip; 0 turns it off
    state_dtype: str = "float32"  # Adam's moments (and the update's arithmetic); see rl/precision.py

    def __post_init__(self) -> None:
        errors = []
        if not self.learning_rate > 0:
            errors.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.warmup_steps < 0:
            errors.append(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.schedule not in SCHEDULES:
            errors.append(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule != "constant" and self.total_steps <= self.warmup_steps:
            errors.append(f"schedule {self.schedule!r} needs total_steps > warmup_steps, got {self.total_steps}")
        if not 0 <= self.end_lr_fraction <= 1:
            errors.append(f"end_lr_fraction must be in [0, 1], got {self.end_lr_fraction}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            errors.append("weight_decay and grad_clip must be >= 0")
        if self.state_dtype not in STATE_DTYPES:
            errors.append(f"state_dtype must be one of {STATE_DTYPES}, got {self.state_dtype!r}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1 and self.eps > 0):
            errors.append(f"need 0 <= b1, b2 < 1 and eps > 0, got {self.b1}, {self.b2}, {self.eps}")
        if errors:
            raise ValueError("invalid optimizer config: " + "; ".join(errors))


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """Linear warm-up from 0 to the peak, then constant, cosine or linear decay."""
    peak = cfg.learning_rate
    if cfg.schedule == "constant":
        after = optax.constant_schedule(peak)
    else:
        decay = cfg.total_steps - cfg.warmup_steps
        end = peak * cfg.end_lr_fraction
        after = (optax.cosine_decay_schedule(peak, decay, alpha=cfg.end_lr_fraction) if cfg.schedule == "cosine"
                 else optax.linear_schedule(peak, end, decay))
    if cfg.warmup_steps == 0:
        return after
    # The first update uses a small non-zero rate (step 1 of the ramp), never an update of exactly zero.
    warmup = optax.linear_schedule(peak / cfg.warmup_steps, peak, cfg.warmup_steps - 1) if cfg.warmup_steps > 1 \
        else optax.constant_schedule(peak)
    return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay))
    return in_dtype(optax.chain(*parts), jnp.dtype(cfg.state_dtype))


def in_dtype(inner: optax.GradientTransformation, dtype: jnp.dtype) -> optax.GradientTransformation:
    """`inner` with its state, its arithmetic and the updates it returns in `dtype`: gradients and params
    are cast on the way in (optax's own mu_dtype covers only Adam's first moment). Adding float32 updates
    to float32 master weights keeps steps far below a bfloat16 weight's spacing."""

    def init(params: Any) -> Any:
        return inner.init(cast_floating(params, dtype))

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        return inner.update(cast_floating(updates, dtype), state,
                            None if params is None else cast_floating(params, dtype))

    return optax.GradientTransformation(init, update)


def optimizer_state_shardings(optimizer: optax.GradientTransformation, params: Any, param_shardings: Any,
                              replicated: jax.sharding.Sharding) -> tuple[Any, Any]:
    """(abstract optimizer state, its shardings) for params (concrete or ShapeDtypeStructs) placed as
    `param_shardings`: every params-shaped tree (Adam's moments) like the params, so the moments of an
    FSDP-sharded weight are FSDP-sharded too; everything else (step counts) `replicated`. The memory budget
    calls this too, so its optimizer figure follows whatever placement training uses."""
    abstract = jax.eval_shape(optimizer.init, params)
    shardings = optax.tree_map_params(optimizer, lambda _, sharding: sharding, abstract, param_shardings,
                                      transform_non_params=lambda _: replicated)
    return abstract, shardings


def init_optimizer_state(optimizer: optax.GradientTransformation, params: Any) -> Any:
    """Optimizer state created on device, placed by `optimizer_state_shardings` from the params' own
    shardings."""
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    mesh = next((s.mesh for s in jax.tree.leaves(param_shardings) if isinstance(s, NamedSharding)), None)
    replicated = NamedSharding(mesh, PartitionSpec()) if mesh is not None else jax.tree.leaves(param_shardings)[0]
    _, shardings = optimizer_state_shardings(optimizer, params, param_shardings, replicated)
    return jax.jit(optimizer.init, out_shardings=shardings)(params)
