"""Two processes x two CPU devices read a glob of Parquet files through the training pipeline: every record
is drawn exactly once per epoch, each by one process (Grain index sharding after the global shuffle)."""

import json
import os
import pathlib
import socket
import subprocess
import sys

from test_data_sources import write_train_parquet

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORKER = pathlib.Path(__file__).resolve().parent / "data_shard_worker.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_every_record_is_drawn_exactly_once_per_epoch_across_two_processes(tmp_path):
    write_train_parquet(tmp_path / "train-0.parquet", 13)
    write_train_parquet(tmp_path / "train-1.parquet", 11, start=13)  # 24 records: 6 global batches of 4
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "TPU_"))}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}", JAX_NUM_PROCESSES="2")
    workers = [subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / "train-*.parquet"),
                                 str(tmp_path / f"drawn-{rank}.json")], env={**env, "JAX_PROCESS_ID": str(rank)},
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for rank in range(2)]
    for worker in workers:
        output, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0, output[-3000:]
    results = [json.loads((tmp_path / f"drawn-{rank}.json").read_text()) for rank in range(2)]
    assert [(r["process"], r["devices"]) for r in results] == [(0, 2), (1, 2)]
    first, second = results[0]["drawn"], results[1]["drawn"]
    assert len(first) == len(second) == 12 and not set(first) & set(second)
    assert sorted(first + second) == list(range(24))
