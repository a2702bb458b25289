"""Small agreements between the processes of a run (all no-ops with one process).

Every process must call these at the same point: each is a collective.
"""

from __future__ import annotations

import zlib
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

# Metrics that count something per process: the run's value is the sum over processes. Rates of work done
# (tokens per second) add up too; durations take the slowest process; everything else (rewards, losses
# computed on global arrays) is averaged.
_SUMMED = ("groups_trained", "groups_dropped_uniform", "dropped_error_conversations",
           "filtered_overlong_trajectories", "prefill_tokens", "sequences", "update_tokens")
_SLOWEST = ("_seconds",)


def is_multiprocess() -> bool:
    return jax.process_count() > 1


def gather(values: np.ndarray) -> np.ndarray:
    """[process_count, *values.shape]: every process's values, on every process."""
    values = np.asarray(values)
    if not is_multiprocess():
        return values[None]
    return np.asarray(multihost_utils.process_allgather(values))


def agree_max(value: int) -> int:
    """The largest of the processes' values (e.g. how many micro-batches every process must run)."""
    return int(gather(np.asarray(value, np.int64)).max())


def agree_any(flag: bool) -> bool:
    return bool(gather(np.asarray(flag, np.int32)).max())


def reduce_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """One dict for the whole run from every process's own (see _SUMMED/_SLOWEST)."""
    if not is_multiprocess():
        return metrics
    keys = sorted(metrics)
    # Same names everywhere first (a gather of arrays of different lengths would not line up).
    names = gather(np.asarray([len(keys), zlib.crc32("\n".join(keys).encode())], np.int64))
    if not (names == names[0]).all():
        raise RuntimeError("processes report different metric names; they must run the same steps")
    return combine(keys, gather(np.asarray([float(metrics[k]) for k in keys], np.float64)))


def combine(keys: list[str], table: np.ndarray) -> dict[str, float]:
    """Per-process values [process, key] -> one value per key (see _SUMMED/_SLOWEST)."""
    out = {}
    for i, key in enumerate(keys):
        column = table[:, i]
        if key in _SUMMED or key.endswith("_per_s"):
            out[key] = float(column.sum())
        elif key.endswith(_SLOWEST):
            out[key] = float(column.max())
        else:
            out[key] = float(column.mean())
    return out


def host_copy(tree: Any) -> Any:
    """The whole value of every (possibly multi-process sharded) array, as NumPy on every process."""
    if not is_multiprocess():
        return jax.device_get(tree)
    return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree)


def barrier(name: str) -> None:
    if is_multiprocess():
        multihost_utils.sync_global_devices(name)
