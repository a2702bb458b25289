"""Where the rollout engine's weights live, and how trained weights get there each step.

Training keeps the weights in its own layout (e.g. FSDP over every device of every process). Rollouts use
another (e.g. tensor parallel, no FSDP: every decode step would otherwise gather the weights):

- one process: the engine runs on the training mesh with the rollout rules;
- N processes: every process runs its own engine on its own devices, over its own samples (rollouts need
  no cross-host traffic). The weights reach it in one resharding to a "gather" mesh, [process, *local
  mesh], whose rollout specs never name the process axis: every process ends up holding a whole copy,
  laid out over its devices as the rollout rules say. Those shards are then viewed as arrays on the
  process's local mesh.

The resharding is the run's weight-sync cost, reported as the metric `weight_sync_seconds`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from memagent_jax.model.sharding import MESH_AXES, Rules, make_mesh, state_shardings
from memagent_jax.rl.precision import cast_floating


def _process_devices(process: int) -> list[jax.Device]:
    return sorted((d for d in jax.devices() if d.process_index == process), key=lambda d: d.id)


def local_mesh_shape(mesh_shape: dict[str, int], local_devices: int) -> dict[str, int]:
    """The rollout mesh on one process: the configured tensor axis (it must fit a host), the rest FSDP."""
    tensor = int(mesh_shape.get("tensor", 1))
    if tensor < 1 or local_devices % tensor:
        raise ValueError(f"tensor parallelism {tensor} must divide the {local_devices} devices of each process: "
                         "rollouts run on each process's own devices")
    return {"data": 1, "fsdp": local_devices // tensor, "tensor": tensor}


class RolloutLayout:
    """The engine's shardings and the function that moves trained weights onto them."""

    def __init__(self, abstract_state: Any, train_mesh: Mesh, rules: Rules, dtype: Any = None):
        """dtype: the engine's weight dtype (the model's compute dtype); trained weights are cast to it before
        they move, so float32 masters travel as the bfloat16 copy the engine keeps. None: as they are."""
        self.dtype = dtype
        self.multiprocess = jax.process_count() > 1
        if not self.multiprocess:
            self.mesh = train_mesh
            self.shardings = self._target = state_shardings(abstract_state, train_mesh, rules)
            return
        shape = local_mesh_shape(dict(train_mesh.shape), jax.local_device_count())
        self.mesh = make_mesh(shape, _process_devices(jax.process_index()))
        grids = [np.asarray(_process_devices(p), dtype=object).reshape(self.mesh.devices.shape)
                 for p in range(jax.process_count())]
        gather_mesh = Mesh(np.stack(grids), ("process", *MESH_AXES))
        self._target = state_shardings(abstract_state, gather_mesh, rules)
        self.shardings = state_shardings(abstract_state, self.mesh, rules)

    def place(self, state: Any) -> Any:
        """Trained weights (any layout) -> the engine's layout (and dtype): a fresh copy, never an alias."""
        moved = jax.device_put(self._cast(state), self._target, may_alias=False)
        if not self.multiprocess:
            return moved
        return jax.tree.map(self._local_view, moved, self.shardings)

    def send(self, engine: Any, state: Any) -> None:
        """Trained weights to `engine` for the next rollouts, copied once: one process lets the engine move
        them onto its shardings; N processes gather them here and hand the engine the fresh copy."""
        if not self.multiprocess:
            cast = self._cast(state)
            # A cast made fresh arrays nobody else holds: the engine may take them without another copy.
            engine.update_weights(cast, owned=_all_new(cast, state))
        else:
            engine.update_weights(self.place(state), owned=True)

    def _cast(self, state: Any) -> Any:
        return state if self.dtype is None else cast_floating(state, self.dtype)

    @staticmethod
    def _local_view(value: jax.Array, sharding: NamedSharding) -> jax.Array:
        shards = {shard.device: shard.data for shard in value.addressable_shards}
        arrays = [shards[device] for device in sharding.mesh.devices.flat]
        return jax.make_array_from_single_device_arrays(value.shape, sharding, arrays)


def _all_new(cast: Any, original: Any) -> bool:
    return all(a is not b for a, b in zip(jax.tree.leaves(cast), jax.tree.leaves(original)))
