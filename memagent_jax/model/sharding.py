"""Device meshes and logical-axis sharding rules.

Parameters carry logical axis names (see layers.logical_param). Rules, kept in the config, map each
logical name to zero or more mesh axes among `data`, `fsdp` and `tensor`. Training and rollout may use
different rules on the same mesh; moving weights between layouts is a `jax.device_put`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axes. FSDP shards the model dimension of every weight; tensor parallelism splits
# heads, the MLP hidden dimension and the vocabulary (Megatron style); batches split over data and fsdp.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
)

Rules = Sequence[tuple[str, Any]]


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one axis may be -1 to take all remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; mesh axes are {MESH_AXES}")
    sizes = {axis: int(shape.get(axis, 1)) for axis in MESH_AXES}
    fill = [axis for axis, size in sizes.items() if size == -1]
    if len(fill) > 1:
        raise ValueError(f"only one mesh axis may be -1, got {fill}")
    if any(size == 0 or size < -1 for size in sizes.values()):
        raise ValueError(f"mesh axis sizes must be positive or -1, got {sizes}")
    known = math.prod(size for size in sizes.values() if size != -1)
    if fill:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot be split into mesh {sizes}")
        sizes[fill[0]] = len(devices) // known
    total = math.prod(sizes.values())
    if total != len(devices):
        raise ValueError(f"mesh {sizes} needs {total} devices but {len(devices)} are available")
    grid = np.asarray(devices, dtype=object).reshape([sizes[a] for a in MESH_AXES])
    return Mesh(grid, MESH_AXES)


def as_mesh_axes(entry: Any) -> tuple[str, ...]:
    """A sharding rule's target or a PartitionSpec entry (None, one axis name, or several) as a tuple of
    mesh axis names: None -> (), "fsdp" -> ("fsdp",), ("data", "fsdp") -> ("data", "fsdp")."""
    if entry is None:
        return ()
    if isinstance(entry, str):
        return (entry,)
    return tuple(entry)


def spec_entry(axes: Sequence[str]) -> Any:
    """The PartitionSpec entry for one dimension split over `axes` (the inverse of as_mesh_axes)."""
    return None if not axes else axes[0] if len(axes) == 1 else tuple(axes)


def validate_rules(rules: Rules) -> dict[str, tuple[str, ...]]:
    """Checks rules name only known mesh axes and each logical name once; returns them as a dict."""
    table: dict[str, tuple[str, ...]] = {}
    for entry in rules:
        if len(entry) != 2:
            raise ValueError(f"a sharding rule must be (logical_name, mesh_axes), got {entry!r}")
        name, target = entry
        if name in table:
            raise ValueError(f"logical axis {name!r} appears twice in the sharding rules")
        axes = as_mesh_axes(target)
        bad = [a for a in axes if a not in MESH_AXES]
        if bad:
            raise ValueError(f"sharding rule for {name!r} names unknown mesh axes {bad}; known: {MESH_AXES}")
        table[name] = axes
    return table


def logical_to_spec(
    logical_axes: Sequence[str | None], shape: Sequence[int], rules: Rules, mesh: Mesh
) -> PartitionSpec:
    """PartitionSpec for one array: each dimension gets its rule's mesh axes.

    A mesh axis is used at most once per array (first dimension wins), size-1 mesh axes are dropped, and
    a dimension that the mesh axes do not divide evenly stays replicated (e.g. 2 KV heads on 4-way tensor).
    """
    table = validate_rules(rules)
    used: set[str] = set()
    spec: list[Any] = []
    for name, dim in zip(logical_axes, shape, strict=True):
        if name is not None and name not in table:
            raise ValueError(f"logical axis {name!r} has no sharding rule; rules cover {sorted(table)}")
        axes = [a for a in table.get(name, ()) if a not in used and mesh.shape[a] > 1]
        if axes and dim % math.prod(mesh.shape[a] for a in axes):
            axes = []
        used.update(axes)
        spec.append(spec_entry(axes))
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules) -> nnx.State:
    """NamedShardings for an (abstract or concrete) model state, from each variable's logical axes."""

    def one(variable: Any) -> Any:
        if not _is_variable(variable):
            return NamedSharding(mesh, PartitionSpec())
        value = variable.get_value()
        axes = variable.get_metadata().get("logical_axes")
        spec = PartitionSpec() if axes is None else logical_to_spec(axes, value.shape, rules, mesh)
        return variable.replace(NamedSharding(mesh, spec))

    return jax.tree.map(one, state, is_leaf=_is_variable)


def create_sharded(
    constructor: Callable[[], nnx.Module], mesh: Mesh, rules: Rules
) -> nnx.Module:
    """Builds a module with each parameter initialised directly in its target sharding.

    The whole model never exists on one device: initialisation is one jit whose outputs are sharded.
    """
    abstract = nnx.eval_shape(constructor)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh, rules)

    def init() -> nnx.State:
        return nnx.state(constructor())

    state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int = 2) -> NamedSharding:
    """Sharding for [batch, length, ...] inputs: batch over the `batch` rule's axes, the rest replicated."""
    axes = [a for a in validate_rules(rules).get("batch", ()) if mesh.shape[a] > 1]
    return NamedSharding(mesh, PartitionSpec(spec_entry(axes), *([None] * (ndim - 1))))


def rules_from_config(entries: Iterable[Any]) -> tuple[tuple[str, Any], ...]:
    """Config files hold rules as lists (ml_collections turns tuples into lists on override); normalise."""
    normalised = []
    for entry in entries:
        name, target = entry
        if isinstance(target, list):
            target = tuple(target)
        normalised.append((name, target))
    validate_rules(normalised)
    return tuple(normalised)
