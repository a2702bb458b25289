"""Tokenizer training text: English words in the synthetic tasks' sentences, and the agent's templates.

The text names every training-split adjective, noun and verb of RULER's lists (data/words.py, some 7,700
words) inside the tasks' needles, questions and assignments, then mixes the tasks' lines and the agent's
templates. A byte-pair tokenizer trained on it learns English sub-words rather than a few whole key words,
so a word it never saw (every evaluation-split word is left out on purpose) still costs a few pieces,
not ten letters, and template phrases stay short: both matter for a tiny model that must copy every piece
of a key from question to memory to answer.
"""

from __future__ import annotations

import random
from typing import Iterator

from memagent_jax.agent.prompts import EMPTY_MEMORY, FINAL_ANSWER_TEMPLATE, INITIAL_MEMORY, MEMORY_UPDATE_TEMPLATE
from memagent_jax.data.haystack import FILLER
from memagent_jax.data.niah import join_keys, needle_head, needle_line
from memagent_jax.data.vt import VT_HEAD, vt_question
from memagent_jax.data.words import ADJECTIVES, NOUNS, VERBS, key_space, word_split

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _template_lines() -> list[str]:
    text = MEMORY_UPDATE_TEMPLATE + "\n" + FINAL_ANSWER_TEMPLATE
    return [line for line in text.replace("{{}}", "{}").splitlines() if line.strip()]


def _key(rng: random.Random) -> str:
    space = key_space("train")
    return space.key(rng.randrange(space.size))


def _variable(rng: random.Random, letters: int = 5) -> str:
    return "".join(rng.choice(_LETTERS) for _ in range(letters))


def _number(rng: random.Random) -> str:
    return str(rng.randrange(1_000_000, 10_000_000))


def _line(kind: int, rng: random.Random) -> str:
    if kind == 0:
        return FILLER
    if kind == 1:
        return needle_line("numbers", _key(rng), _number(rng))
    if kind == 2:
        return needle_line("words", _key(rng), _key(rng))
    if kind == 3:
        keys = [_key(rng) for _ in range(rng.choice([1, 1, 2, 4]))]
        if len(keys) == 1:
            return f"What is the special magic number for {keys[0]} mentioned in the provided text?"
        return f"What are all the special magic numbers for {join_keys(keys)} mentioned in the provided text?"
    if kind == 4:
        return needle_head(rng.choice(["numbers", "words"]), rng.random() < 0.5)
    if kind == 5:
        value = rng.randrange(10_000, 100_000)
        return f"VAR {_variable(rng)} = {value}\nVAR {_variable(rng)} = VAR {_variable(rng)} "
    if kind == 6:
        return rng.choice([VT_HEAD, "Question: " + vt_question(str(rng.randrange(10_000, 100_000)))])
    if kind == 7:
        names = ", ".join(_variable(rng) for _ in range(rng.randrange(1, 6)))
        return f"\\boxed{{{rng.choice([_number(rng), _key(rng), names])}}}"
    if kind == 8:
        return rng.choice([EMPTY_MEMORY, INITIAL_MEMORY, "Updated memory:", "Your answer:"])
    return rng.choice(_template_lines())


def _cover_lines(rng: random.Random) -> Iterator[str]:
    """Every training-split word at least once, two nouns and two adjectives (or verbs) per line."""
    adjectives = [a for a in ADJECTIVES if word_split(a) == "train"]
    nouns = [n for n in NOUNS if word_split(n) == "train"]
    verbs = [v for v in VERBS if word_split(v) == "train"]
    for i in range(0, len(nouns), 2):
        a, b = adjectives[i % len(adjectives)], adjectives[(i + 1) % len(adjectives)]
        yield needle_line("words", f"{a}-{nouns[i]}", f"{b}-{nouns[(i + 1) % len(nouns)]}")
    for i in range(0, len(verbs), 2):
        yield f"The {rng.choice(nouns)} will {verbs[i]} and {verbs[(i + 1) % len(verbs)]} the {rng.choice(nouns)}."


def task_corpus(num_lines: int, seed: int = 0) -> Iterator[str]:
    """The word-cover lines (about 3,600), then `num_lines` lines (some hold two) of the synthetic tasks'
    documents, questions, answers and the agent's templates, deterministic in `seed`. No evaluation-split
    word occurs."""
    if num_lines < 0:
        raise ValueError(f"num_lines must be >= 0, got {num_lines}")
    rng = random.Random(seed)
    yield from _cover_lines(rng)
    for i in range(num_lines):
        yield _line(i % 10, rng)
