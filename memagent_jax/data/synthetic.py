"""Base class of the synthetic long-context tasks and their Grain data source.

Determinism: sample ``i`` of a task depends only on (seed, task name, i) -- never on global RNG state,
the process, or which other samples were generated -- so any host can generate its own shard.
"""

from __future__ import annotations

import abc
import zlib

import numpy as np

from memagent_jax.data.document import Sample, TextTokenizer
from memagent_jax.data.length import LengthPlanner
from memagent_jax.data.words import key_space

__all__ = ["MAX_TARGET_TOKENS", "SyntheticSource", "SyntheticTask", "stable_id"]

MAX_TARGET_TOKENS = 16_000_000  # 10M-token documents are the design goal; a little headroom


def stable_id(name: str) -> int:
    """A process-independent 32-bit id for a name (Python's hash() is salted per process)."""
    return zlib.crc32(name.encode("utf-8"))


class SyntheticTask(abc.ABC):
    """Generates sample ``index`` of a task with documents of about ``target_tokens`` tokens.

    ``tokenizer`` measures lengths (see length.py); ``exact_limit`` is the length up to which varying
    haystack units are counted one by one rather than by a calibrated mean. ``key_split`` picks the needle
    keys' half of the vocabulary (data/words.py): "train" for training data, "eval" for evaluations, "all"
    for RULER's whole space; tasks without vocabulary keys ignore it.
    """

    answer_mode: str = "all"

    def __init__(
        self,
        tokenizer: TextTokenizer,
        target_tokens: int,
        *,
        seed: int = 0,
        name: str | None = None,
        exact_limit: int = 131_072,
        key_split: str = "train",
    ):
        if not 0 < target_tokens <= MAX_TARGET_TOKENS:
            raise ValueError(f"target_tokens must be in (0, {MAX_TARGET_TOKENS}], got {target_tokens}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        key_space(key_split)  # a bad split name fails here, not at the first sample
        self.key_split = key_split
        self.tokenizer = tokenizer
        self.target_tokens = int(target_tokens)
        self.seed = int(seed)
        self.name = name or self.default_name()
        self.task_id = stable_id(self.name)
        self.planner = LengthPlanner(tokenizer, exact_limit=exact_limit)

    @abc.abstractmethod
    def default_name(self) -> str:
        """A name that describes the configuration (it seeds the RNG)."""

    @abc.abstractmethod
    def sample(self, index: int) -> Sample:
        """Sample number ``index`` (any non-negative int)."""

    def rng(self, index: int, *stream: int) -> np.random.Generator:
        """The RNG of one sample; ``stream`` separates independent uses inside a sample."""
        if index < 0:
            raise IndexError(f"sample index must be >= 0, got {index}")
        return np.random.default_rng([self.seed, self.task_id, index, *stream])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, target_tokens={self.target_tokens}, seed={self.seed}, "
                f"key_split={self.key_split!r})")


class SyntheticSource:
    """A Grain random-access source (``__len__``/``__getitem__``): item i is ``task.sample(i)``."""

    def __init__(self, task: SyntheticTask, num_samples: int, offset: int = 0):
        if num_samples < 0 or offset < 0:
            raise ValueError("num_samples and offset must be >= 0")
        self.task, self.num_samples, self.offset = task, int(num_samples), int(offset)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> Sample:
        index = int(index)
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range [0, {self.num_samples})")
        return self.task.sample(self.offset + index)

    def __repr__(self) -> str:
        return f"SyntheticSource({self.task!r}, num_samples={self.num_samples}, offset={self.offset})"
