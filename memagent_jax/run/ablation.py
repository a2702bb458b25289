"""The RL ablation (configs/ablation.py, `memagent-ablation`): four policies from one shared warm-up, evaluated
side by side by length.

Three training runs, each a TrainingRun in a workdir of its own under config.workdir:

- base/: the copy and retrieval warm-ups only (sft and rl skipped); its export is the "no RL" policy;
- rl_only/: GRPO (rl.steps) from base/export, loaded as a pretrained checkpoint is: the "RL only" policy;
  config.ablation.rl_only (optional) overrides config.rl's values for this arm alone (e.g. its tasks, document
  lengths, group size, optimizer.learning_rate: from a base that never wrote a memory, reward comes first on
  short documents);
- sft_rl/: SFT on oracle traces (sft.steps) from base/export, then GRPO (ablation.sft_rl_steps): its
  export_sft is the "SFT" policy, its export "SFT+GRPO".

Each run writes `ablation_arm.json` (its settings: the arm's training config without paths, saving, logging and
evaluation) when it starts, and marks it finished at the end. A finished run is skipped by the next invocation;
one that was stopped resumes from its own checkpoints, as `memagent-train` does; a run begun with other settings
is refused with the keys that differ (a new workdir, or deleting that arm's folder, trains it again). The evaluation
appends each finished (policy, task, length) cell to eval/cells.jsonl and skips those on a rerun.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import os
import pathlib
import time
from typing import Any, Callable, Mapping

import ml_collections

from memagent_jax.run.config_error import ConfigError

__all__ = ["ARMS", "POLICIES", "AblationRun", "arm_config", "arm_settings", "check_ablation_config", "check_goals",
           "format_summary", "plot_summary", "settings_differences", "summarize"]

# The training runs' folders under config.workdir, in the order they run (their steps: _steps).
ARMS = ("base", "rl_only", "sft_rl")
# Policy name -> (arm folder, export folder), in the tables' order.
POLICIES = {"no RL": ("base", "export"), "RL only": ("rl_only", "export"), "SFT": ("sft_rl", "export_sft"),
            "SFT+GRPO": ("sft_rl", "export")}
_DONE = "ablation_arm.json"


def _steps(config: ml_collections.ConfigDict, arm: str) -> dict[str, int]:
    warm = {"copy": int(config.copy.steps), "retrieval": int(config.retrieval.steps)}
    if arm == "base":
        return {**warm, "sft": 0, "rl": 0}
    after = {"copy": 0, "retrieval": 0}
    if arm == "rl_only":
        return {**after, "sft": 0, "rl": int(config.rl.steps)}
    return {**after, "sft": int(config.sft.steps), "rl": int(config.ablation.sft_rl_steps)}


def check_ablation_config(config: ml_collections.ConfigDict) -> None:
    """The ablation section is there and every arm trains something (a ConfigError otherwise)."""
    if "ablation" not in config:
        raise ConfigError("the config has no `ablation` section (sft_rl_steps, long_samples_per_cell): give an "
                          "ablation config such as configs/ablation.py")
    if config.model.checkpoint:
        raise ConfigError("config.model.checkpoint must be empty: the ablation trains its base from scratch "
                          "(base/), and its arms start from the base's export")
    for name in ("sft_rl_steps", "long_samples_per_cell"):
        if int(config.ablation[name]) < 1:
            raise ConfigError(f"config.ablation.{name} must be >= 1, got {config.ablation[name]}")
    overrides = config.ablation.get("rl_only", None) or {}
    unknown = sorted(set(overrides) - set(config.rl) | set(overrides) & {"steps"})
    for key in set(overrides) & {"loss", "optimizer"}:  # sections: some of their values
        if not isinstance(overrides[key], (Mapping, ml_collections.ConfigDict)):
            raise ConfigError(f"config.ablation.rl_only.{key} must be a section of config.rl.{key}'s values")
        unknown += sorted(f"{key}.{name}" for name in set(overrides[key]) - set(config.rl[key]))
    if unknown:
        raise ConfigError(f"config.ablation.rl_only: {unknown} are not values of config.rl the RL-only arm may "
                          "override (its steps are rl.steps)")
    for key in ("copy.steps", "retrieval.steps", "sft.steps", "rl.steps"):
        section, field = key.split(".")
        if int(config[section][field]) < 0:
            raise ConfigError(f"config.{key} must be >= 0")
    if not config.retrieval.steps and not config.copy.steps:
        raise ConfigError("config.copy.steps and config.retrieval.steps are both 0: the base would be an untrained "
                          "model")
    for key in ("sft.steps", "rl.steps"):
        section, field = key.split(".")
        if not config[section][field]:
            raise ConfigError(f"config.{key} must be >= 1: an arm that trains nothing repeats the base")
    if not config.eval.enabled or config.eval.data:
        raise ConfigError("config.eval.enabled must be True and config.eval.data empty: the ablation evaluates on "
                          "held-out synthetic samples of config.eval.tasks by length")


def arm_config(config: ml_collections.ConfigDict, arm: str) -> ml_collections.ConfigDict:
    """The training config of one arm: the ablation config with its workdir, steps and starting point."""
    root = pathlib.Path(config.workdir)
    out = copy.deepcopy(config)
    out.workdir = str(root / arm)
    for phase, steps in _steps(config, arm).items():
        out[phase].steps = steps
    out.eval.enabled = False  # one evaluation of all four policies at the end
    if arm == "rl_only":
        for key, value in (config.ablation.get("rl_only", None) or {}).items():
            if key in ("loss", "optimizer"):
                out.rl[key].update(dict(value))
            else:
                out.rl[key] = value
    if arm != "base":
        base = str(root / "base" / "export")
        out.model.checkpoint = base  # loaded as a pretrained checkpoint, its tokenizer with it
        out.tokenizer.path = base
    return out


# Keys that do not change an arm's weights: where it is written (the arms' paths follow config.workdir), how
# often it saves, what it logs, the evaluation (run once, after the arms) and the ablation section (its values
# reach the arms' rl and steps, which are compared).
_NOT_TRAINING = ("workdir", "model.checkpoint", "tokenizer.path", "checkpoint", "metrics", "budget", "eval",
                 "generate", "ablation")


def arm_settings(config: ml_collections.ConfigDict, arm: str) -> dict[str, Any]:
    """What decides an arm's weights: its training config (arm_config) without paths, saving, logging, the
    evaluation and the phases it skips, as JSON values (tuples as lists): equal to a copy read from a file."""
    values = arm_config(config, arm).to_dict()
    for key in _NOT_TRAINING:
        section, _, name = key.rpartition(".")
        (values[section] if section else values).pop(name, None)
    for phase in ("copy", "retrieval", "sft", "rl"):  # phases the arm skips (an arm's base is checked as an arm)
        if not values[phase]["steps"]:
            del values[phase]
    return json.loads(json.dumps(values, default=repr))


def settings_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested settings dicts (added and removed keys too)."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changed += settings_differences(a, b, f"{prefix}{key}.")
        elif key not in old or key not in new or a != b:
            changed.append(prefix + key)
    return changed


class AblationRun:
    """Runs (or resumes) the three training runs, then the evaluation of the four policies."""

    def __init__(self, config: ml_collections.ConfigDict, log: Callable[[str], None] = print):
        check_ablation_config(config)
        self.config = config
        self.root = pathlib.Path(config.workdir)
        self.log = log

    def _marker(self, arm: str) -> dict[str, Any] | None:
        path = self.root / arm / _DONE
        return json.loads(path.read_text()) if path.is_file() else None

    def _write_marker(self, arm: str, **values: Any) -> None:
        path = self.root / arm / _DONE
        path.parent.mkdir(parents=True, exist_ok=True)
        marker = {"settings": arm_settings(self.config, arm), "steps": _steps(self.config, arm), **values}
        staged = path.with_name(f".{path.name}.tmp")
        staged.write_text(json.dumps(marker, indent=2) + "\n")
        staged.replace(path)  # whole or not at all: a half-written marker would refuse the rerun

    def check_arms_unchanged(self) -> None:
        """Every arm folder begun earlier was begun with this config's settings (arm_settings); a ConfigError
        names the keys that differ. Resuming or keeping such an arm would mix two configs' training."""
        for arm in ARMS:
            marker = self._marker(arm)
            if marker is None:
                continue
            if "settings" in marker:  # markers of earlier versions hold the steps alone
                changed = settings_differences(marker["settings"], arm_settings(self.config, arm))
            else:
                changed = [] if marker.get("steps") == _steps(self.config, arm) else ["steps"]
            if changed:
                shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
                raise ConfigError(f"{self.root / arm} was trained with other settings ({shown} differ): give a new "
                                  f"config.workdir, or delete {self.root / arm} to train that arm again")

    def train_arm(self, arm: str) -> None:
        from memagent_jax.run.training import TrainingRun

        marker = self._marker(arm)
        if marker is not None and marker.get("finished", "settings" not in marker):
            self.log(f"{arm}: done earlier, kept ({self.root / arm})")
            return
        started = time.perf_counter()
        self.log(f"{arm}: training {_steps(self.config, arm)} in {self.root / arm}")
        run = TrainingRun(arm_config(self.config, arm))
        if run.is_main:  # the settings first, so a stopped arm resumes only under the same ones
            self._write_marker(arm, finished=False)
        run.run()  # Preempted propagates: the caller exits 75 and the rerun resumes here
        if run.is_main:
            self._write_marker(arm, finished=True, seconds=time.perf_counter() - started)
        del run
        gc.collect()

    def eval_config(self) -> Any:
        from memagent_jax.run.evaluation import LONG_LENGTHS, EvalConfig

        section, agent = self.config.eval, self.config.agent
        lengths = tuple(section.lengths) + (LONG_LENGTHS if section.long else ())
        try:
            return EvalConfig(tasks=tuple(section.tasks), lengths=tuple(sorted(set(lengths))),
                              samples_per_cell=int(section.samples_per_cell), seed=self.config.seed * 1000 + 7,
                              chunk_size=agent.chunk_size, max_memory_tokens=agent.max_memory_tokens,
                              max_answer_tokens=agent.max_answer_tokens, max_question_tokens=agent.max_question_tokens,
                              chunk_boundary=agent.chunk_boundary, batch=section.batch)
        except ValueError as err:
            raise ConfigError(f"config.eval: {err}") from err

    def samples(self, length: int) -> int:
        from memagent_jax.run.evaluation import LONG_LENGTHS

        return int(self.config.ablation.long_samples_per_cell if length in LONG_LENGTHS
                   else self.config.eval.samples_per_cell)

    def evaluate(self, should_stop: Callable[[], bool] = lambda: False) -> dict[str, pathlib.Path]:
        """Every (policy, task, length) cell not yet in eval/cells.jsonl, then the tables and plots."""
        from memagent_jax.run.evaluation import evaluate_on_engine, length_label, write_results
        from memagent_jax.run.preemption import Preempted

        cfg = self.eval_config()
        out = self.root / "eval"
        out.mkdir(parents=True, exist_ok=True)
        store = out / "cells.jsonl"
        # Cells of other settings (a changed config) are not this evaluation's: kept in the file, not read.
        settings = {k: v for k, v in cfg.to_dict().items() if k not in ("tasks", "lengths", "samples_per_cell")}
        done: dict[tuple[str, str, int], dict] = {}
        if store.is_file():
            for line in store.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
                if row.get("settings") == settings and row["cell"]["samples"] == self.samples(row["cell"]["length"]):
                    done[(row["policy"], row["cell"]["task"], row["cell"]["length"])] = row["cell"]
        folders = {name: self.root / arm / folder for name, (arm, folder) in POLICIES.items()}
        missing = [str(path) for path in folders.values() if not path.is_dir()]
        if missing:
            raise FileNotFoundError(f"no export at {missing[0]}: the arms have not finished")
        engine = None
        with store.open("a") as handle:
            for name, folder in folders.items():
                for task in cfg.tasks:
                    for length in cfg.lengths:
                        if (name, task, length) in done:
                            continue
                        cell_cfg = dataclasses.replace(cfg, tasks=(task,), lengths=(length,),
                                                       samples_per_cell=self.samples(length))
                        result, engine = evaluate_on_engine(folder, cell_cfg, engine)
                        cell = result["cells"][0]
                        done[(name, task, length)] = cell
                        handle.write(json.dumps({"policy": name, "checkpoint": str(folder), "settings": settings,
                                                 "cell": cell}) + "\n")
                        handle.flush()
                        os.fsync(handle.fileno())
                        self.log(f"[{name}] {task} @ {length_label(length)}: {100 * cell['accuracy']:.1f}% "
                                 f"({cell['correct']}/{cell['samples']}), {cell['seconds']:.1f}s")
                        if should_stop():
                            raise Preempted(f"the evaluation, after {name} {task} {length_label(length)} "
                                            "(evaluated cells are kept)", None)
        results = {name: {"checkpoint": str(folder),
                          "cells": [done[(name, task, length)] for task in cfg.tasks for length in cfg.lengths]}
                   for name, folder in folders.items()}
        paths = write_results(results, cfg, out)  # results.json, table.md, accuracy.png (per task)
        summary = summarize(results, cfg)
        summary["samples_per_cell"] = {length_label(n): self.samples(n) for n in cfg.lengths}
        paths["summary_json"] = out / "ablation.json"
        paths["summary_json"].write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        paths["summary"] = out / "ablation.md"
        paths["summary"].write_text(format_summary(summary))
        paths["summary_plot"] = plot_summary(summary, out / "ablation.png")
        return paths

    def run(self) -> str:
        """The three training runs (each skipped when done), then the evaluation; returns ablation.md's text.

        SIGTERM/SIGINT stop it with what is done saved (Preempted); the same call continues."""
        import jax

        from memagent_jax.run.preemption import Preempted, PreemptionGuard

        self.check_arms_unchanged()
        with PreemptionGuard() as guard:  # between and after the runs (each run installs its own)
            for arm in ARMS:
                if guard.requested_here():
                    raise Preempted(f"before the {arm} run", guard.received)
                self.train_arm(arm)
            if jax.process_index() != 0:  # process 0 alone evaluates, as memagent-train's evaluation
                return ""
            paths = self.evaluate(guard.requested_here)
        return paths["summary"].read_text()


