"""Checks a training config without running it: loads it with its overrides, validates every section
(the same checks `memagent_jax.train` runs first) and prints what the run would do; with --devices (the
run's total device count) and --device_gb it also prints the per-device memory budget on that many devices,
computed abstractly (no device of that kind needed), and fails when it cannot fit.

    memagent-check-config --config=configs/qwen2_5_14b_tpu_v5p.py --devices=32 --device_gb=95
    (or python -m memagent_jax.check_config ...)

The launch scripts' dry-run mode runs this (launch/README.md).
"""

from __future__ import annotations

import math

import ml_collections
from absl import flags
from jax.sharding import AbstractMesh

from memagent_jax.run import configuration

_CONFIG = configuration.define_config_flag()
_DEVICES = flags.DEFINE_integer("devices", None, "Total devices of the target run (unset: no memory budget).")
_DEVICE_GB = flags.DEFINE_float("device_gb", None, "Memory of one target device in GB (unset: "
                                "config.budget.device_gb).")


def summary(config: ml_collections.ConfigDict, devices: int | None = None, device_gb: float | None = None) -> str:
    """What the run would do, one line per part; raises ConfigError on any bad section."""
    from memagent_jax.model.sharding import MESH_AXES
    from memagent_jax.run.budget_check import check_run_budget
    from memagent_jax.run.settings import run_settings

    settings = run_settings(config)
    model = configuration.build_model_config(config.model)
    lines = [
        f"model: {config.model.checkpoint or 'random init'}, {model.num_layers} layers, hidden "
        f"{model.hidden_size}, {model.num_params / 1e6:.1f}M parameters",
        f"mesh: {dict(config.mesh)}; workdir: {config.workdir}",
        f"phases: copy {config.copy.steps} steps, retrieval {config.retrieval.steps} steps, sft {config.sft.steps} "
        f"steps, rl {config.rl.steps} steps "
        f"(batch {settings.rl.batch_size} x group {settings.rl.group_size}, mini-batch {settings.rl.mini_batch_size})",
        f"agent: chunk {settings.agent.chunk_size} (ends at {settings.agent.chunk_boundary}s), memory "
        f"{settings.agent.max_memory_tokens} tokens; packed rows "
        f"{settings.shape.row_len} x {settings.shape.rows_per_micro}",
    ]
    if devices is not None:
        shape = configuration.mesh_shape(config.mesh)
        fill = [a for a, n in shape.items() if n == -1]
        known = math.prod(size for size in shape.values() if size != -1)
        if fill:
            if devices % known:
                raise configuration.ConfigError(f"config.mesh {shape} does not divide {devices} devices")
            shape[fill[0]] = devices // known
        elif known != devices:
            raise configuration.ConfigError(f"config.mesh {shape} needs {known} devices, the target has {devices}")
        mesh = AbstractMesh(tuple(shape[a] for a in MESH_AXES), MESH_AXES)
        device_gb = device_gb if device_gb is not None else config.budget.device_gb
        if device_gb is None:
            raise configuration.ConfigError("--devices needs --device_gb (or config.budget.device_gb) to check memory")
        lines.append(f"per-device memory on {devices} devices (mesh {shape}):\n"
                     + check_run_budget(config, settings, mesh, device_bytes=device_gb * 1e9))
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    print(summary(_CONFIG.value, _DEVICES.value, _DEVICE_GB.value))
    print("config OK")


def run() -> None:
    """Console-script entry point (memagent-check-config)."""
    configuration.run_main(main, __name__)


if __name__ == "__main__":
    run()
