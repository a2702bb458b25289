"""Held-out evaluation of trained checkpoints: accuracy by task and document length.

For each checkpoint folder (HF layout with its tokenizer) one engine is built and reused for every
(task, length) cell, so its steps compile once per checkpoint. Each cell runs `samples_per_cell` fresh
synthetic samples through the memory agent (greedy by default, so the table is deterministic) and scores
the final answers two ways:

- accuracy: the training reward (`answer_reward`: the box holds the answer, or for answer_mode "all" every
  answer in any order), i.e. what RL optimised;
- string_match: RULER's metric on the extracted answer against `sample.answers` (string_match_all for
  answer_mode "all", as in the default tasks; string_match_part for "any", where answers are alternatives).

Checkpoints of one architecture share that engine (new weights, same compiled steps), so comparing SFT
with SFT+GRPO compiles once. Documents are streamed chunk by chunk (`document.iter_tokens`), so a
1M-token cell never holds a whole document in memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

from memagent_jax.agent.engine_sizing import size_engine
from memagent_jax.agent.memory_agent import CHUNK_BOUNDARIES, AgentConfig, AgentTask, Trajectory
from memagent_jax.agent.prompts import AgentPrompts
from memagent_jax.agent.verify import (
    answer_reward,
    extract_answer,
    extract_last_boxed,
    string_match_all_single,
    string_match_part_single,
)
from memagent_jax.data.document import Sample
from memagent_jax.data.synthetic import MAX_TARGET_TOKENS, SyntheticSource
from memagent_jax.data.tasks import TASKS, make_task
from memagent_jax.data.words import KEY_SPLITS
from memagent_jax.engine.engine import Engine
from memagent_jax.engine.requests import EngineConfig
from memagent_jax.run.checkpoint_agent import open_agent

__all__ = ["EvalConfig", "LONG_LENGTHS", "draw_lines", "evaluate_checkpoint", "evaluate_checkpoints",
           "evaluate_on_engine", "format_table",
           "length_label", "plot_accuracy", "read_results", "score_trajectories", "write_results"]

# Training draws its samples with seeds config.seed * 1000 + 1 (SFT) and + 2 (RL); see training.phase_data.
TRAINING_SEED_OFFSETS = (1, 2)
LONG_LENGTHS = (262_144, 1_048_576)  # what --long adds: far beyond the lengths seen in training


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    tasks: tuple[str, ...] = ("niah_single", "vt")
    lengths: tuple[int, ...] = (1024, 4096, 16384, 65536)
    samples_per_cell: int = 16  # samples per (task, length)
    # Task-generator seed; 7 = training seed 0 * 1000 + 7, never one of training's generator seeds.
    seed: int = 7
    # Needle keys from the evaluation half of the vocabulary (data/words.py): never a training key.
    key_split: str = "eval"
    # Agent sizes: the quickstart config's, i.e. what the project's models are trained with.
    chunk_size: int = 256
    max_memory_tokens: int = 96
    max_answer_tokens: int = 48
    max_question_tokens: int = 48
    chunk_boundary: str = "line"  # "token": cut every chunk_size tokens; "line": end chunks at line breaks
    temperature: float = 0.0  # greedy: the same checkpoint always gives the same table
    batch: int = 8  # documents run at once through the engine (its decode slots)
    engine: EngineConfig | None = None  # None: sized from the agent sizes and `batch` (engine_config())

    def __post_init__(self) -> None:
        # Lists from JSON or the command line become tuples, so configs stay hashable and comparable.
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "lengths", tuple(int(n) for n in self.lengths))
        errors = []
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            errors.append(f"unknown task(s) {unknown}; known: {sorted(TASKS)}")
        if not self.tasks or not self.lengths:
            errors.append("tasks and lengths must not be empty")
        bad = [n for n in self.lengths if not 0 < n <= MAX_TARGET_TOKENS]
        if bad:
            errors.append(f"lengths must be in (0, {MAX_TARGET_TOKENS}], got {bad}")
        for name in ("samples_per_cell", "chunk_size", "max_memory_tokens", "max_answer_tokens",
                     "max_question_tokens", "batch"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.key_split not in KEY_SPLITS:
            errors.append(f"key_split must be one of {KEY_SPLITS}, got {self.key_split!r}")
        if self.chunk_boundary not in CHUNK_BOUNDARIES:
            errors.append(f"chunk_boundary must be one of {CHUNK_BOUNDARIES}, got {self.chunk_boundary!r}")
        if self.seed < 0 or self.seed % 1000 in TRAINING_SEED_OFFSETS:
            # Such a seed is some training run's generator seed: its samples would not be held out.
            errors.append(f"seed {self.seed} is not a held-out seed (training uses seed*1000 + 1 and + 2); "
                          f"use e.g. training seed * 1000 + 7")
        if errors:
            raise ValueError("invalid EvalConfig: " + "; ".join(errors))

    def agent_config(self) -> AgentConfig:
        return AgentConfig(chunk_size=self.chunk_size, max_memory_tokens=self.max_memory_tokens,
                           max_answer_tokens=self.max_answer_tokens, max_question_tokens=self.max_question_tokens,
                           temperature=self.temperature, seed=self.seed, chunk_boundary=self.chunk_boundary)

    def engine_config(self, prompts: AgentPrompts, page_size: int = 16) -> EngineConfig:
        """`engine` if given, else `size_engine` for the agent sizes and `batch`."""
        if self.engine is not None:
            return self.engine
        return size_engine(prompts, self.agent_config(), self.batch, page_size)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists: what JSON holds

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "EvalConfig":
        values = dict(values)
        if values.get("engine") is not None:
            values["engine"] = EngineConfig(**values["engine"])
        return cls(**values)


def length_label(n: int) -> str:
    """1024 -> '1K', 1048576 -> '1M', 1500 -> '1500': short labels for tables and plot ticks."""
    for size, suffix in ((2**20, "M"), (2**10, "K")):
        if n >= size and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


# ---- scoring ------------------------------------------------------------------------------------


def score_trajectories(trajectories: Sequence[Trajectory], samples: Sequence[Sample],
                       stop_ids: Sequence[int] = ()) -> dict[str, Any]:
    """Per-sample scores of finished trajectories (one per sample, same order) and their cell totals.

    A trajectory that failed in the engine scores 0 on both metrics and is counted in `errors`."""
    if len(trajectories) != len(samples):
        raise ValueError(f"{len(trajectories)} trajectories for {len(samples)} samples")
    stops = set(stop_ids)
    rewards, matches, memory_lengths = [], [], []
    boxed = errors = 0
    for trajectory, sample in zip(trajectories, samples):
        if trajectory.error is not None:
            errors += 1
            rewards.append(0.0)
            matches.append(0.0)
        else:
            rewards.append(answer_reward(trajectory.answer, sample.answers, sample.answer_mode))
            match = string_match_all_single if sample.answer_mode == "all" else string_match_part_single
            matches.append(match(extract_answer(trajectory.answer), list(sample.answers)))
            boxed += extract_last_boxed(trajectory.answer) is not None
        memory_lengths += [sum(t not in stops for t in c.response) for c in trajectory.conversations
                           if c.kind == "memory"]
    n = len(samples)
    return {
        "samples": n,
        "correct": int(sum(rewards)),
        "errors": errors,
        "boxed": boxed,  # answers with a box at all: tells "wrong" from "did not follow the format"
        "accuracy": sum(rewards) / n if n else 0.0,
        "string_match": sum(matches) / n if n else 0.0,
        "mean_memory_tokens": sum(memory_lengths) / len(memory_lengths) if memory_lengths else 0.0,
        "mean_chunks": sum(t.num_chunks for t in trajectories) / n if n else 0.0,
    }


def _merge_scores(parts: list[dict[str, Any]], chunk_counts: list[int]) -> dict[str, Any]:
    """Cell totals from per-batch scores (weighted by samples, memory lengths by memory updates)."""
    n = sum(p["samples"] for p in parts)
    updates = sum(chunk_counts)
    return {
        "samples": n,
        "correct": sum(p["correct"] for p in parts),
        "errors": sum(p["errors"] for p in parts),
        "boxed": sum(p["boxed"] for p in parts),
        "accuracy": sum(p["accuracy"] * p["samples"] for p in parts) / n,
        "string_match": sum(p["string_match"] * p["samples"] for p in parts) / n,
        "mean_memory_tokens": (sum(p["mean_memory_tokens"] * c for p, c in zip(parts, chunk_counts)) / updates
                               if updates else 0.0),
        "mean_chunks": updates / n,
    }


# ---- running ------------------------------------------------------------------------------------


class _Counted:
    """Streams a document's token chunks and counts them (the real length, not the generator's target)."""

    def __init__(self) -> None:
        self.tokens = 0

    def wrap(self, chunks: Iterator[list[int]]) -> Iterator[list[int]]:
        for chunk in chunks:
            self.tokens += len(chunk)
            yield chunk


def evaluate_checkpoint(checkpoint_dir: str | os.PathLike, cfg: EvalConfig,
                        on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Runs every (task, length) cell of `cfg` on one checkpoint; `on_progress(cell)` after each cell.

    Returns {"checkpoint": path, "engine": engine settings, "compilations": engine step compilations,
    "cells": [cell, ...]} with cells in (task, length) order; a cell holds task, length, the scores of
    `score_trajectories`, document/generated token counts, seconds and tokens_per_s (document tokens read
    per second, compilation included: the first cells of a fresh engine pay for its compilations)."""
    return _evaluate(checkpoint_dir, cfg, on_progress)[0]


