"""Kills a short training run (tests/tiny_run_config.py: copy, retrieval, SFT, GRPO, both exports and the
evaluation) with SIGKILL at seeded random moments, restarts it each time, and compares the result with one
uninterrupted run: final parameters and optimizer state of every phase bit for bit, the exported folders
byte for byte, and metrics.jsonl line for line (each (phase, step) exactly once; wall-clock fields such as
`time`, `*_seconds` and `*_per_s` are left out of the comparison, as they differ between any two runs).

    PYTHONPATH=. python scripts/chaos_kill.py --kills 20 --seed 0 --workdir /tmp/chaos

Kill moments, drawn per restart:
* startup: a random offset into the process's start (imports, compiling, restoring);
* step: a random offset (0-1 s) after the restarted run wrote its first new metrics line;
* save: the moment an asynchronous checkpoint save is seen in flight (an Orbax *.orbax-checkpoint-tmp* folder);
* export: the moment an export is seen being written (its hidden staging folder), while exports remain.

With --sigterm it instead sends SIGTERM once in each phase in turn (copy, retrieval, SFT, GRPO, the final
export, the evaluation), checks that each stop exits 75 naming that phase, reruns, and compares the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = ROOT / "tests" / "tiny_run_config.py"
STEPS = {"copy": 4, "retrieval": 4, "sft": 12, "rl": 8}
KINDS = ("startup", "step", "step", "save", "save", "export")  # drawn uniformly: steps and saves twice as often
POLL_S = 0.002


def train_command(workdir: pathlib.Path, tokenizer_dir: pathlib.Path, steps: dict[str, int],
                  evaluate: bool = True) -> list[str]:
    return [sys.executable, "-m", "memagent_jax.train", f"--config={CONFIG}", f"--config.workdir={workdir}",
            f"--config.tokenizer.path={tokenizer_dir}", f"--config.eval.enabled={evaluate}",
            *(f"--config.{phase}.steps={count}" for phase, count in steps.items())]


def train_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "TPU_"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


def start(command: list[str], log: pathlib.Path) -> subprocess.Popen:
    with open(log, "a") as out:
        return subprocess.Popen(command, env=train_env(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def metrics_lines(workdir: pathlib.Path) -> int:
    path = workdir / "metrics" / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def _new(paths: Any, since: float) -> list[pathlib.Path]:
    """Those made since `since` (a killed attempt leaves its own behind until the next save or export)."""
    fresh = []
    for path in paths:
        try:
            if path.stat().st_mtime >= since:
                fresh.append(path)
        except FileNotFoundError:  # committed or renamed meanwhile
            pass
    return fresh


def save_in_flight(workdir: pathlib.Path, since: float) -> str | None:
    for folder in _new((workdir / "checkpoints").glob("*/*.orbax-checkpoint-tmp*"), since):
        return f"save of {folder.parent.name} step {folder.name.split('.')[0]} in flight"
    return None


def export_in_flight(workdir: pathlib.Path, since: float) -> str | None:
    for folder in _new(workdir.glob(".export*"), since):
        return f"writing {folder.name}"
    return None


def state_of(workdir: pathlib.Path) -> str:
    """What the killed run had done: its last metrics line and the newest committed checkpoint."""
    path = workdir / "metrics" / "metrics.jsonl"
    last = "no metrics"
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if lines:
            try:
                record = json.loads(lines[-1])
                phase = next(k for k in record if "/" in k).split("/")[0]
                last = f"{phase} step {record['step']} logged"
            except (json.JSONDecodeError, StopIteration):
                last = "last metrics line cut short"
    committed = [f"{phase} {step}" for phase in STEPS for step in sorted(
        int(p.name) for p in (workdir / "checkpoints" / phase).glob("[0-9]*")
        if p.name.isdigit() and (p / "commit_success.txt").exists())]
    return f"{last}; checkpoints up to {committed[-1] if committed else 'none'}"


@dataclasses.dataclass
class Kill:
    kind: str
    seconds: float  # after the restart
    moment: str  # what was happening


def kill_once(command: list[str], workdir: pathlib.Path, log: pathlib.Path, kind: str,
              rng: random.Random | None, startup_s: float) -> Kill | None:
    """Starts the run and kills it at a moment of `kind` (rng: None for kinds that wait for an event); None
    when it finished first."""
    started, since = time.monotonic(), time.time()
    process = start(command, log)
    lines = metrics_lines(workdir)
    offset = 0.0 if rng is None else rng.uniform(0.2, startup_s) if kind == "startup" else rng.uniform(0.0, 1.0)
    seen_line_at = None
    while process.poll() is None:
        now = time.monotonic()
        moment = None
        if kind == "startup" and now - started >= offset:
            moment = "starting up (imports, compiling, restoring)"
        elif kind == "step":
            if seen_line_at is None and metrics_lines(workdir) > lines:
                seen_line_at = now
            if seen_line_at is not None and now - seen_line_at >= offset:
                moment = "between/inside steps"
        elif kind == "save":
            moment = save_in_flight(workdir, since)
        elif kind == "export":
            moment = export_in_flight(workdir, since)
        if moment is not None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return Kill(kind, now - started, f"{moment} ({state_of(workdir)})")
        if kind != "export":  # an export of the tiny model lasts milliseconds: watch it without pause
            time.sleep(POLL_S)
    if process.returncode != 0:
        raise RuntimeError(f"the training run failed (exit {process.returncode}); see {log}")
    return None


def chaos(workdir: pathlib.Path, tokenizer_dir: pathlib.Path, kills: int, seed: int, startup_s: float,
          steps: dict[str, int] = STEPS, evaluate: bool = True, report=print) -> list[Kill]:
    """Up to `kills` SIGKILLs, each followed by a restart; then the run is let finish."""
    rng = random.Random(seed)
    command, log = train_command(workdir, tokenizer_dir, steps, evaluate), workdir.parent / f"{workdir.name}.log"
    done: list[Kill] = []
    while len(done) < kills:
        kind = rng.choice(KINDS)
        if kind == "export" and (workdir / "export").is_dir():
            kind = "step"  # no export left ahead
        kill = kill_once(command, workdir, log, kind, rng, startup_s)
        if kill is None:
            report(f"the run finished after {len(done)} kills")
            return done
        done.append(kill)
        report(f"kill {len(done):2d}: {kill.kind:7s} at {kill.seconds:5.1f}s: {kill.moment}")
    finished = subprocess.run(command, env=train_env(), cwd=ROOT, stdout=open(log, "a"), stderr=subprocess.STDOUT)
    if finished.returncode != 0:
        raise RuntimeError(f"the final rerun failed (exit {finished.returncode}); see {log}")
    return done


SIGTERM_TARGETS = ("copy", "retrieval", "sft", "rl", "export", "evaluation")
PREEMPTED_EXIT = 75  # memagent_jax.run.preemption.EXIT_CODE (kept literal: this script never imports jax)


def _phase_logged(workdir: pathlib.Path, phase: str, after_lines: int) -> bool:
    path = workdir / "metrics" / "metrics.jsonl"
    if not path.exists():
        return False
    return any(f'"{phase}/' in line for line in path.read_text().splitlines()[after_lines:])


def _last_step_logged(workdir: pathlib.Path, phase: str) -> bool:
    lines = (workdir / "metrics" / "metrics.jsonl").read_text().splitlines()
    return any(f'"{phase}/' in line and json.loads(line).get("step") == STEPS[phase] for line in lines if line.strip())


def _target_reached(workdir: pathlib.Path, target: str, lines: int, since: float) -> bool:
    if target in STEPS:
        return _phase_logged(workdir, target, lines)
    if target == "export":  # the last GRPO step is logged: its save, the export and the evaluation follow
        return _phase_logged(workdir, "rl", lines) and _last_step_logged(workdir, "rl")
    # The evaluation runs after the final export, which each run writes anew.
    exported = workdir / "export" / "config.json"
    return exported.exists() and exported.stat().st_mtime >= since


def sigterm_once(command: list[str], workdir: pathlib.Path, log: pathlib.Path, target: str) -> str:
    """Starts the run, sends SIGTERM once `target` is under way, and returns the run's stop line; raises
    unless it exits 75 with a line naming the target."""
    since = time.time()
    log_start = log.stat().st_size if log.exists() else 0
    process = start(command, log)
    lines = metrics_lines(workdir)
    while process.poll() is None and not _target_reached(workdir, target, lines, since):
        time.sleep(POLL_S if target == "export" else 0.05)
    if process.poll() is not None:
        raise RuntimeError(f"the run ended (exit {process.returncode}) before {target} began; see {log}")
    process.send_signal(signal.SIGTERM)
    process.wait()
    this_attempt = log.read_text()[log_start:].splitlines()
    stop_line = next((line for line in reversed(this_attempt) if "preempted" in line), "")
    # A SIGTERM after the last GRPO step stops at the export's stop point, or at that step if it lands first.
    names = ("the export", f"rl step {STEPS['rl']}") if target == "export" else (target.replace("rl", "rl "),)
    if process.returncode != PREEMPTED_EXIT or not any(name in stop_line + " " for name in names):
        raise RuntimeError(f"SIGTERM in {target}: exit {process.returncode}, line {stop_line!r}; see {log}")
    return stop_line


def sigterm_phases(workdir: pathlib.Path, tokenizer_dir: pathlib.Path, targets: tuple[str, ...] = SIGTERM_TARGETS,
                   report=print) -> None:
    """One SIGTERM in each target phase in turn, a rerun after each, then the run is let finish."""
    command, log = train_command(workdir, tokenizer_dir, STEPS), workdir.parent / f"{workdir.name}.log"
    for target in targets:
        report(f"SIGTERM in {target:10s}: exit 75, {sigterm_once(command, workdir, log, target)}")
    finished = subprocess.run(command, env=train_env(), cwd=ROOT, stdout=open(log, "a"), stderr=subprocess.STDOUT)
    if finished.returncode != 0:
        raise RuntimeError(f"the final rerun failed (exit {finished.returncode}); see {log}")


# -- comparison ------------------------------------------------------------------------------------------


def _wall_clock(key: str) -> bool:
    return key == "time" or key.endswith(("_seconds", "_per_s")) or key.endswith("/mfu")


def metric_records(workdir: pathlib.Path) -> dict[tuple[str, int], dict]:
    """(phase, step) -> its record without wall-clock fields; raises on a (phase, step) seen twice."""
    records: dict[tuple[str, int], dict] = {}
    for line in (workdir / "metrics" / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        phases = {key.split("/")[0] for key in record if "/" in key}
        if len(phases) != 1:
            raise ValueError(f"a metrics line mixes phases {sorted(phases)}: {line[:200]}")
        key = (phases.pop(), record["step"])
        if key in records:
            raise ValueError(f"{key[0]} step {key[1]} appears twice in {workdir}/metrics/metrics.jsonl")
        records[key] = {k: v for k, v in record.items() if not _wall_clock(k)}
    return records


def final_arrays(workdir: pathlib.Path) -> dict[str, Any]:
    """Every array of each phase's last checkpoint (parameters, optimizer state, RNG), as NumPy."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    arrays = {}
    for phase_dir in sorted((workdir / "checkpoints").iterdir()):
        last = max(int(p.name) for p in phase_dir.iterdir() if p.name.isdigit())
        for item in ("state", "rng"):
            tree = ocp.PyTreeCheckpointer().restore(phase_dir / str(last) / item)
            for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
                arrays[f"{phase_dir.name}/{last}/{item}{jax.tree_util.keystr(path)}"] = np.asarray(value)
    return arrays


