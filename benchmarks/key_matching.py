"""Can a checkpoint pick a needle by a key it never trained on? Greedy accuracy in the retrieval warm-up's format.

The retrieval warm-up (rl/retrieval_warmup.py) trains a short document, its question, then the evidence notes (a
needle's value, comma-separated values) and the boxed answer. This probe gives an exported checkpoint fresh
documents of RULER's tasks with keys of one split, lets it continue greedily after the question, and scores
the notes it writes before its box: `all` = every answer there, `part` = the mean share of answers there. No
memory workflow, so it isolates the skill that niah_multikey needs at every chunk: matching the question's key
among needles with other keys (a document of 128 tokens holds ~5 needle lines, one of 256 ~11).

    python benchmarks/key_matching.py --checkpoint runs/quickstart_base/export \
        --tasks niah_single,niah_multikey,niah_multivalue,niah_multiquery --lengths 128,256 --samples 64
"""

from __future__ import annotations

import argparse
import math
import pathlib
import re
from typing import Sequence

from memagent_jax.data.synthetic import SyntheticSource
from memagent_jax.data.tasks import make_task
from memagent_jax.data.words import KEY_SPLITS
from memagent_jax.model.greedy import greedy_generate
from memagent_jax.model.hf import load_hf_checkpoint
from memagent_jax.model.transformer import Transformer
from memagent_jax.tokenizer import Tokenizer, load_tokenizer


def score_notes(completion: str, answers: Sequence[str]) -> tuple[float, float]:
    """(1.0 if every answer is in the notes, the share of answers there): the text before the first box."""
    notes = completion.split("\\boxed")[0]
    found = sum(answer in notes for answer in answers)
    return float(found == len(answers)), found / len(answers)


# RULER's needle sentence ends "... is: {value}."; its values here are numbers.
NEEDLE_VALUE = re.compile(r"is: (\d+)\.")


def needle_choice(completion: str, document: str, answers: Sequence[str]) -> tuple[float, float]:
    """For one asked value: (1.0 if the notes are another needle's value, 1.0 if they are the last needle's
    value), so a model that picks a needle by position rather than by key shows; (nan, nan) for several answers."""
    if len(answers) != 1:
        return math.nan, math.nan
    notes = completion.split("\\boxed")[0].strip()
    values = NEEDLE_VALUE.findall(document)
    return float(notes in values and notes != answers[0]), float(bool(values) and notes == values[-1])


def probe(model: Transformer, tokenizer: Tokenizer, task_name: str, length: int, samples: int,
          key_split: str = "eval", seed: int = 7, max_new_tokens: int = 48,
          question_first: bool = False) -> dict[str, float]:
    """The mean `all` and `part` scores over `samples` fresh documents of one task and length (the question
    before the document with `question_first`, as config.retrieval.question_first trains it), and for one asked
    value the shares of notes that are a distractor's value (`distractor`) and the last needle's (`last`)."""
    task = make_task(task_name, tokenizer, length, seed=seed, key_split=key_split)
    source = SyntheticSource(task, samples)
    newline = tokenizer.encode("\n")
    prompts, answers, texts = [], [], []
    for index in range(samples):
        sample = source[index]
        document = [int(t) for piece in sample.document.iter_tokens(tokenizer, length) for t in piece]
        question = tokenizer.encode(sample.question)
        prompts.append(question + newline + document + newline if question_first
                       else document + newline + question + newline)
        answers.append(sample.answers)
        texts.append(tokenizer.decode(document))
    outputs = greedy_generate(model, prompts, max_new_tokens, stop_ids=tuple(tokenizer.stop_ids))
    completions = [tokenizer.decode(output) for output in outputs]
    scores = [score_notes(completion, truth) for completion, truth in zip(completions, answers, strict=True)]
    choices = [needle_choice(completion, text, truth)
               for completion, text, truth in zip(completions, texts, answers, strict=True)]
    return {"all": sum(s[0] for s in scores) / samples, "part": sum(s[1] for s in scores) / samples,
            "distractor": sum(c[0] for c in choices) / samples, "last": sum(c[1] for c in choices) / samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=pathlib.Path, help="an exported HF checkpoint folder")
    parser.add_argument("--tasks", default="niah_single,niah_multikey,niah_multivalue,niah_multiquery")
    parser.add_argument("--lengths", default="128,256", help="document lengths in tokens")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--key_split", default="eval", choices=KEY_SPLITS)
    parser.add_argument("--question_first", action="store_true", help="the question before the document")
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.checkpoint)
    model, _ = load_hf_checkpoint(args.checkpoint)
    print("| task | length | keys | every answer | share of answers | a distractor's value | the last needle's |\n"
          "|---|---:|---|---:|---:|---:|---:|")
    for task_name in args.tasks.split(","):
        for length in (int(n) for n in args.lengths.split(",")):
            result = probe(model, tokenizer, task_name, length, args.samples, args.key_split,
                           question_first=args.question_first)
            shares = " | ".join("–" if math.isnan(result[k]) else f"{result[k]:.0%}" for k in ("distractor", "last"))
            print(f"| {task_name} | {length} | {args.key_split} | {result['all']:.0%} | {result['part']:.0%} | "
                  f"{shares} |", flush=True)


if __name__ == "__main__":
    main()
