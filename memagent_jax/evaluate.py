"""Accuracy of trained checkpoints by task and document length, on held-out synthetic samples or data files.

    python -m memagent_jax.evaluate --checkpoint SFT=runs/sft/export --checkpoint SFT+GRPO=runs/quickstart/export \
        [--lengths 1024,4096,16384,65536] [--long] [--tasks niah_single,vt] [--samples 16] [--out DIR]

    python -m memagent_jax.evaluate --checkpoint DIR --data 'ruler_hqa/ruler_hqa_*.jsonl' [--data FILE ...] \
        [--sampling greedy|paper] [--on_bad_record raise|skip] [--metric auto] [--max_records N] [--out DIR]

With --data (files or globs: MemAgent evaluation JSON/JSONL, MemAgent training JSONL/Parquet, RULER JSONL)
the scores are by file and by length bucket (the record's num_docs or length): sub_em headlines QA (EM and
F1 beside it), string_match_all RULER's synthetic tasks, string_match_part RULER's QA tasks. Every finished
sample is appended to <out>/samples.jsonl; rerunning the same command skips what is done. Agent sizes come
from the flags, else the checkpoint's saved sizes, else the paper's (chunk 5000, memory/answer/question 1024).

`memagent-evaluate` (a console script of setup.py) is the same command.

A checkpoint is NAME=DIR or a bare DIR (named after its folder). Prints one line per (task, length) cell,
then a markdown table with one accuracy column per checkpoint, and writes results.json, table.md and
accuracy.png to --out (default: <first checkpoint>/eval). See memagent_jax/run/evaluation.py for the metrics.
"""

from __future__ import annotations

import pathlib

from absl import app, flags

from memagent_jax import command_line
from memagent_jax.agent.memory_agent import CHUNK_BOUNDARIES, AgentConfig, load_sizes
from memagent_jax.data.words import KEY_SPLITS
from memagent_jax.run.eval_data import METRICS
from memagent_jax.run.eval_files import SAMPLING, FileEvalConfig, Progress, evaluate_files, open_evaluation
from memagent_jax.run.eval_report import format_file_table, summarize, write_file_results
from memagent_jax.run.evaluation import (
    LONG_LENGTHS,
    EvalConfig,
    evaluate_checkpoints,
    format_table,
    length_label,
    parse_checkpoints,
    parse_lengths,
    write_results,
)
from memagent_jax.tokenizer import load_tokenizer

_DEFAULTS = EvalConfig()
_CHECKPOINT = flags.DEFINE_multi_string("checkpoint", [], "Checkpoint folder as DIR or NAME=DIR (repeatable).")
_LENGTHS = flags.DEFINE_string("lengths", ",".join(map(str, _DEFAULTS.lengths)),
                               "Comma-separated document lengths in tokens (e.g. 1024,4K,1M).")
_LONG = flags.DEFINE_bool("long", False, f"Also evaluate {', '.join(map(length_label, LONG_LENGTHS))} tokens.")
_TASKS = flags.DEFINE_string("tasks", ",".join(_DEFAULTS.tasks), "Comma-separated synthetic task names.")
_SAMPLES = flags.DEFINE_integer("samples", _DEFAULTS.samples_per_cell, "Samples per (task, length).")
_OUT = flags.DEFINE_string("out", None, "Output folder (default: <first checkpoint>/eval).")
_CHUNK = flags.DEFINE_integer("chunk_size", _DEFAULTS.chunk_size, "Document tokens per memory update (default: "
                               "the size saved with the checkpoint; likewise the three limits below).")
_MEMORY = flags.DEFINE_integer("max_memory_tokens", _DEFAULTS.max_memory_tokens, "Longest memory.")
_ANSWER = flags.DEFINE_integer("max_answer_tokens", _DEFAULTS.max_answer_tokens, "Longest final answer.")
_QUESTION = flags.DEFINE_integer("max_question_tokens", _DEFAULTS.max_question_tokens, "Longest question.")
_BOUNDARY = flags.DEFINE_enum("chunk_boundary", _DEFAULTS.chunk_boundary, list(CHUNK_BOUNDARIES),
                              "Where chunks end: every chunk_size tokens, or at the last line break that fits.")
_BATCH = flags.DEFINE_integer("batch", _DEFAULTS.batch, "Documents run at once.")
_SEED = flags.DEFINE_integer("seed", _DEFAULTS.seed, "Held-out task seed (not training's seed*1000 + 1 or + 2); "
                              "with --data, the sampling seed.")
_KEYS = flags.DEFINE_enum("key_split", _DEFAULTS.key_split, list(KEY_SPLITS), "Needle keys of the synthetic tasks: "
                          "eval (words never in a training key), train, or all (RULER's whole vocabulary).")
_DATA = flags.DEFINE_multi_string("data", [], "Evaluation file or glob (repeatable): MemAgent evaluation JSON/JSONL, "
                                  "MemAgent training JSONL/Parquet or RULER JSONL, one format per glob.")
_SAMPLING = flags.DEFINE_enum("sampling", "greedy", sorted(SAMPLING), "With --data: greedy (one answer), or paper "
                              "(the reference's validation: temperature 1.0, top-p 0.7, 4 answers, mean score).")
