"""What goes into the engine and what comes out: requests, completions, and the engine's settings."""

from __future__ import annotations

import dataclasses
from typing import Hashable, Sequence

from memagent_jax.engine.sampling import SamplingParams


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Capacity and static shapes of the engine; each shape below is compiled once."""

    page_size: int = 16
    num_pages: int = 1024
    max_slots: int = 32  # sequences decoding at once (the decode batch)
    max_seq_len: int = 8192  # prompt + generated tokens of one sequence
    max_prompt_len: int = 8192
    prefill_chunk: int = 512  # longest prefill piece per sequence per call (longer prompts: several)
    prefill_batch: int = 8  # most sequences in one prefill call
    decode_steps: int = 8  # decode steps per device call before the host looks at the results
    max_stop_ids: int = 8
    attention_backend: str = "auto"
    prefix_caching: bool = True

    def __post_init__(self) -> None:
        errors = []
        for name in ("page_size", "num_pages", "max_slots", "max_seq_len", "max_prompt_len", "prefill_chunk",
                     "prefill_batch", "decode_steps", "max_stop_ids"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_prompt_len > self.max_seq_len:
            errors.append(f"max_prompt_len={self.max_prompt_len} exceeds max_seq_len={self.max_seq_len}")
        if self.prefill_chunk % self.page_size:
            errors.append(f"prefill_chunk={self.prefill_chunk} must be a multiple of page_size={self.page_size}")
        if errors:
            raise ValueError("invalid EngineConfig: " + "; ".join(errors))

    @property
    def max_pages_per_seq(self) -> int:
        return -(-self.max_seq_len // self.page_size)


@dataclasses.dataclass(frozen=True)
class Request:
    request_id: Hashable
    prompt: Sequence[int]
    params: SamplingParams = SamplingParams()


@dataclasses.dataclass
class Completion:
    """A finished request. finish_reason: "stop" (a stop id, included in tokens), "length", or "error"."""

    request_id: Hashable
    tokens: list[int]
    logprobs: list[float]
    finish_reason: str
    prompt_len: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens reused from shared pages instead of computed
    preemptions: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.finish_reason != "error"
