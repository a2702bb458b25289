"""What the embedded tokenizer makes of words it never saw: pieces per evaluation-split key word and key.

Trains SentencePiece models (numbers as digit pairs, as the quickstart) on the project's tokenizer corpus
(data/task_corpus.py: RULER's word lists, evaluation words left out) and on the small fixture corpus of the
tests (a few task words), at each vocabulary size, and prints for each: pieces per unseen English word and
per unseen adjective-noun key (the evaluation half of RULER's vocabulary), pieces of a whole RULER needle
line with such a key, and the memory-update template's length. Extra tokenizer folders (e.g. an earlier
run's `{workdir}/tokenizer`) are measured beside them.

    python benchmarks/tokenizer_pieces.py                                # vocab 1536 and 2048, seconds
    python benchmarks/tokenizer_pieces.py --vocab 2048 --tokenizer runs/old/tokenizer
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

import numpy as np

from memagent_jax.agent.prompts import AgentPrompts
from memagent_jax.data.niah import needle_line
from memagent_jax.data.task_corpus import task_corpus
from memagent_jax.data.words import ADJECTIVES, NOUNS, key_space, word_split
from memagent_jax.tokenizer import Tokenizer, load_tokenizer, train_sentencepiece

# The test-fixture corpus, compared here with the task corpus.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from fixture_data import tokenizer_corpus  # noqa: E402


def measure(tokenizer: Tokenizer) -> dict[str, float]:
    words = [w for w in ADJECTIVES + NOUNS if word_split(w) == "eval"]
    keys = key_space("eval").keys(np.random.default_rng(0), 2000)
    word_pieces = [len(tokenizer.encode(" " + w)) for w in words]
    key_pieces = [len(tokenizer.encode(" " + k)) for k in keys]
    line_pieces = [len(tokenizer.encode(needle_line("numbers", k, "4217093"))) for k in keys[:200]]
    template = sum(len(p) for p in AgentPrompts.build(tokenizer).memory_update.pieces if isinstance(p, tuple))
    return {"word_mean": float(np.mean(word_pieces)), "word_max": max(word_pieces),
            "key_mean": float(np.mean(key_pieces)), "key_max": max(key_pieces),
            "needle_line": float(np.mean(line_pieces)), "template": template}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[1536, 2048])
    parser.add_argument("--tokenizer", action="append", default=[], help="extra tokenizer folder to measure")
    args = parser.parse_args()
    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for vocab in args.vocab:
            for name, corpus in (("task corpus", lambda: task_corpus(8000)),
                                 ("test fixture corpus", lambda: tokenizer_corpus(8000))):
                out = pathlib.Path(tmp) / f"{name.replace(' ', '_')}_{vocab}"
                train_sentencepiece(corpus(), out, vocab_size=vocab, digit_group=2)
                rows.append((f"{name}, vocab {vocab}", measure(load_tokenizer(out))))
    for folder in args.tokenizer:
        rows.append((folder, measure(load_tokenizer(folder))))
    print("| tokenizer | pieces per unseen word (mean / max) | per unseen key (mean / max) | needle line | "
          "memory-update template |")
    print("|---|---:|---:|---:|---:|")
    for name, m in rows:
        print(f"| {name} | {m['word_mean']:.2f} / {m['word_max']} | {m['key_mean']:.2f} / {m['key_max']} | "
              f"{m['needle_line']:.1f} | {m['template']} |")


if __name__ == "__main__":
    main()
