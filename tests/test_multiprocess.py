"""Two processes x two CPU devices (jax.distributed, gloo collectives on localhost) train exactly like one
process with four devices: copy and retrieval warm-ups, SFT steps (stopped and resumed) and a GRPO step,
through the real CLI."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from memagent_jax.run.metrics import read_jsonl

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = pathlib.Path(__file__).resolve().parent / "tiny_run_config.py"
# Global batch sizes that split over 2 processes; one GRPO step after two SFT steps. An untrained policy
# answers nothing right (all advantages 0): an entropy bonus gives the GRPO step a gradient on every
# sampled token, so the update it compares is a real one.
OVERRIDES = ("--config.copy.steps=2", "--config.retrieval.steps=2", "--config.sft.steps=2", "--config.sft.batch_size=4",
             "--config.sft.mini_batch_size=2", "--config.rl.steps=1", "--config.rl.batch_size=4",
             "--config.rl.mini_batch_size=2", "--config.rl.group_size=4",
             "--config.rl.loss.entropy_coef=0.01")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train(workdir: pathlib.Path, tokenizer_dir: pathlib.Path, processes: int, devices: int,
           extra: tuple[str, ...] = ()) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "TPU_"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "memagent_jax.train", f"--config={CONFIG}", f"--config.workdir={workdir}",
               f"--config.tokenizer.path={tokenizer_dir}", *OVERRIDES, *extra]
    port = _free_port()
    workers = []
    for rank in range(processes):
        if processes > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
                       JAX_PROCESS_ID=str(rank))
        log = open(workdir.parent / f"{workdir.name}-{rank}.log", "a")
        workers.append((subprocess.Popen(command, env=dict(env), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT),
                        log))
    for worker, log in workers:
        try:
            worker.wait(timeout=900)
        finally:
            if worker.poll() is None:
                worker.kill()
            log.close()
    for worker, log in workers:
        assert worker.returncode == 0, pathlib.Path(log.name).read_text()[-4000:]


def _metrics(workdir: pathlib.Path) -> dict:
    return {(row["step"], key): value for row in read_jsonl(workdir / "metrics" / "metrics.jsonl")
            for key, value in row.items() if key not in ("step", "time")}


def test_two_processes_train_like_one(tmp_path, sp_tokenizer_dir):
    tokenizer_dir = sp_tokenizer_dir
    _train(tmp_path / "one", tokenizer_dir, processes=1, devices=4)
    # The two-process run stops after its first SFT step, then the same command resumes it from the Orbax
    # checkpoint both processes wrote (weights, optimizer state, RNG, data position).
    _train(tmp_path / "two", tokenizer_dir, processes=2, devices=2,
           extra=("--config.sft.steps=1", "--config.rl.steps=0"))
    _train(tmp_path / "two", tokenizer_dir, processes=2, devices=2)

    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    for key in [(2, "copy/nll"), (2, "retrieval/nll"), (2, "sft/nll"), (2, "sft/grad_norm"), (1, "rl/loss"),
                (1, "rl/reward_mean"), (1, "rl/grad_norm"), (1, "rl/reward_std"), (1, "rl/pg_loss"),
                (1, "rl/sequences"), (1, "rl/update_tokens"), (1, "rl/groups_trained")]:
        assert key in one, sorted(one)[:30]
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    assert two[(1, "rl/weight_sync_seconds")] > 0
    assert one[(1, "rl/grad_norm")] > 0 and one[(1, "rl/update_tokens")] > 0  # a real GRPO update
    # Only process 0 wrote metrics and the export; the exported weights agree.
    from memagent_jax.model.hf import load_hf_checkpoint

    model_one, _ = load_hf_checkpoint(tmp_path / "one" / "export")
    model_two, _ = load_hf_checkpoint(tmp_path / "two" / "export")
    for a, b in zip(jax.tree.leaves(model_one), jax.tree.leaves(model_two)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["copy", "retrieval", "rl", "sft"]
    # Process 0 logs the run (the budget table, the resume); process 1 only warnings and errors.
    main_log, other_log = ((tmp_path / f"two-{rank}.log").read_text() for rank in (0, 1))
    assert "sft: resumed at step 1" in main_log and "per-device memory budget" in main_log
    assert "compilation cache off: a CPU run of 2 processes" in main_log
    assert "resumed" not in other_log and "per-device memory budget" not in other_log


def _start_pair(workdir: pathlib.Path, tokenizer_dir: pathlib.Path, extra: tuple[str, ...]) -> list:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "TPU_"))}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               MEMAGENT_HEARTBEAT_TIMEOUT_S="10", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}",
               JAX_NUM_PROCESSES="2")
    command = [sys.executable, "-m", "memagent_jax.train", f"--config={CONFIG}", f"--config.workdir={workdir}",
               f"--config.tokenizer.path={tokenizer_dir}", *extra]
    return [subprocess.Popen(command, env={**env, "JAX_PROCESS_ID": str(rank)}, cwd=ROOT,
                             stdout=open(workdir.parent / f"{workdir.name}-{rank}.log", "a"), stderr=subprocess.STDOUT)
            for rank in (0, 1)]


def _wait_for_step(workdir: pathlib.Path, step: int) -> None:
    path = workdir / "metrics" / "metrics.jsonl"
    while not (path.exists() and f'"step": {step},' in path.read_text()):
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_and_a_dead_process_stops_the_other(tmp_path, sp_tokenizer_dir):
    """SIGTERM reaches process 1 only: both agree to stop after the same step (exit 75); then process 1 is
    killed (SIGKILL): process 0 stops within the heartbeat timeout (10 s here) instead of hanging in a
    collective; the rerun resumes and each step is logged once."""
    workdir = tmp_path / "run"
    extra = ("--config.sft.steps=6", "--config.sft.batch_size=4", "--config.sft.mini_batch_size=2",
             "--config.rl.steps=0")
    pair = _start_pair(workdir, sp_tokenizer_dir, extra)
    _wait_for_step(workdir, 2)
    pair[1].send_signal(signal.SIGTERM)
    assert [p.wait(timeout=120) for p in pair] == [75, 75]
    logs = [(tmp_path / f"run-{rank}.log").read_text() for rank in (0, 1)]
    stops = [line for log in logs for line in log.splitlines() if line.startswith("preempted by")]
    assert len(stops) == 2 and stops[0].split(" at ")[1] == stops[1].split(" at ")[1], stops

    pair = _start_pair(workdir, sp_tokenizer_dir, extra)
    stopped_at = stops[0].split("sft step ")[1].split(":")[0]
    _wait_for_step(workdir, int(stopped_at) + 1)
    pair[1].kill()
    killed = time.monotonic()
    assert pair[0].wait(timeout=120) != 0
    assert time.monotonic() - killed < 60
    assert "another task died" in (tmp_path / "run-0.log").read_text()

    pair = _start_pair(workdir, sp_tokenizer_dir, extra)
    assert [p.wait(timeout=300) for p in pair] == [0, 0]
    steps = [json.loads(line)["step"] for line in (workdir / "metrics" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
