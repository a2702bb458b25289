"""Word lists for the synthetic tasks: RULER's needle keys, split between training and evaluation.

RULER draws needle keys as adjective-noun pairs (``jittery-hospital``) from the adjective and noun lists of
the ``wonderwords`` package (912 adjectives, 6,782 nouns), and needle values of kind "words" from the same
pairs. We read the same lists, then split each list by a fixed hash of the word: about one word in ten is an
evaluation word. Training keys pair two training words, evaluation keys two evaluation words, so a key asked
in an evaluation was never a key in training and neither of its words was ever part of one: every
evaluation measures matching an unseen key, as a sample from RULER's own generator would.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import string
import zlib

import numpy as np

__all__ = ["ADJECTIVES", "KEY_SPLITS", "NOUNS", "KeySpace", "UPPER", "key_space", "made_up_word", "word_split"]

KEY_SPLITS = ("train", "eval", "all")
_EVAL_SHARE = 10  # one word in this many is an evaluation word


def _word_list(file_name: str) -> tuple[str, ...]:
    text = importlib.resources.files("wonderwords.assets").joinpath(file_name).read_text(encoding="utf-8")
    return tuple(sorted({line.strip() for line in text.splitlines() if line.strip()}))


ADJECTIVES: tuple[str, ...] = _word_list("adjectivelist.txt")
NOUNS: tuple[str, ...] = _word_list("nounlist.txt")
VERBS: tuple[str, ...] = _word_list("verblist.txt")


def word_split(word: str) -> str:
    """"eval" for about one word in ten (fixed by a CRC of the word, the same in every process), else "train"."""
    return "eval" if zlib.crc32(word.encode("utf-8")) % _EVAL_SHARE == 0 else "train"


@dataclasses.dataclass(frozen=True)
class KeySpace:
    """The adjective-noun keys of one split, numbered 0 .. size-1."""

    split: str
    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.adjectives) * len(self.nouns)

    def key(self, number: int) -> str:
        adjective, noun = divmod(int(number) % self.size, len(self.nouns))
        return f"{self.adjectives[adjective]}-{self.nouns[noun]}"

    def keys(self, rng: np.random.Generator, n: int, distinct: bool = True) -> list[str]:
        """``n`` random keys (distinct unless ``distinct`` is False)."""
        numbers = rng.choice(self.size, size=n, replace=False) if distinct else rng.integers(0, self.size, n)
        return [self.key(int(k)) for k in numbers]


@functools.cache
def key_space(split: str) -> KeySpace:
    """Keys of ``split``: "train" (both words training words), "eval" (both evaluation words) or "all"
    (RULER's whole space)."""
    if split not in KEY_SPLITS:
        raise ValueError(f"key split must be one of {KEY_SPLITS}, got {split!r}")
    if split == "all":
        return KeySpace(split, ADJECTIVES, NOUNS)
    return KeySpace(split, tuple(a for a in ADJECTIVES if word_split(a) == split),
                    tuple(n for n in NOUNS if word_split(n) == split))


_CONSONANTS = "bcdfghklmnprstvz"
_VOWELS = "aeiou"
UPPER = np.array(list(string.ascii_uppercase))


def made_up_word(ints: "np.ndarray", capitalize: bool = True) -> str:
    """A pronounceable made-up word from small non-negative ints: one consonant-vowel syllable per two
    ints (so len(ints) should be even), e.g. 'Talorvi'."""
    chars = []
    for i in range(0, len(ints) - 1, 2):
        chars.append(_CONSONANTS[int(ints[i]) % len(_CONSONANTS)])
        chars.append(_VOWELS[int(ints[i + 1]) % len(_VOWELS)])
    word = "".join(chars)
    return word.capitalize() if capitalize else word
