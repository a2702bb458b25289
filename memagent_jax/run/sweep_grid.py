"""The grid of a sweep: axes of config overrides, their product as named points, each point's training
command, and the summary table of the runs' final metrics. `memagent-sweep` is its command line."""

from __future__ import annotations

import itertools
import json
import pathlib
import re
from typing import Sequence

import ml_collections

from memagent_jax.run.config_error import ConfigError

__all__ = ["SUMMARY_KEYS", "check_key", "expand", "final_metrics", "parse_axis", "point_name", "summarize",
           "train_command"]


# Final metrics shown in the summary, when a run wrote them.
SUMMARY_KEYS = ("copy/nll", "sft/nll", "rl/reward_mean", "rl/loss", "rl/kl", "rl/entropy", "rl/grad_norm")


def parse_axis(spec: str) -> tuple[str, list[str]]:
    """'rl.group_size=8,16' -> ('rl.group_size', ['8', '16'])."""
    key, sep, values = spec.partition("=")
    items = [v.strip() for v in values.split(",")] if sep else []
    if not key or not sep or not all(items):
        raise ConfigError(f"bad sweep axis {spec!r}: expected key=value1,value2,...")
    return key.strip(), items


def check_key(config: ml_collections.ConfigDict, key: str) -> None:
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