def evaluate_checkpoints(named: Mapping[str, str | os.PathLike], cfg: EvalConfig,
                         on_progress: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, dict]:
    """`evaluate_checkpoint` for each name -> folder (in order); `on_progress(name, cell)` after each cell.

    Every folder is checked before the first model loads, so a typo fails at once, not after hours.
    Checkpoints of the same architecture (e.g. SFT and SFT+GRPO) share one engine: the next one's weights
    replace the last one's, so the engine's steps compile once for the whole comparison."""
    missing = [str(path) for path in named.values() if not pathlib.Path(path).is_dir()]
    if missing:
        raise FileNotFoundError(f"checkpoint folder {missing[0]} does not exist")
    results, engine = {}, None
    for name, path in named.items():
        report = None if on_progress is None else (lambda cell, name=name: on_progress(name, cell))
        results[name], engine = _evaluate(path, cfg, report, engine)
    return results


def evaluate_on_engine(checkpoint_dir: str | os.PathLike, cfg: EvalConfig, engine: Engine | None = None,
                       on_progress: Callable[[dict[str, Any]], None] | None = None) -> tuple[dict[str, Any], Engine]:
    """`evaluate_checkpoint` on `engine` when it fits the checkpoint's architecture (its weights replaced, its
    steps already compiled); returns the result and the engine, for the next call."""
    return _evaluate(checkpoint_dir, cfg, on_progress, engine)


