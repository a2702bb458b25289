"""A small deterministic text corpus in the style of the synthetic tasks, for training tokenizers."""

from __future__ import annotations

import random
from typing import Iterator

# RULER's noise haystack line (RULER's synthetic tasks, Hsieh et al., 2024).
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
_ADJECTIVES = ("jittery", "calm", "bright", "silent", "eager", "brave", "gentle", "rapid", "quiet", "bold")
_NOUNS = ("hospital", "river", "garden", "window", "forest", "station", "mirror", "engine", "harbor", "castle")


def tokenizer_corpus(num_lines: int, seed: int = 0) -> Iterator[str]:
    """Filler lines, needles, questions, variable assignments and boxed answers, deterministic in seed."""
    if num_lines < 0:
        raise ValueError(f"num_lines must be >= 0, got {num_lines}")
    rng = random.Random(seed)
    for i in range(num_lines):
        key = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
        value = rng.randrange(1_000_000, 10_000_000)
        name = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
        kind = i % 5
        if kind == 0:
            yield FILLER
        elif kind == 1:
            yield f"One of the special magic numbers for {key} is: {value}."
        elif kind == 2:
            yield f"What is the special magic number for {key} mentioned in the provided text?"
        elif kind == 3:
            yield f"VAR {name} = {value % 100000:05d} and the answer is \\boxed{{{value}}}"
        else:
            yield f"No previous memory. Updated memory: the number for {key} is {value}."
