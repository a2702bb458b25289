"""Accuracy of trained checkpoints by task and document length, on held-out synthetic samples.

    python -m memagent_jax.evaluate --checkpoint SFT=runs/sft/export --checkpoint SFT+GRPO=runs/quickstart/export \
        [--lengths 1024,4096,16384,65536] [--long] [--tasks niah_single,vt] [--samples 16] [--out DIR]

A checkpoint is NAME=DIR or a bare DIR (named after its folder). Prints one line per (task, length) cell,
then a markdown table with one accuracy column per checkpoint, and writes results.json, table.md and
accuracy.png to --out (default: <first checkpoint>/eval). See memagent_jax/evaluation.py for the metrics.
"""

from __future__ import annotations

import pathlib

from absl import app, flags

from memagent_jax.agent.memory_agent import CHUNK_BOUNDARIES, load_sizes

from memagent_jax.evaluation import LONG_LENGTHS, EvalConfig, evaluate_checkpoints, format_table, length_label, \
    parse_checkpoints, parse_lengths, write_results

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
_SEED = flags.DEFINE_integer("seed", _DEFAULTS.seed, "Held-out task seed (not training's seed*1000 + 1 or + 2).")


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
    try:  # every input is checked before a model loads; each problem is one line, not a traceback
        named = parse_checkpoints(_CHECKPOINT.value)
        tasks = tuple(t.strip() for t in _TASKS.value.split(",") if t.strip())
        # Agent sizes: flags when given, else what the first checkpoint was trained with, else the defaults.
        first = next(iter(named.values()))
        saved = load_sizes(first) if first.is_dir() else {}
        sizes = {flag.name: (flag.value if flag.present else saved.get(flag.name, flag.value))
                 for flag in (_CHUNK, _MEMORY, _ANSWER, _QUESTION, _BOUNDARY)}
        cfg = EvalConfig(tasks=tasks, lengths=parse_lengths(_LENGTHS.value, _LONG.value),
                         samples_per_cell=_SAMPLES.value, seed=_SEED.value, batch=_BATCH.value, **sizes)
        out = pathlib.Path(_OUT.value) if _OUT.value else next(iter(named.values())) / "eval"
        print(f"evaluating {', '.join(named)} on {', '.join(cfg.tasks)} at "
              f"{', '.join(map(length_label, cfg.lengths))} tokens, {cfg.samples_per_cell} samples each", flush=True)
        results = evaluate_checkpoints(named, cfg, on_progress=_progress)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    paths = write_results(results, cfg, out)
    print("\n" + format_table(results, cfg))
    print(f"wrote {', '.join(p.name for p in paths.values())} to {out}")


if __name__ == "__main__":
    app.run(main)