def _evaluate(checkpoint_dir: str | os.PathLike, cfg: EvalConfig,
              on_progress: Callable[[dict[str, Any]], None] | None,
              previous: Engine | None = None) -> tuple[dict[str, Any], Engine]:
    checkpoint = pathlib.Path(checkpoint_dir)
    agent = open_agent(checkpoint, cfg.agent_config(), cfg.engine_config, previous)
    engine, tokenizer = agent.engine, agent.tokenizer
    compiled_before = sum(engine.stats.compilations.values())
    stop_ids = tuple(tokenizer.stop_ids)

    cells = []
    for task_name in cfg.tasks:
        for length in cfg.lengths:
            task = make_task(task_name, tokenizer, length, seed=cfg.seed, key_split=cfg.key_split)
            source = SyntheticSource(task, cfg.samples_per_cell)
            counter = _Counted()
            parts, chunk_counts = [], []
            generated = 0
            started = time.perf_counter()
            for first in range(0, len(source), cfg.batch):
                samples = [source[i] for i in range(first, min(first + cfg.batch, len(source)))]
                tasks = [AgentTask((task_name, length, s.index), s.question,
                                   # Default arguments bind this sample's document and this cell's counter
                                   # (not the loops' last).
                                   lambda doc=s.document, counter=counter: counter.wrap(
                                       doc.iter_tokens(tokenizer, cfg.chunk_size)),
                                   answers=tuple(s.answers))
                         for s in samples]
                trajectories = agent.run(tasks, group_size=1, keep_prompts=False)
                parts.append(score_trajectories(trajectories, samples, stop_ids))
                chunk_counts.append(sum(t.num_chunks for t in trajectories))
                generated += sum(len(c.response) for t in trajectories for c in t.conversations)
            seconds = time.perf_counter() - started
            cell = {"task": task_name, "length": length, **_merge_scores(parts, chunk_counts),
                    "document_tokens": counter.tokens, "generated_tokens": generated, "seconds": seconds,
                    "tokens_per_s": counter.tokens / seconds if seconds > 0 else 0.0}
            cells.append(cell)
            if on_progress is not None:
                on_progress(cell)
    compilations = sum(engine.stats.compilations.values()) - compiled_before
    return ({"checkpoint": str(checkpoint), "engine": dataclasses.asdict(engine.config), "compilations": compilations,
             "cells": cells}, engine)


# ---- reporting ----------------------------------------------------------------------------------


def _cell(results: Mapping[str, Any], task: str, length: int) -> Mapping[str, Any] | None:
    for cell in results["cells"]:
        if cell["task"] == task and cell["length"] == length:
            return cell
    return None


