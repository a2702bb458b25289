"""Stopping a run cleanly: real signals to this process (the guard), then real SIGTERM and SIGKILL to a
training subprocess that is rerun; the full chaos harness (scripts/chaos_kill.py) runs as a slow test."""

import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from memagent_jax.run.preemption import EXIT_CODE, Preempted, PreemptionGuard

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("chaos_kill", ROOT / "scripts" / "chaos_kill.py")
chaos_kill = importlib.util.module_from_spec(_spec)
sys.modules["chaos_kill"] = chaos_kill  # its dataclass looks its module up there
_spec.loader.exec_module(chaos_kill)


def test_a_signal_sets_the_flag_and_the_previous_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with PreemptionGuard() as guard:
        assert not guard.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal: the handler runs before the next bytecode
        assert guard.requested_here() and guard.received == "SIGTERM"
        assert guard.should_stop()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_the_same_signal_twice_goes_to_the_previous_handler():
    seen = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: seen.append(number))
    try:
        with PreemptionGuard() as guard:
            os.kill(os.getpid(), signal.SIGINT)
            assert seen == [] and guard.received == "SIGINT"
            os.kill(os.getpid(), signal.SIGINT)  # impatient: stop at once
            assert seen == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_message_says_where_and_how_to_continue():
    message = str(Preempted("sft step 7", "SIGTERM"))
    assert message == ("preempted by SIGTERM at sft step 7: checkpoint saved; rerun the same command to continue "
                       f"(exit code {EXIT_CODE})")
    assert EXIT_CODE == 75


def _wait_for_line(workdir: pathlib.Path, process: subprocess.Popen, lines: int) -> None:
    deadline = time.monotonic() + 120
    while chaos_kill.metrics_lines(workdir) < lines:
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before the moment to stop it"
        time.sleep(0.02)


def test_sigterm_mid_sft_saves_and_exits_75_then_a_sigkill_in_a_save_and_the_reruns_finish(tmp_path,
                                                                                           sp_tokenizer_dir):
    workdir, log = tmp_path / "run", tmp_path / "run.log"
    command = chaos_kill.train_command(workdir, sp_tokenizer_dir, {"sft": 5, "rl": 0}, evaluate=False)
    process = chaos_kill.start(command, log)
    _wait_for_line(workdir, process, 2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == EXIT_CODE, log.read_text()[-3000:]
    stopped = [line for line in log.read_text().splitlines() if line.startswith("preempted by SIGTERM at sft step")]
    assert len(stopped) == 1, log.read_text()[-3000:]
    step = int(stopped[0].split("sft step ")[1].split(":")[0])
    assert chaos_kill.state_of(workdir).endswith(f"checkpoints up to sft {step}")  # saved synchronously
    # The rerun is killed (SIGKILL) while a save is in flight, the next one finishes.
    assert chaos_kill.kill_once(command, workdir, log, "save", None, 0.0) is not None
    assert subprocess.run(command, env=chaos_kill.train_env(), cwd=ROOT, stdout=open(log, "a"),
                          stderr=subprocess.STDOUT).returncode == 0, log.read_text()[-3000:]
    assert f"sft: resumed at step {step}" in log.read_text()
    steps = [json.loads(line)["step"] for line in (workdir / "metrics" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]  # each step once, although steps were written and redone after the kill
    assert (workdir / "export" / "config.json").is_file() and not list(workdir.glob(".export*"))


@pytest.mark.slow
def test_twenty_sigkills_at_random_moments_change_nothing(tmp_path, sp_tokenizer_dir):
    """scripts/chaos_kill.py: >= 20 SIGKILLs (random offsets, in async saves, in exports) and restarts give the
    same parameters, optimizer state, exports and metrics as one uninterrupted run, bit for bit."""
    startup, _ = chaos_kill.reference_run(tmp_path / "reference", sp_tokenizer_dir)
    kills = chaos_kill.chaos(tmp_path / "killed", sp_tokenizer_dir, kills=20, seed=0, startup_s=startup)
    assert len(kills) == 20
    assert {kill.kind for kill in kills} >= {"startup", "step", "save", "export"}
    assert chaos_kill.compare(tmp_path / "reference", tmp_path / "killed") == []
