"""Multi-process JAX from the environment: one code path for 1 and N processes.

`cluster_from_env` reads, in this order:

- explicit variables (any launcher, e.g. launch/gpu_hosts.sh): ``JAX_COORDINATOR_ADDRESS`` (host:port),
  ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` and optionally ``JAX_LOCAL_DEVICE_IDS`` ("0,1");
- SLURM (launch/slurm.sbatch, one task per node): ``SLURM_NTASKS`` > 1, ``SLURM_PROCID``, the first host
  of ``SLURM_JOB_NODELIST`` as coordinator on ``MEMAGENT_COORDINATOR_PORT`` (default 8476);
- a TPU pod slice (launch/tpu_pod.sh): ``TPU_WORKER_HOSTNAMES`` with more than one host; JAX then finds
  the coordinator and the worker's id itself (``jax.distributed.initialize()`` with no arguments);
- otherwise a single process: nothing to initialise.

`initialize` must run before anything touches the devices. On CPU it selects gloo collectives, so two
local processes can train together (the tests do).

A process that dies (killed, out of memory, a lost host) stops the others: the coordination service misses
its heartbeats for ``MEMAGENT_HEARTBEAT_TIMEOUT_S`` seconds (default 45; JAX's own default is 100) and ends
every other process with an error, so no process waits in a collective forever. Rerun the command to resume.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Mapping

import jax

from memagent_jax import compile_cache

DEFAULT_PORT = 8476
DEFAULT_HEARTBEAT_TIMEOUT_S = 45  # well within the minute a dead peer must be noticed in


@dataclasses.dataclass(frozen=True)
class Cluster:
    """How this process joins the run: kind is "single", "explicit", "slurm" or "tpu"."""

    kind: str
    coordinator_address: str | None = None
    num_processes: int = 1
    process_id: int = 0
    local_device_ids: tuple[int, ...] | None = None

    def describe(self) -> str:
        if self.kind == "single":
            return "single process"
        if self.kind == "tpu":
            return "TPU pod slice (coordinator and worker id from the TPU runtime)"
        devices = f", local devices {list(self.local_device_ids)}" if self.local_device_ids is not None else ""
        return (f"{self.kind}: process {self.process_id} of {self.num_processes}, coordinator "
                f"{self.coordinator_address}{devices}")


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError as err:
        raise ValueError(f"environment variable {name}={env[name]!r} is not an integer") from err


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: "gpu[03-05,9],cpu1" -> "gpu03"."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match or not match.group(1):
        raise ValueError(f"cannot read a host from the SLURM node list {nodelist!r}")
    prefix, ranges = match.groups()
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _check(cluster: Cluster, source: str) -> Cluster:
    if cluster.num_processes < 1 or not 0 <= cluster.process_id < cluster.num_processes:
        raise ValueError(f"{source}: need num_processes >= 1 and 0 <= process_id < num_processes, got "
                         f"{cluster.num_processes} and {cluster.process_id}")
    if cluster.kind != "tpu" and cluster.num_processes > 1 and not re.fullmatch(r"[^:\s]+:\d+",
                                                                                cluster.coordinator_address or ""):
        raise ValueError(f"{source}: the coordinator address must be host:port, got {cluster.coordinator_address!r}")
    return cluster


def cluster_from_env(env: Mapping[str, str] | None = None) -> Cluster:
    """This process's place in the run, from environment variables (see the module docstring)."""
    env = os.environ if env is None else env
    explicit = [n for n in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if n in env]
    if explicit:
        missing = sorted({"JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"} - set(explicit))
        if missing:
            raise ValueError(f"multi-process run: {', '.join(explicit)} set but {', '.join(missing)} missing")
        ids = env.get("JAX_LOCAL_DEVICE_IDS")
        try:
            local = tuple(int(i) for i in ids.split(",")) if ids else None
        except ValueError as err:
            raise ValueError(f"JAX_LOCAL_DEVICE_IDS={ids!r} must be comma-separated integers") from err
        return _check(Cluster("explicit", env["JAX_COORDINATOR_ADDRESS"], _int(env, "JAX_NUM_PROCESSES"),
                              _int(env, "JAX_PROCESS_ID"), local), "JAX_* variables")
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
        if not nodelist:
            raise ValueError("SLURM run with several tasks but no SLURM_JOB_NODELIST")
        port = _int(env, "MEMAGENT_COORDINATOR_PORT") if "MEMAGENT_COORDINATOR_PORT" in env else DEFAULT_PORT
        return _check(Cluster("slurm", f"{first_host(nodelist)}:{port}", _int(env, "SLURM_NTASKS"),
                              _int(env, "SLURM_PROCID")), "SLURM variables")
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1:
        return Cluster("tpu", num_processes=len(hosts),
                       process_id=_int(env, "TPU_WORKER_ID") if "TPU_WORKER_ID" in env else 0)
    return Cluster("single")


_initialized: Cluster | None = None


def heartbeat_timeout_s(env: Mapping[str, str] | None = None) -> int:
    """Seconds without a heartbeat after which a process counts as dead (MEMAGENT_HEARTBEAT_TIMEOUT_S)."""
    env = os.environ if env is None else env
    if "MEMAGENT_HEARTBEAT_TIMEOUT_S" not in env:
        return DEFAULT_HEARTBEAT_TIMEOUT_S
    seconds = _int(env, "MEMAGENT_HEARTBEAT_TIMEOUT_S")
    if seconds < 1:
        raise ValueError(f"MEMAGENT_HEARTBEAT_TIMEOUT_S must be at least 1 second, got {seconds}")
    return seconds


def initialize(cluster: Cluster | None = None) -> Cluster:
    """Joins the run described by `cluster` (default: the environment's); idempotent."""
    global _initialized
    cluster = cluster_from_env() if cluster is None else cluster
    if _initialized is not None or cluster.kind == "single":
        _initialized = _initialized or cluster
        return _initialized
    # CPU devices exchange through gloo (the default CPU client has no cross-process collectives); GPU and
    # TPU collectives are unaffected by this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    heartbeat = heartbeat_timeout_s()
    if cluster.kind == "tpu":
        jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat)
    else:
        jax.distributed.initialize(cluster.coordinator_address, cluster.num_processes, cluster.process_id,
                                   list(cluster.local_device_ids) if cluster.local_device_ids is not None else None,
                                   heartbeat_timeout_seconds=heartbeat)
    compile_cache.disable_for_cpu_processes()
    _initialized = cluster
    return cluster
