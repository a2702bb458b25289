"""Copy warm-up: teaches a model trained from scratch to repeat text it has read.

A memory agent's whole job is copying: the needle into the memory, then the memory into the next memory,
chunk after chunk. A pretrained LLM arrives able to copy (induction heads); a tiny random model does not,
and learns it far more slowly from oracle memories, where only a few digits per conversation need it. This
phase trains on dense copies instead: a random string of ordinary tokens, a separator, the same string
again (loss on the repeat only). On the quickstart's tiny model copying appears as a sharp drop of the
loss after a few hundred steps; SFT then only has to learn what to copy.

Two options bring the strings closer to what the agent copies: `digit_fraction` of them are digits only
(needle values: repeated tokens, so copying must track its place, not just the last token), and a gap of up
to `max_gap_tokens` filler-text tokens between the string and the separator puts it as far back as a needle
sits in a chunk.

Batches are a pure function of (seed, batch index): the iterator's state is the next index, and each
process takes its slice of the same global batch, so 1 and N processes train on the same data.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from memagent_jax.data.haystack import FILLER
from memagent_jax.rl.packing import TrainSequence
from memagent_jax.tokenizer import Tokenizer

SEPARATOR = "\nRepeat the text above exactly:\n"


@dataclasses.dataclass(frozen=True)
class CopyTaskConfig:
    """Lengths of the strings to copy, in tokens."""

    min_tokens: int = 8
    max_tokens: int = 64
    digit_fraction: float = 0.0  # strings made of digit tokens only
    max_gap_tokens: int = 0  # filler tokens between the string and the separator: uniform in [0, this]

    def __post_init__(self) -> None:
        if not 1 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"need 1 <= min_tokens <= max_tokens, got {self.min_tokens} and {self.max_tokens}")
        if not 0.0 <= self.digit_fraction <= 1.0:
            raise ValueError(f"digit_fraction must be in [0, 1], got {self.digit_fraction}")
        if self.max_gap_tokens < 0:
            raise ValueError(f"max_gap_tokens must be >= 0, got {self.max_gap_tokens}")

    @property
    def max_sequence_tokens(self) -> int:
        """Longest sequence without the separator and end token: the string twice and the gap."""
        return 2 * self.max_tokens + self.max_gap_tokens


def copyable_ids(tokenizer: Tokenizer) -> np.ndarray:
    """Ids of ordinary pieces: every id that is not special and decodes to some text."""
    stops = set(tokenizer.stop_ids) | {tokenizer.eos_id, tokenizer.pad_id}
    if tokenizer.bos_id is not None:
        stops.add(tokenizer.bos_id)
    ids = [i for i in range(tokenizer.vocab_size) if i not in stops and tokenizer.decode([i]).strip()]
    if len(ids) < 2:
        raise ValueError(f"the tokenizer has {len(ids)} ordinary pieces; copying needs at least 2")
    return np.asarray(ids, dtype=np.int64)


def digit_ids(tokenizer: Tokenizer) -> np.ndarray:
    """The ids the tokenizer writes single digits with (empty unless every digit is one piece of its own)."""
    ids = [tokenizer.encode(d) for d in "0123456789"]
    return np.asarray([i[0] for i in ids] if all(len(i) == 1 for i in ids) else [], dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class CopyVocabulary:
    """What copy sequences are made of: ordinary ids, digit ids, the separator, filler text for gaps."""

    pool: np.ndarray
    digits: np.ndarray
    separator: tuple[int, ...]
    filler: tuple[int, ...]
    end_id: int

    @classmethod
    def build(cls, tokenizer: Tokenizer, end_id: int) -> "CopyVocabulary":
        filler = tokenizer.encode(FILLER + "\n")
        return cls(copyable_ids(tokenizer), digit_ids(tokenizer), tuple(tokenizer.encode(SEPARATOR)), tuple(filler),
                   end_id)


def copy_sequence(rng: np.random.Generator, vocab: CopyVocabulary, config: CopyTaskConfig) -> TrainSequence:
    """Random string, a filler gap, the separator, the string again and the end-of-turn token; loss on the
    repeat."""
    length = int(rng.integers(config.min_tokens, config.max_tokens + 1))
    use_digits = len(vocab.digits) > 1 and rng.random() < config.digit_fraction
    pool = vocab.digits if use_digits else vocab.pool
    text = [int(t) for t in pool[rng.integers(0, len(pool), length)]]
    gap: list[int] = []
    if config.max_gap_tokens:
        size = int(rng.integers(0, config.max_gap_tokens + 1))
        start = int(rng.integers(0, len(vocab.filler)))
        repeats = (start + size) // len(vocab.filler) + 1
        gap = list(vocab.filler * repeats)[start:start + size]
    prompt = text + gap + list(vocab.separator)
    return TrainSequence(prompt + text + [vocab.end_id], len(prompt))


class CopyBatches:
    """Endless batches of copy sequences; checkpointable through get_state/set_state."""

    def __init__(self, tokenizer: Tokenizer, end_id: int, batch_size: int, config: CopyTaskConfig, seed: int,
                 process_index: int = 0, process_count: int = 1):
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(f"batch_size={batch_size} must be >= 1 and a multiple of the {process_count} processes")
        if not 0 <= process_index < process_count:
            raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, {process_count}")
        self.vocab = CopyVocabulary.build(tokenizer, end_id)
        self.batch_size, self.config, self.seed = batch_size, config, seed
        per_process = batch_size // process_count
        self._slice = slice(process_index * per_process, (process_index + 1) * per_process)
        self.next_index = 0

    @property
    def longest_sequence(self) -> int:
        """Tokens in the longest sequence these batches can hold (string twice, gap, separator, end token)."""
        return self.config.max_sequence_tokens + len(self.vocab.separator) + 1

    def __iter__(self) -> "CopyBatches":
        return self

    def __next__(self) -> list[TrainSequence]:
        rng = np.random.default_rng((self.seed, self.next_index))
        batch = [copy_sequence(rng, self.vocab, self.config)
                 for _ in range(self.batch_size)]
        self.next_index += 1
        return batch[self._slice]

    def get_state(self) -> dict[str, int]:
        return {"next_index": self.next_index}

    def set_state(self, state: dict[str, int]) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("next_index"), int) or state["next_index"] < 0:
            raise ValueError(f"copy data state must be {{'next_index': int >= 0}}, got {state!r}")
        self.next_index = state["next_index"]
