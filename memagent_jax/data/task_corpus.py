"""Tokenizer training text that covers everything a synthetic run feeds its model.

A tokenizer trained on this text gives every key word, template word and memory phrase of the synthetic
tasks a piece of its own, so a needle key costs ~3 tokens instead of ~10 letters. That matters for tiny
models trained from scratch: every token of a key or a value has to be copied by attention, chunk to memory
to memory to answer, and the memory agent's prompts get shorter (cheaper steps).
"""

from __future__ import annotations

import random
from typing import Iterator

from memagent_jax.agent.prompts import EMPTY_MEMORY, FINAL_ANSWER_TEMPLATE, INITIAL_MEMORY, MEMORY_UPDATE_TEMPLATE
from memagent_jax.data.corpus import FILLER
from memagent_jax.data.words import ADJECTIVES, NOUNS, VALUE_WORDS

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _template_lines() -> list[str]:
    text = MEMORY_UPDATE_TEMPLATE + "\n" + FINAL_ANSWER_TEMPLATE
    return [line for line in text.replace("{{}}", "{}").splitlines() if line.strip()]


def _key(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def _variable(rng: random.Random) -> str:
    return "".join(rng.choice(_LETTERS) for _ in range(5))


def _line(kind: int, rng: random.Random) -> str:
    key, number = _key(rng), str(rng.randrange(1_000_000, 10_000_000))
    word = rng.choice(VALUE_WORDS)
    if kind == 0:
        return FILLER
    if kind == 1:
        return f"One of the special magic numbers for {key} is: {number}."
    if kind == 2:
        return f"One of the special magic words for {key} is: {word}."
    if kind == 3:
        return f"What is the special magic number for {key} mentioned in the provided text?"
    if kind == 4:
        return f"What is the special magic word for {key} mentioned in the provided text?"
    if kind == 5:
        value = rng.randrange(10_000, 100_000)
        return f"VAR {_variable(rng)} = {value}\nVAR {_variable(rng)} = VAR {_variable(rng)}"
    if kind == 6:
        return f"Find all variables that are assigned the value {rng.randrange(10_000, 100_000)} in the text above."
    if kind == 7:
        names = ", ".join(_variable(rng) for _ in range(rng.randrange(1, 6)))
        return f"\\boxed{{{rng.choice([number, word, names])}}}"
    if kind == 8:
        return rng.choice([EMPTY_MEMORY, INITIAL_MEMORY, "Updated memory:", "Your answer:"])
    return rng.choice(_template_lines())


def task_corpus(num_lines: int, seed: int = 0) -> Iterator[str]:
    """`num_lines` lines (some hold two) of the synthetic tasks' documents, questions, answers and the agent's
    templates, deterministic in `seed`. The first ~200 lines name every adjective and noun of the keys, so
    a corpus of at least that many lines leaves no key word to be spelled out in letters."""
    if num_lines < 0:
        raise ValueError(f"num_lines must be >= 0, got {num_lines}")
    rng = random.Random(seed)
    words = [f"One of the special magic numbers for {a}-{n} is: {rng.randrange(1_000_000, 10_000_000)}."
             for a, n in zip(ADJECTIVES, NOUNS * (len(ADJECTIVES) // len(NOUNS) + 1))]
    words += [f"What is the special magic number for {rng.choice(ADJECTIVES)}-{n} mentioned in the provided text?"
              for n in NOUNS]
    for i in range(num_lines):
        yield words[i] if i < len(words) else _line(i % 10, rng)
