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

import pathlib
import shlex
import subprocess
import sys
from typing import Sequence

from absl import flags

from memagent_jax.command_line import parse_command
from memagent_jax.run.config_error import ConfigError
from memagent_jax.run.configuration import load_config_file
from memagent_jax.run.sweep_grid import check_key, expand, parse_axis, point_name, summarize, train_command

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
        check_key(config, key)
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