def format_table(results_by_name: Mapping[str, Mapping[str, Any]], cfg: EvalConfig) -> str:
    """Markdown: one row per (task, length) plus a mean row per task, one accuracy column per checkpoint."""
    names = list(results_by_name)
    lines = ["| task | length | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]

    def pct(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:.1f}%"

    for task in cfg.tasks:
        per_name: dict[str, list[float]] = {name: [] for name in names}
        for length in cfg.lengths:
            row = []
            for name in names:
                cell = _cell(results_by_name[name], task, length)
                if cell is not None:
                    per_name[name].append(cell["accuracy"])
                row.append(pct(None if cell is None else cell["accuracy"]))
            lines.append(f"| {task} | {length_label(length)} | " + " | ".join(row) + " |")
        # Cells hold equal sample counts, so the mean of cell accuracies is the task's sample accuracy.
        means = [pct(sum(v) / len(v) if v else None) for v in per_name.values()]
        lines.append(f"| **{task}** | **mean** | " + " | ".join(f"**{m}**" for m in means) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy(results_by_name: Mapping[str, Mapping[str, Any]], cfg: EvalConfig,
                  path: str | os.PathLike) -> pathlib.Path:
    """PNG of accuracy against document length (log2 axis), one line per (checkpoint, task)."""
    lines = []
    for i, (name, results) in enumerate(results_by_name.items()):
        for j, task in enumerate(cfg.tasks):
            points = [(n, c["accuracy"]) for n in cfg.lengths if (c := _cell(results, task, n)) is not None]
            lines.append((f"{name} · {task}", points, i, j))
    return draw_lines(lines, [(n, length_label(n)) for n in cfg.lengths], "document length (tokens)",
                      "accuracy (boxed reward)", path)


def draw_lines(lines: Sequence[tuple[str, Sequence[tuple[float, float]], int, int]],
               ticks: Sequence[tuple[float, str]], xlabel: str, ylabel: str,
               path: str | os.PathLike) -> pathlib.Path:
    """PNG of (label, points, colour index, style index) lines of scores in [0, 1] on a log2 x axis."""
    # Imported here, and without pyplot: no global figure state, no GUI backend, Agg renders the file.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    styles = ["-", "--", ":", "-."]
    for label, points, colour, style in lines:
        if points:
            xs, ys = zip(*points)
            # Colour per checkpoint, line style per task: comparisons across checkpoints stand out.
            ax.plot(xs, ys, styles[style % len(styles)], marker="o", color=f"C{colour}", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks([x for x, _ in ticks], [t for _, t in ticks])
    ax.minorticks_off()
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=120)
    return path


def write_results(results_by_name: Mapping[str, Mapping[str, Any]], cfg: EvalConfig,
                  out_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
    """results.json (config and every cell), table.md and accuracy.png in `out_dir`."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "table": out / "table.md", "plot": out / "accuracy.png"}
    payload = {"config": cfg.to_dict(), "checkpoints": dict(results_by_name)}
    paths["json"].write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    paths["table"].write_text(format_table(results_by_name, cfg))
    plot_accuracy(results_by_name, cfg, paths["plot"])
    return paths


def read_results(out_dir: str | os.PathLike) -> tuple[dict[str, dict], EvalConfig]:
    """The results and config that write_results stored (e.g. to redraw or merge tables later)."""
    payload = json.loads((pathlib.Path(out_dir) / "results.json").read_text())
    return payload["checkpoints"], EvalConfig.from_dict(payload["config"])


def parse_checkpoints(values: list[str]) -> dict[str, pathlib.Path]:
    """NAME=DIR or DIR -> {name: folder}; an existing folder whose path contains '=' counts as a bare DIR."""
    named: dict[str, pathlib.Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or pathlib.Path(value).is_dir():
            path = value
            name = pathlib.Path(value).resolve().name
        if not name or not path:
            raise ValueError(f"--checkpoint {value!r}: expected DIR or NAME=DIR")
        if name in named:
            raise ValueError(f"two checkpoints are named {name!r}: give them names with NAME=DIR")
        named[name] = pathlib.Path(path)
    missing = [str(p) for p in named.values() if not p.is_dir()]
    if missing:
        raise FileNotFoundError(f"checkpoint folder {missing[0]} does not exist")
    return named


def parse_lengths(text: str, long: bool = False) -> tuple[int, ...]:
    """'1024,4K,1M' -> (1024, 4096, 1048576), sorted and without repeats; `long` adds LONG_LENGTHS."""
    lengths = set(LONG_LENGTHS if long else ())
    for item in filter(None, (part.strip() for part in text.split(","))):
        scale = {"K": 2**10, "M": 2**20}.get(item[-1].upper(), 1)
        digits = item[:-1] if scale > 1 else item
        if not digits.isdigit() or int(digits) == 0:
            raise ValueError(f"--lengths: {item!r} is not a positive number of tokens (e.g. 1024 or 4K)")
        lengths.add(int(digits) * scale)
    if not lengths:
        raise ValueError("--lengths: no lengths given")
    return tuple(sorted(lengths))
