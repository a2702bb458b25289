"""Mixed precision: which dtypes may hold what is trained, and casts of parameter trees.

Training keeps master weights, optimizer state and gradient sums in float32 and computes in the model's
compute dtype (bfloat16 on accelerators); the engine and the frozen KL reference hold copies in the
compute dtype. A bfloat16 master weight has 8 significant bits: an update smaller than half its spacing
is rounded away (at MemAgent's lr 1e-6 a weight of 0.02 never moves), and bfloat16(0.999) is exactly 1.0,
so a bfloat16 Adam second moment never decays. `precision_problems` says when a config runs into either.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

STATE_DTYPES = ("float32", "bfloat16")


def cast_floating(tree: Any, dtype: Any, copy: bool = False) -> Any:
    """Every floating-point leaf (array or ShapeDtypeStruct) cast to `dtype`; others kept. A leaf already in
    `dtype` is returned as it is, or copied with copy=True (for a copy that must outlive buffers the trainer
    donates)."""
    dtype = jnp.dtype(dtype)

    def cast(x: Any) -> Any:
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype:
            if isinstance(x, jax.ShapeDtypeStruct):  # abstract trees (memory budgets) cast too
                return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
            return x.astype(dtype)
        return jnp.copy(x) if copy and hasattr(x, "dtype") else x

    return jax.tree.map(cast, tree)


def relative_spacing(dtype: Any) -> float:
    """The gap between 1.0 and the next value of a floating dtype (bfloat16: 2^-7; float32: 2^-23)."""
    return float(jnp.finfo(jnp.dtype(dtype)).eps)


def smallest_moving_learning_rate(weight_scale: float, dtype: Any) -> float:
    """The learning rate below which an Adam step (about lr per weight, whatever the gradient's size) no
    longer moves a weight of `weight_scale` stored in `dtype`: half the spacing of values near it."""
    return 0.5 * weight_scale * relative_spacing(dtype)


def precision_problems(*, param_dtype: str, state_dtype: str, learning_rate: float, b1: float, b2: float,
                       weight_scale: float) -> list[str]:
    """Why these master-weight and optimizer-state dtypes cannot train at this learning rate (empty: fine).

    weight_scale: a typical weight's magnitude (the model's initializer_range; pretrained decoders' weights
    are of the same order)."""
    problems = []
    if jnp.dtype(param_dtype) != jnp.float32:
        floor = smallest_moving_learning_rate(weight_scale, param_dtype)
        if learning_rate < floor:
            problems.append(
                f"{param_dtype} master weights cannot absorb learning rate {learning_rate:g}: a weight of "
                f"{weight_scale:g} moves only for steps above {floor:.2g} (half its {param_dtype} spacing), so "
                "updates would be rounded away; keep param_dtype='float32' (compute stays in dtype)")
    if state_dtype not in STATE_DTYPES:
        problems.append(f"optimizer state_dtype must be one of {STATE_DTYPES}, got {state_dtype!r}")
    elif jnp.dtype(state_dtype) != jnp.float32:
        for name, beta in (("b1", b1), ("b2", b2)):
            stored = float(np.asarray(beta, jnp.dtype(state_dtype)).astype(np.float32)) if beta else 0.0
            if stored >= 1.0:
                problems.append(f"{state_dtype} optimizer state rounds {name}={beta:g} to 1.0: its moment would "
                                "never decay; use state_dtype='float32'")
    return problems