_ON_BAD = flags.DEFINE_enum("on_bad_record", "raise", ["raise", "skip"], "With --data: a malformed record or one "
                            "with an empty context, question or answer stops the run (raise) or is skipped and "
                            "counted in results.json and table.md (skip).")
_METRIC = flags.DEFINE_enum("metric", "auto", ["auto", *METRICS], "With --data: the headline metric; auto: "
                            "string_match_all for RULER synthetic tasks, string_match_part for RULER qa, else sub_em.")
_MAX_RECORDS = flags.DEFINE_integer("max_records", 0, "With --data: evaluate only the first N good records of each "
                                    "file (0: all).")
_SYNTHETIC_ONLY = (_LENGTHS, _LONG, _TASKS, _SAMPLES, _KEYS)


def _progress(name: str, cell: dict) -> None:
    print(f"[{name}] {cell['task']} @ {length_label(cell['length'])}: accuracy {cell['accuracy']:.1%} "
          f"({cell['correct']}/{cell['samples']}), string_match {cell['string_match']:.1%}, "
          f"memory {cell['mean_memory_tokens']:.1f} tok, {cell['seconds']:.1f}s, "
          f"{cell['tokens_per_s']:,.0f} doc tok/s", flush=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _CHECKPOINT.value:
        raise app.UsageError("give at least one --checkpoint DIR or NAME=DIR")
    if _DATA.value:
        clash = [f"--{flag.name}" for flag in _SYNTHETIC_ONLY if flag.present]
        if clash:
            raise SystemExit(f"error: {', '.join(clash)} choose synthetic tasks: not with --data")
        return _main_files()
    try:  # every input is checked before a model loads; each problem is one line, not a traceback
        named = parse_checkpoints(_CHECKPOINT.value)
        tasks = tuple(t.strip() for t in _TASKS.value.split(",") if t.strip())
        # Agent sizes: flags when given, else what the first checkpoint was trained with, else the defaults.
        first = next(iter(named.values()))
        saved = load_sizes(first) if first.is_dir() else {}
        sizes = {flag.name: (flag.value if flag.present else saved.get(flag.name, flag.value))
                 for flag in (_CHUNK, _MEMORY, _ANSWER, _QUESTION, _BOUNDARY)}
        cfg = EvalConfig(tasks=tasks, lengths=parse_lengths(_LENGTHS.value, _LONG.value),
                         samples_per_cell=_SAMPLES.value, seed=_SEED.value, batch=_BATCH.value,
                         key_split=_KEYS.value, **sizes)
        out = pathlib.Path(_OUT.value) if _OUT.value else next(iter(named.values())) / "eval"
        print(f"evaluating {', '.join(named)} on {', '.join(cfg.tasks)} at "
              f"{', '.join(map(length_label, cfg.lengths))} tokens, {cfg.samples_per_cell} samples each", flush=True)
        results = evaluate_checkpoints(named, cfg, on_progress=_progress)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    paths = write_results(results, cfg, out)
    print("\n" + format_table(results, cfg))
    print(f"wrote {', '.join(p.name for p in paths.values())} to {out}")


def _main_files() -> None:
    try:  # files, records, settings and the results store are all checked before a model loads
        named = parse_checkpoints(_CHECKPOINT.value)
        first = next(iter(named.values()))
        saved, paper = load_sizes(first), AgentConfig()
        sizes = {flag.name: (flag.value if flag.present else saved.get(flag.name, getattr(paper, flag.name)))
                 for flag in (_CHUNK, _MEMORY, _ANSWER, _QUESTION, _BOUNDARY)}
        cfg = FileEvalConfig.with_sampling(_SAMPLING.value, sizes, _SEED.value, _BATCH.value)
        out = pathlib.Path(_OUT.value) if _OUT.value else first / "eval_data"
        # Tokenizers load in a moment; the models wait until everything is checked.
        files, store = open_evaluation(_DATA.value, cfg, out, (load_tokenizer(c) for c in named.values()),
                                       on_bad_record=_ON_BAD.value, metric=_METRIC.value,
                                       max_records=_MAX_RECORDS.value)
        records = sum(len(f.keep) for f in files)
        skipped = sum(sum(f.skipped.values()) for f in files)
        print(f"evaluating {', '.join(named)} on {len(files)} file(s), {records} records ({skipped} skipped), "
              f"{_SAMPLING.value}; {len(store)} samples already in {store.path}"
              + (" (dropped an unfinished last line)" if store.dropped_partial else ""), flush=True)
        run = evaluate_files(named, files, cfg, store, Progress())
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    summary = summarize(named, files, store)
    paths = write_file_results(summary, store.settings, run, _SAMPLING.value, out)
    print("\n" + format_file_table(summary, _SAMPLING.value))
    if run["samples"]:
        print(f"this run: {run['samples']} samples, {run['document_tokens']:,} document tokens in "
              f"{run['seconds']:.1f}s = {run['tokens_per_s']:,.0f} tokens/s (compilation included)")
    print(f"wrote {', '.join(p.name for p in paths.values())} to {out}")


def run() -> None:
    """Console-script entry point (memagent-evaluate)."""
    command_line.run_app(main, __name__)


if __name__ == "__main__":
    run()
