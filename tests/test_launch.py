"""The launch scripts' dry runs: the config is checked here and the exact commands are printed."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch"
GPU8, TPU = "configs/qwen2_5_7b_gpu8.py", "configs/qwen2_5_14b_tpu_v5p.py"


def _dry_run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(["bash", str(LAUNCH / script), *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=300)


def test_tpu_pod_prints_one_gcloud_ssh_to_all_workers():
    out = _dry_run("tpu_pod.sh", "my-tpu", "us-east5-a", TPU, "--config.rl.steps=5", PROJECT="proj")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "config OK" in out.stdout
    command = [line for line in out.stdout.splitlines() if line.startswith("+ gcloud")]
    assert len(command) == 1
    for part in ("tpu-vm ssh my-tpu", "--zone=us-east5-a", "--worker=all", "--project=proj",
                 "memagent_jax.train", "--config.rl.steps=5"):
        assert part in command[0], part


def test_gpu_hosts_prints_one_process_per_host_with_its_rank():
    out = _dry_run("gpu_hosts.sh", GPU8, "--config.rl.steps=5", HOSTS="gpu-a gpu-b gpu-c", PORT="9999")
    assert out.returncode == 0, out.stderr[-2000:]
    commands = [line for line in out.stdout.splitlines() if line.startswith("+ ssh")]
    assert [c.split()[2] for c in commands] == ["gpu-a", "gpu-b", "gpu-c"]
    for rank, command in enumerate(commands):
        assert "JAX_COORDINATOR_ADDRESS=gpu-a:9999" in command and "JAX_NUM_PROCESSES=3" in command
        assert f"JAX_PROCESS_ID={rank}" in command and "--config.rl.steps=5" in command


def test_slurm_prints_the_srun_command():
    out = _dry_run("slurm.sbatch", GPU8, "--config.rl.steps=5")
    assert out.returncode == 0, out.stderr[-2000:]
    assert any(line.startswith("+ srun --kill-on-bad-exit=1") and "--config.rl.steps=5" in line
               for line in out.stdout.splitlines())


@pytest.mark.parametrize("script, args", [("slurm.sbatch", (GPU8, "--config.rl.nope=1")),
                                          ("tpu_pod.sh", ("t", "z", "configs/missing.py"))])
def test_a_bad_config_stops_the_launch_before_any_command(script, args):
    out = _dry_run(script, *args)
    assert out.returncode != 0
    assert "+ " not in out.stdout


def test_missing_arguments_print_usage():
    out = _dry_run("gpu_hosts.sh", GPU8)  # no HOSTS
    assert out.returncode == 2 and "usage" in out.stderr
