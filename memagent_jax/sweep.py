"""Sweeps: a grid of config overrides expanded into runs, each in its own folder, with a summary table.

    python -m memagent_jax.sweep --config configs/quickstart.py \
        --sweep rl.optimizer.learning_rate=1e-4,3e-4 rl.group_size=4,8 \
        --root runs/sweep [--set rl.steps=20 ...] [--slurm launch/slurm.sbatch] [--dry-run]

`memagent-sweep` (a console script of setup.py) is the same command.

Every point of the grid (the product of the listed values) is a run of `python -m memagent_jax.train`
with `--config.workdir={root}/{point name}` and the point's overrides. Locally the runs go one after
another; with --slurm each is one `sbatch` job of the given script. `--summarize` (after SLURM jobs end,
or any time) reads every run's final metrics into {root}/summary.md and summary.json; a local sweep
writes them when its last run ends. A run that failed is listed as failed, never dropped.
"""

from __future__ import annotations

import itertools
import json
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Sequence

import ml_collections
from absl import flags

from memagent_jax.command_line import parse_command
from memagent_jax.run.config_error import ConfigError
from memagent_jax.run.configuration import load_config_file

# Final metrics shown in the summary, when a run wrote them.
SUMMARY_KEYS = ("copy/nll", "sft/nll", "rl/reward_mean", "rl/loss", "rl/kl", "rl/entropy", "rl/grad_norm")


def parse_axis(spec: str) -> tuple[str, list[str]]:
    """'rl.group_size=8,16' -> ('rl.group_size', ['8', '16'])."""
    key, sep, values = spec.partition("=")
    items = [v.strip() for v in values.split(",")] if sep else []
    if not key or not sep or not all(items):
        raise ConfigError(f"bad sweep axis {spec!r}: expected key=value1,value2,...")
    return key.strip(), items


def _check_key(config: ml_collections.ConfigDict, key: str) -> None:
    node = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(f"sweep key {key!r}: the config has no field {part!r} there")
        node = node[part]
    if isinstance(node, ml_collections.ConfigDict):
        raise ConfigError(f"sweep key {key!r} is a section, not a field")