# ---- the summary: a row per policy, mean accuracy over the tasks by length -----------------------------------


def summarize(results: Mapping[str, Mapping[str, Any]], cfg: Any) -> dict[str, Any]:
    """Per policy: the mean accuracy over cfg.tasks at each length, each task's mean over lengths, and the
    goals of check_goals."""
    from memagent_jax.run.evaluation import length_label

    policies = {}
    for name, result in results.items():
        cells = {(c["task"], c["length"]): c for c in result["cells"]}
        by_length = {n: sum(cells[(t, n)]["accuracy"] for t in cfg.tasks) / len(cfg.tasks) for n in cfg.lengths}
        by_task = {t: sum(cells[(t, n)]["accuracy"] for n in cfg.lengths) / len(cfg.lengths) for t in cfg.tasks}
        policies[name] = {"by_length": {length_label(n): v for n, v in by_length.items()}, "by_task": by_task,
                          "mean": sum(by_length.values()) / len(by_length)}
    summary = {"tasks": list(cfg.tasks), "lengths": [length_label(n) for n in cfg.lengths],
               "length_tokens": list(cfg.lengths), "policies": policies}
    summary["goals"] = check_goals(summary)
    return summary


def check_goals(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ablation's three goals, each with whether it is met and the numbers behind it: RL only beats no RL
    at every length; RL only keeps >= 90% of its own shortest-length accuracy at the longest length; SFT+GRPO
    beats SFT on at least one task (mean over lengths)."""
    policies, lengths = summary["policies"], summary["lengths"]
    goals = []
    if "RL only" in policies and "no RL" in policies:
        rl, base = policies["RL only"]["by_length"], policies["no RL"]["by_length"]
        behind = [n for n in lengths if rl[n] <= base[n]]
        goals.append({"goal": "RL only beats no RL at every length", "met": not behind,
                      "detail": "behind or equal at " + ", ".join(behind) if behind else "ahead at every length"})
        first, last = rl[lengths[0]], rl[lengths[-1]]
        kept = last / first if first > 0 else 0.0
        goals.append({"goal": f"RL only keeps >= 90% of its {lengths[0]} accuracy at {lengths[-1]}",
                      "met": first > 0 and kept >= 0.9,
                      "detail": f"{100 * first:.1f}% at {lengths[0]}, {100 * last:.1f}% at {lengths[-1]} "
                                f"({100 * kept:.0f}% kept)"})
    if "SFT+GRPO" in policies and "SFT" in policies:
        sft_rl, sft = policies["SFT+GRPO"]["by_task"], policies["SFT"]["by_task"]
        ahead = [t for t in summary["tasks"] if sft_rl[t] > sft[t]]
        goals.append({"goal": "SFT+GRPO beats SFT on at least one task", "met": bool(ahead),
                      "detail": "ahead on " + ", ".join(ahead) if ahead else "ahead on no task"})
    return goals


def format_summary(summary: Mapping[str, Any]) -> str:
    """Markdown: a row per policy (mean accuracy over the tasks by length), a row per policy and task (mean over
    lengths), and the goals."""
    lengths, tasks = summary["lengths"], summary["tasks"]
    out = [f"Accuracy, mean over {len(tasks)} tasks ({', '.join(tasks)}), held-out documents with unseen keys:", "",
           "| policy | " + " | ".join(lengths) + " | mean |", "|---|" + "---:|" * (len(lengths) + 1)]
    for name, policy in summary["policies"].items():
        values = [policy["by_length"][n] for n in lengths] + [policy["mean"]]
        out.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}%" for v in values) + " |")
    out += ["", "Accuracy by task, mean over lengths:", "", "| policy | " + " | ".join(tasks) + " |",
            "|---|" + "---:|" * len(tasks)]
    for name, policy in summary["policies"].items():
        out.append(f"| {name} | " + " | ".join(f"{100 * policy['by_task'][t]:.1f}%" for t in tasks) + " |")
    if "samples_per_cell" in summary:
        counts = ", ".join(f"{n}: {k}" for n, k in summary["samples_per_cell"].items())
        out += ["", f"Documents per (task, length) cell: {counts}."]
    out += ["", "| goal | met | |", "|---|---|---|"]
    for goal in summary["goals"]:
        out.append(f"| {goal['goal']} | {'yes' if goal['met'] else 'no'} | {goal['detail']} |")
    return "\n".join(out) + "\n"


def plot_summary(summary: Mapping[str, Any], path: str | os.PathLike) -> pathlib.Path:
    """The paper's figure: accuracy (mean over the tasks) against document length on a log axis, one line per
    policy."""
    from memagent_jax.run.evaluation import draw_lines

    ticks = list(zip(summary["length_tokens"], summary["lengths"]))
    lines = [(name, [(n, policy["by_length"][label]) for n, label in ticks], i, 0)
             for i, (name, policy) in enumerate(summary["policies"].items())]
    return draw_lines(lines, ticks, "document length (tokens)",
                      f"accuracy (mean over {len(summary['tasks'])} RULER tasks)", path)