def compare(reference: pathlib.Path, candidate: pathlib.Path) -> list[str]:
    """What differs between the two runs (empty: bit-identical)."""
    differences = []
    expected, got = metric_records(reference), metric_records(candidate)
    if expected.keys() != got.keys():
        differences.append(f"metrics steps differ: missing {sorted(expected.keys() - got.keys())}, "
                           f"extra {sorted(got.keys() - expected.keys())}")
    differences += [f"metrics of {key} differ" for key in sorted(expected.keys() & got.keys())
                    if expected[key] != got[key]]
    a, b = final_arrays(reference), final_arrays(candidate)
    if a.keys() != b.keys():
        differences.append(f"checkpoint arrays differ in names: {sorted(a.keys() ^ b.keys())[:5]}")
    for name in sorted(a.keys() & b.keys()):
        if a[name].dtype != b[name].dtype or a[name].tobytes() != b[name].tobytes():
            differences.append(f"checkpoint array {name} differs")
    for folder in ("export_sft", "export"):
        files_a = sorted(p.name for p in (reference / folder).iterdir())
        files_b = sorted(p.name for p in (candidate / folder).iterdir()) if (candidate / folder).is_dir() else []
        if files_a != files_b:
            differences.append(f"{folder} holds {files_b}, expected {files_a}")
            continue
        differences += [f"{folder}/{name} differs" for name in files_a
                        if (reference / folder / name).read_bytes() != (candidate / folder / name).read_bytes()]
    leftovers = [p.name for p in candidate.glob(".export*")]
    if leftovers:
        differences.append(f"export leftovers remain: {leftovers}")
    return differences


