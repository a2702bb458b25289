"""Tables, results.json and the accuracy-by-length plot of `memagent_jax.evaluate --data`.

Everything here is computed from the finished samples in the results store, in file and record order, so
a run stopped and resumed gives the very same table as one that ran straight through. Timings are kept
out of table.md for that reason (results.json has this invocation's throughput).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from memagent_jax.run.eval_data import Bucket, EvalFile, bucket_label
from memagent_jax.run.eval_files import SCORES
from memagent_jax.run.eval_store import ResultStore, sample_key
from memagent_jax.run.evaluation import draw_lines, length_label

__all__ = ["format_file_table", "summarize", "write_file_results"]

HEADLINES = {"sub_em": "sub_em (QA)", "string_match_all": "string_match_all (RULER synthetic)",
             "string_match_part": "string_match_part (RULER QA)"}


def _cell(rows: Sequence[Mapping[str, Any]], expected: int) -> dict[str, Any]:
    n = len(rows)
    cell: dict[str, Any] = {"samples": n, "pending": expected - n, "errors": sum(r["errors"] for r in rows)}
    for name in SCORES:
        cell[name] = sum(r["scores"][name] for r in rows) / n if n else None
    cell["document_tokens"] = sum(r["document_tokens"] for r in rows)
    return cell


def _paths(files: Sequence[EvalFile]) -> list[str]:
    """File names relative to the folder all files share."""
    parents = [str(f.path.resolve().parent) for f in files]
    root = os.path.commonpath(parents) if parents else ""
    return [os.path.relpath(f.path.resolve(), root) for f in files]


def _labels(files: Sequence[EvalFile]) -> list[str]:
    """What the tables call each file: a RULER file its task (its length bucket tells the lengths of one task
    apart), any other file its relative path, as are RULER files whose task and a bucket would collide."""
    paths = _paths(files)
    labels = [f.task or path for f, path in zip(files, paths)]
    shared = [f.task is not None and any(j != i and labels[j] == labels[i] and set(g.buckets) & set(f.buckets)
                                         for j, g in enumerate(files)) for i, f in enumerate(files)]
    return [path if clash else label for label, path, clash in zip(labels, paths, shared)]


def summarize(named: Mapping[str, str | os.PathLike], files: Sequence[EvalFile],
              store: ResultStore) -> dict[str, Any]:
    """Per checkpoint: a cell per (file, bucket) and per (metric, bucket) over all files; per file: its
    format, headline metric, records kept and skipped by reason."""
    labels = _labels(files)
    # Files are listed by path (unique); the cells below name them by label.
    summary: dict[str, Any] = {
        "files": [{"file": path, "label": label, "path": str(f.path), "format": f.fmt, "metric": f.metric,
                   "records": len(f.keep) + sum(f.skipped.values()), "kept": len(f.keep), "skipped": f.skipped}
                  for path, label, f in zip(_paths(files), labels, files)],
        "checkpoints": {}}
    for name, checkpoint in named.items():
        by_file: dict[tuple[str, str, Bucket], list] = {}
        by_length: dict[tuple[str, Bucket], list] = {}
        for label, f in zip(labels, files):
            for position, record in enumerate(f.keep):
                row = store.get(sample_key(name, f.path, record))
                bucket = f.buckets[position]
                for groups, key in ((by_file, (label, f.metric, bucket)), (by_length, (f.metric, bucket))):
                    expected, rows = groups.setdefault(key, [0, []])
                    groups[key][0] += 1
                    if row is not None:
                        rows.append(row)
        summary["checkpoints"][name] = {
            "checkpoint": str(checkpoint),
            "by_file": [{"file": label, "metric": metric, "bucket": list(bucket), **_cell(rows, n)}
                        for (label, metric, bucket), (n, rows) in by_file.items()],
            "by_length": [{"metric": metric, "bucket": list(bucket), **_cell(rows, n)}
                          for (metric, bucket), (n, rows) in sorted(by_length.items())]}
    return summary


def _pct(cell: Mapping[str, Any], score: str) -> str:
    value = cell[score]
    text = "–" if value is None else f"{100 * value:.1f}%"
    return text if not cell["pending"] else f"{text} ({cell['samples']}/{cell['samples'] + cell['pending']})"


def format_file_table(summary: Mapping[str, Any], sampling: str) -> str:
    """Markdown: headline by length bucket and by file (a column per checkpoint), every metric per
    checkpoint, and the skipped records of each file."""
    names = list(summary["checkpoints"])
    cols = " | ".join(names)
    first = summary["checkpoints"][names[0]]
    out = [f"Headline metric of each file: {', '.join(HEADLINES.values())}; {sampling} decoding, scores are "
           f"means over each sample's answers.", "", "## By length", "",
           f"| metric | length | samples | {cols} |", "|---|---:|---:|" + "---:|" * len(names)]
    for i, cell in enumerate(first["by_length"]):
        values = [_pct(summary["checkpoints"][n]["by_length"][i], cell["metric"]) for n in names]
        out.append(f"| {cell['metric']} | {bucket_label(tuple(cell['bucket']))} | "
                   f"{cell['samples'] + cell['pending']} | " + " | ".join(values) + " |")
    out += ["", "## By file", "", f"| file | metric | length | samples | {cols} |",
            "|---|---|---:|---:|" + "---:|" * len(names)]
    for i, cell in enumerate(first["by_file"]):
        values = [_pct(summary["checkpoints"][n]["by_file"][i], cell["metric"]) for n in names]
        out.append(f"| {cell['file']} | {cell['metric']} | {bucket_label(tuple(cell['bucket']))} | "
                   f"{cell['samples'] + cell['pending']} | " + " | ".join(values) + " |")
    for name in names:
        out += ["", f"## All metrics: {name}", "",
                "| file | length | samples | sub_em | EM | F1 | string_match_all | string_match_part | boxed "
                "| errors |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for cell in summary["checkpoints"][name]["by_file"]:
            out.append(f"| {cell['file']} | {bucket_label(tuple(cell['bucket']))} | {cell['samples']} | "
                       + " | ".join(_pct({**cell, "pending": 0}, s) for s in SCORES) + f" | {cell['errors']} |")
    out += ["", "## Skipped records", "",
            "| file | records | evaluated | skipped | reasons |", "|---|---:|---:|---:|---|"]
    for f in summary["files"]:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(f["skipped"].items())) or "–"
        out.append(f"| {f['file']} | {f['records']} | {f['kept']} | {sum(f['skipped'].values())} | {reasons} |")
    return "\n".join(out) + "\n"


def plot_by_length(summary: Mapping[str, Any], path: str | os.PathLike) -> pathlib.Path:
    """Headline score against length bucket, one line per (checkpoint, metric, kind of bucket)."""
    lines, ticks = [], {}
    for i, (name, result) in enumerate(summary["checkpoints"].items()):
        series: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for cell in result["by_length"]:
            kind, value = cell["bucket"]
            if kind != "none" and cell[cell["metric"]] is not None:
                series.setdefault((cell["metric"], kind), []).append((value, cell[cell["metric"]]))
                ticks[value] = str(value) if kind == "num_docs" else length_label(value)
        for j, ((metric, kind), points) in enumerate(sorted(series.items())):
            lines.append((f"{name} · {metric} by {kind}", points, i, j))
    return draw_lines(lines, sorted(ticks.items()), "document length (num_docs or tokens)", "score", path)


def write_file_results(summary: Mapping[str, Any], settings: Mapping[str, Any], run: Mapping[str, Any],
                       sampling: str, out_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
    """results.json (settings, files, cells, this run's throughput), table.md and accuracy.png."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "table": out / "table.md", "plot": out / "accuracy.png"}
    payload = {"settings": dict(settings), "sampling": sampling, **summary, "run": dict(run)}
    paths["json"].write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    paths["table"].write_text(format_file_table(summary, sampling))
    plot_by_length(summary, paths["plot"])
    return paths