def expand(axes: Sequence[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """Every combination of the axes' values, in order (the last axis varies fastest)."""
    keys = [key for key, _ in axes]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"a key is swept twice: {keys}")
    return [dict(zip(keys, values)) for values in itertools.product(*(values for _, values in axes))]


def point_name(point: dict[str, str]) -> str:
    """A folder name for a point: 'rl.group_size=8_rl.optimizer.learning_rate=1e-4', filesystem-safe."""
    name = "_".join(f"{key}={value}" for key, value in point.items())
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", name) or "default"


def train_command(config_path: str, workdir: pathlib.Path, overrides: dict[str, str], python: str) -> list[str]:
    return [python, "-m", "memagent_jax.train", f"--config={config_path}", f"--config.workdir={workdir}",
            *(f"--config.{key}={value}" for key, value in overrides.items())]


def final_metrics(workdir: pathlib.Path) -> dict[str, float]:
    """The last value of every metric a run wrote (metrics/metrics.jsonl), plus its evaluation means."""
    path = workdir / "metrics" / "metrics.jsonl"
    last: dict[str, float] = {}
    if path.is_file():
        with path.open() as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    last.update({k: v for k, v in row.items() if k not in ("step", "time")})
    if (workdir / "eval" / "results.json").is_file():
        from memagent_jax.run.evaluation import read_results

        results, _ = read_results(workdir / "eval")
        for name, result in results.items():
            cells = result.get("cells", [])
            if cells:
                last[f"eval/{name}/mean"] = sum(c["accuracy"] for c in cells) / len(cells)
    return last


def summarize(root: pathlib.Path, points: list[dict[str, str]], status: dict[str, str]) -> str:
    """summary.md / summary.json under root: one row per point, its status and final metrics."""
    rows = []
    for point in points:
        name = point_name(point)
        metrics = final_metrics(root / name)
        rows.append({"name": name, "overrides": point, "status": status.get(name, "done" if metrics else "no metrics"),
                     "metrics": metrics})
    evals = sorted({k for r in rows for k in r["metrics"] if k.startswith("eval/")})
    shown = [k for k in SUMMARY_KEYS if any(k in r["metrics"] for r in rows)] + evals
    keys = list(points[0]) if points else []
    lines = ["| " + " | ".join(keys + ["status"] + shown) + " |", "|" + "---|" * (len(keys) + 1 + len(shown))]
    for row in rows:
        values = [f"{row['metrics'][k]:.4g}" if k in row["metrics"] else "" for k in shown]
        lines.append("| " + " | ".join([row["overrides"][k] for k in keys] + [row["status"]] + values) + " |")
    table = "\n".join(lines)
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.md").write_text(table + "\n")
    (root / "summary.json").write_text(json.dumps(rows, indent=2))
    return table


PROG = "python -m memagent_jax.sweep"


def _define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_string("config", None, "a configs/*.py file", flag_values=flag_values)
    flags.DEFINE_multi_string("sweep", None, "axes of the grid, KEY=V1,V2 (several after one --sweep)",
                              flag_values=flag_values)
    flags.DEFINE_multi_string("set", [], "overrides shared by all runs, KEY=VALUE (several after one --set)",
                              flag_values=flag_values)
    flags.DEFINE_string("root", "runs/sweep", "folder holding one folder per run", flag_values=flag_values)
    flags.DEFINE_string("slurm", None, "submit each run with `sbatch SCRIPT` instead", flag_values=flag_values)
    flags.DEFINE_bool("dry_run", False, "print the commands, run nothing (also --dry-run)", flag_values=flag_values)
    flags.DEFINE_bool("summarize", False, "only (re)write the summary of existing runs", flag_values=flag_values)
    flags.DEFINE_string("python", sys.executable, "interpreter for local runs", flag_values=flag_values)
    flags.mark_flags_as_required(["config", "sweep"], flag_values=flag_values)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (`argv`: the arguments after the program name; default sys.argv's); a bad key or axis
    raises ConfigError before any run starts."""
    args = parse_command(sys.argv[1:] if argv is None else argv, _define_flags, prog=PROG, doc=__doc__,
                         list_flags=("sweep", "set"))
    config = load_config_file(args.config)
    axes = [parse_axis(spec) for spec in args.sweep]
    shared = {}
    for spec in args.set:  # one value each, commas allowed (e.g. tuples)
        key, sep, value = spec.partition("=")
        if not key or not sep:
            raise ConfigError(f"bad --set {spec!r}: expected key=value")
        shared[key.strip()] = value
    for key in [key for key, _ in axes] + list(shared):
        _check_key(config, key)
    points = expand(axes)
    root = pathlib.Path(args.root)
    if args.summarize:
        print(summarize(root, points, {}))
        return 0
    status: dict[str, str] = {}
    for index, point in enumerate(points):
        name = point_name(point)
        overrides = {**shared, **point}
        command = train_command(args.config, root / name, overrides, args.python)
        if args.slurm:  # the batch script takes the config path, then the overrides
            command = ["sbatch", f"--job-name=sweep-{name}"[:120], args.slurm, args.config, *command[4:]]
        print(f"[{index + 1}/{len(points)}] {shlex.join(command)}", flush=True)
        if args.dry_run:
            continue
        result = subprocess.run(command)
        status[name] = ("submitted" if args.slurm else "done") if result.returncode == 0 else \
            f"failed (exit {result.returncode})"
    if args.dry_run:
        return 0
    if not args.slurm:
        print(summarize(root, points, status))
    failed = [name for name, value in status.items() if value.startswith("failed")]
    return 1 if failed else 0


def run() -> None:
    """Console-script entry point (memagent-sweep): a ConfigError is one line, not a traceback."""
    try:
        sys.exit(main())
    except ConfigError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    run()
