"""Write synthetic task samples in MemAgent's training (or evaluation) format.

    python -m memagent_jax.data.export --task niah_multivalue --tokenizer PATH --target_tokens 28000 \\
        --num_samples 1000 --out train.parquet

The same rows are what MemAgent's trainer reads, so this is also the template for your own data:
produce ``Sample``s (or rows of that shape) and write them with ``memagent_jax.data.writers``.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence

from memagent_jax.data.synthetic import SyntheticSource
from memagent_jax.data.tasks import TASKS, make_task
from memagent_jax.data.words import KEY_SPLITS
from memagent_jax.data.writers import write_jsonl, write_parquet

__all__ = ["export", "main"]


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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder or .model file (lengths are in its tokens)")
    parser.add_argument("--target_tokens", type=int, required=True)
    parser.add_argument("--num_samples", type=int, required=True)
    parser.add_argument("--out", required=True, help="output .jsonl or .parquet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--offset", type=int, default=0, help="first sample index (for disjoint splits)")
    parser.add_argument("--format", default="memagent_train", choices=["memagent_train", "memagent_eval"])
    parser.add_argument("--key_split", choices=list(KEY_SPLITS), default=None,
                        help="needle keys: train or eval half of RULER's vocabulary, or all (default: eval for "
                             "--format memagent_eval, else train)")
    args = parser.parse_args(argv)
    n = export(args.task, args.tokenizer, args.target_tokens, args.num_samples, args.out,
               seed=args.seed, offset=args.offset, fmt=args.format, key_split=args.key_split)
    print(f"wrote {n} samples to {args.out}")


if __name__ == "__main__":
    main()