def reference_run(workdir: pathlib.Path, tokenizer_dir: pathlib.Path, steps: dict[str, int] = STEPS,
                  evaluate: bool = True) -> tuple[float, float]:
    """The uninterrupted run; returns (seconds to its first metrics line, total seconds)."""
    started = time.monotonic()
    process = start(train_command(workdir, tokenizer_dir, steps, evaluate), workdir.parent / f"{workdir.name}.log")
    first = None
    while process.poll() is None:
        if first is None and metrics_lines(workdir):
            first = time.monotonic() - started
        time.sleep(0.05)
    if process.returncode != 0:
        raise RuntimeError(f"the reference run failed (exit {process.returncode})")
    return first or 0.0, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=pathlib.Path, required=True, help="an empty or new folder")
    parser.add_argument("--sigterm", action="store_true", help="one SIGTERM per phase instead of SIGKILLs")
    parser.add_argument("--targets", default=",".join(SIGTERM_TARGETS), help="with --sigterm: which phases")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = args.workdir / "tokenizer"
    if not (tokenizer_dir / "tokenizer.model").exists():
        from memagent_jax.data.task_corpus import task_corpus
        from memagent_jax.tokenizer import train_sentencepiece

        train_sentencepiece(task_corpus(1500), tokenizer_dir, vocab_size=512)
    startup_s, total_s = reference_run(args.workdir / "reference", tokenizer_dir)
    print(f"reference run: {total_s:.0f}s, first step logged after {startup_s:.0f}s; steps {STEPS}")
    started = time.monotonic()
    if args.sigterm:
        targets = tuple(args.targets.split(","))
        sigterm_phases(args.workdir / "stopped", tokenizer_dir, targets)
        print(f"{len(targets)} SIGTERMs and reruns in {time.monotonic() - started:.0f}s")
    else:
        kills = chaos(args.workdir / "killed", tokenizer_dir, args.kills, args.seed, startup_s)
        print(f"{len(kills)} SIGKILLs and restarts in {time.monotonic() - started:.0f}s")
    differences = compare(args.workdir / "reference", args.workdir / ("stopped" if args.sigterm else "killed"))
    print("outcome: bit-identical, every (phase, step) once" if not differences else "\n".join(differences))
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
