"""A run's per-device memory budget from its config, checked before anything is allocated.

`TrainingRun` prints the table (params, optimizer state, reference, gradients, rollout weights, KV pages,
activations) and stops with a ConfigError naming the biggest items when the total exceeds what one device
holds: a config that cannot fit fails in seconds instead of after minutes of compilation.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from memagent_jax.rl.optimizer import make_optimizer
from memagent_jax.run import configuration
from memagent_jax.run.memory_budget import DEVICE_MEMORY_BYTES, Budget, check_fits, format_budget, per_device_budget
from memagent_jax.run.settings import RunSettings


def config_budget(config: ml_collections.ConfigDict, settings: RunSettings, mesh: Any,
                  remat_layers: bool | None = None) -> Budget:
    """Bytes per device of the config's GRPO phase (its peak) on `mesh` (a Mesh or an AbstractMesh)."""
    rules = configuration.build_rules(config.sharding)
    rollout = configuration.build_rules(config.rollout_sharding) if config.rollout_sharding.rules else None
    return per_device_budget(
        configuration.build_model_config(config.model), mesh, rules,
        optimizer=make_optimizer(settings.rl_optimizer), kv_pages=settings.engine.num_pages,
        page_size=settings.engine.page_size, rollout_rules=rollout, row_len=settings.shape.row_len,
        rows_per_micro=settings.shape.rows_per_micro, piece_len=settings.rl_update.piece_len,
        reference=settings.rl_update.uses_reference,
        remat_layers=settings.rl_update.remat if remat_layers is None else remat_layers,
        scan_layers=settings.rl_update.scan_layers)


def _host_memory_bytes() -> float:
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def device_memory_bytes(device: jax.Device | None = None) -> float | None:
    """What one device can hold: the runtime's limit where it reports one, else the table of known device
    kinds; CPU devices share the host's memory. None when unknown."""
    device = device or jax.local_devices()[0]
    if device.platform == "cpu":
        return _host_memory_bytes() / max(1, len(jax.local_devices(backend="cpu")))
    try:
        stats = device.memory_stats() or {}
    except Exception:  # some runtimes do not implement memory_stats
        stats = {}
    if stats.get("bytes_limit"):
        return float(stats["bytes_limit"])
    kind = device.device_kind
    for name, size in sorted(DEVICE_MEMORY_BYTES.items(), key=lambda item: -len(item[0])):
        if name.lower() in kind.lower():
            return size
    return None


def check_run_budget(config: ml_collections.ConfigDict, settings: RunSettings, mesh: Any,
                     device_bytes: float | None = None) -> str:
    """The budget table for this run; raises ConfigError when it cannot fit one device.

    config.budget.device_gb, when set, overrides the detected device size; config.budget.enforce=False
    prints without stopping (e.g. when the runtime's allocator is known to do better than the estimate)."""
    section = config.budget
    if device_bytes is None:
        device_bytes = section.device_gb * 1e9 if section.device_gb is not None else device_memory_bytes()
    budget = config_budget(config, settings, mesh)
    if device_bytes is None:
        return "per-device memory (device size unknown, set config.budget.device_gb to check it):\n" + \
            format_budget(budget, float(budget.total or 1))
    table = format_budget(budget, device_bytes)
    if section.enforce:
        try:
            check_fits(budget, device_bytes)
        except ValueError as err:
            raise configuration.ConfigError(
                f"the run does not fit in device memory: {err}. Shard more (config.mesh, config.sharding), "
                f"turn on config.train.remat, shrink config.engine.num_pages or config.train.rows_per_micro; "
                f"per-device budget:\n{table}") from err
    return table
