"""Write synthetic task samples in MemAgent's training (or evaluation) format.

    python -m memagent_jax.data.export --task niah_multivalue --tokenizer PATH --target_tokens 28000 \\
        --num_samples 1000 --out train.parquet

`memagent-export-tasks` (a console script of setup.py) is the same command.

The same rows are what MemAgent's trainer reads, so this is also the template for your own data:
produce ``Sample``s (or rows of that shape) and write them with ``memagent_jax.data.writers``.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Sequence

from absl import flags

from memagent_jax.command_line import parse_command
from memagent_jax.data.synthetic import SyntheticSource
from memagent_jax.data.tasks import TASKS, make_task
from memagent_jax.data.words import KEY_SPLITS
from memagent_jax.data.writers import write_jsonl, write_parquet

__all__ = ["export", "main"]

PROG = "python -m memagent_jax.data.export"


def export(
    task: str,
    tokenizer_path: str,
    target_tokens: int,
    num_samples: int,
    out: str | pathlib.Path,
    *,
    seed: int = 0,
    offset: int = 0,
    fmt: str = "memagent_train",
    key_split: str | None = None,
) -> int:
    """Samples ``offset .. offset+num_samples-1`` of ``task`` to ``out`` (.jsonl or .parquet). Needle keys come
    from ``key_split`` (data/words.py); None: "eval" for the evaluation format, else "train"."""
    from memagent_jax.tokenizer import load_tokenizer

    split = key_split or ("eval" if fmt == "memagent_eval" else "train")
    source = SyntheticSource(make_task(task, load_tokenizer(tokenizer_path), target_tokens, seed=seed, key_split=split),
                             num_samples, offset)
    samples = (source[i] for i in range(len(source)))
    suffix = pathlib.Path(out).suffix
    if suffix == ".jsonl":
        return write_jsonl(samples, out, fmt)
    if suffix == ".parquet":
        return write_parquet(samples, out, fmt)
    raise ValueError(f"output must end in .jsonl or .parquet, got {out}")


def _define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_enum("task", None, sorted(TASKS), "synthetic task (data/tasks.py)", flag_values=flag_values)
    flags.DEFINE_string("tokenizer", None, "tokenizer folder or .model file (lengths are in its tokens)",
                        flag_values=flag_values)
    flags.DEFINE_integer("target_tokens", None, "document length in tokens", flag_values=flag_values)
    flags.DEFINE_integer("num_samples", None, "samples to write", flag_values=flag_values)
    flags.DEFINE_string("out", None, "output .jsonl or .parquet", flag_values=flag_values)
    flags.DEFINE_integer("seed", 0, "the task's seed", flag_values=flag_values)
    flags.DEFINE_integer("offset", 0, "first sample index (for disjoint splits)", flag_values=flag_values)
    flags.DEFINE_enum("format", "memagent_train", ["memagent_train", "memagent_eval"], "row format",
                      flag_values=flag_values)
    flags.DEFINE_enum("key_split", None, list(KEY_SPLITS), "needle keys: train or eval half of RULER's vocabulary, "
                      "or all (default: eval for --format memagent_eval, else train)", flag_values=flag_values)
    flags.mark_flags_as_required(["task", "tokenizer", "target_tokens", "num_samples", "out"], flag_values=flag_values)


def main(argv: Sequence[str] | None = None) -> None:
    """The command line (`argv`: the arguments after the program name; default sys.argv's)."""
    args = parse_command(sys.argv[1:] if argv is None else argv, _define_flags, prog=PROG, doc=__doc__)
    n = export(args.task, args.tokenizer, args.target_tokens, args.num_samples, args.out,
               seed=args.seed, offset=args.offset, fmt=args.format, key_split=args.key_split)
    print(f"wrote {n} samples to {args.out}")


if __name__ == "__main__":
    main()
