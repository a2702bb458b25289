"""Training sequences packed into fixed-length rows with segment ids.

Every conversation (memory update or final answer) is its own sequence: prompt then response. A sequence
of n tokens becomes n - 1 inputs whose targets are the next tokens; only targets inside the response carry
loss. Sequences are placed first-fit by decreasing length, several per row, each with its own segment id
(attention never crosses segments) and positions restarting at 0. Rows are then grouped into micro-batches
of a fixed shape, so the update compiles once per number of micro-batches (a power of two).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

# Per-token arrays of a packed batch, in the order the update function takes them.
FIELDS = ("tokens", "targets", "segment_ids", "positions", "loss_mask", "advantages", "sampler_logp")


@dataclasses.dataclass
class TrainSequence:
    """One conversation to train on: its tokens, where the response starts, and its trajectory's data."""

    tokens: Sequence[int]  # prompt followed by response (the stop token, when sampled, included)
    prompt_len: int
    advantage: float = 0.0
    sampler_logprobs: Sequence[float] | None = None  # the engine's log-probs of the response tokens

    def __post_init__(self) -> None:
        response = len(self.tokens) - self.prompt_len
        if self.prompt_len < 1 or response < 1:
            raise ValueError(f"a training sequence needs a prompt and a response, got prompt_len={self.prompt_len} "
                             f"of {len(self.tokens)} tokens")
        if self.sampler_logprobs is not None and len(self.sampler_logprobs) != response:
            raise ValueError(f"{len(self.sampler_logprobs)} sampler log-probs for {response} response tokens")
        if not np.isfinite(self.advantage):
            raise ValueError(f"advantage must be finite, got {self.advantage}")

    @property
    def num_inputs(self) -> int:
        return len(self.tokens) - 1


@dataclasses.dataclass
class PackStats:
    sequences: int
    rows: int
    row_len: int
    real_tokens: int  # input tokens of real sequences
    loss_tokens: int  # response targets

    @property
    def padding_fraction(self) -> float:
        """Share of the row slots that hold padding: the packing's wasted compute."""
        total = self.rows * self.row_len
        return 1.0 - self.real_tokens / total if total else 0.0


def assign_rows(lengths: Sequence[int], row_len: int, max_segments: int) -> list[list[int]]:
    """First-fit decreasing: lists of sequence indices per row. Deterministic (ties keep input order)."""
    too_long = [n for n in lengths if n > row_len]
    if too_long:
        raise ValueError(f"{len(too_long)} sequences are longer than the packed row ({max(too_long)} > "
                         f"row_len={row_len} input tokens); raise train.row_len or lower the agent's limits")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    for index in order:
        for row, space in enumerate(free):
            if space >= lengths[index] and len(rows[row]) < max_segments:
                rows[row].append(index)
                free[row] -= lengths[index]
                break
        else:
            rows.append([index])
            free.append(row_len - lengths[index])
    return rows


def pack(sequences: Sequence[TrainSequence], row_len: int, max_segments: int = 16,
         rows_multiple: int = 1) -> tuple[dict[str, np.ndarray], PackStats]:
    """Packed rows [rows, row_len] per field of FIELDS; rows padded with empty rows to a multiple of
    `rows_multiple` (the micro-batch size)."""
    if row_len < 2 or max_segments < 1 or rows_multiple < 1:
        raise ValueError(f"row_len >= 2, max_segments >= 1 and rows_multiple >= 1 needed, got {row_len}, "
                         f"{max_segments}, {rows_multiple}")
    rows = assign_rows([s.num_inputs for s in sequences], row_len, max_segments)
    num_rows = max(1, -(-len(rows) // rows_multiple)) * rows_multiple
    out = {
        "tokens": np.zeros((num_rows, row_len), np.int32),
        "targets": np.zeros((num_rows, row_len), np.int32),
        "segment_ids": np.zeros((num_rows, row_len), np.int32),
        "positions": np.zeros((num_rows, row_len), np.int32),
        "loss_mask": np.zeros((num_rows, row_len), np.float32),
        "advantages": np.zeros((num_rows, row_len), np.float32),
        "sampler_logp": np.zeros((num_rows, row_len), np.float32),
    }
    loss_tokens = 0
    for row, members in enumerate(rows):
        start = 0
        for segment, index in enumerate(members, start=1):
            seq = sequences[index]
            tokens = np.asarray(seq.tokens, np.int32)
            n = len(tokens) - 1
            span = slice(start, start + n)
            out["tokens"][row, span] = tokens[:-1]
            out["targets"][row, span] = tokens[1:]
            out["segment_ids"][row, span] = segment
            out["positions"][row, span] = np.arange(n)
            # Input t predicts token t + 1: the response's targets start at input prompt_len - 1.
            first = start + seq.prompt_len - 1
            out["loss_mask"][row, first : start + n] = 1.0
            out["advantages"][row, first : start + n] = seq.advantage
            if seq.sampler_logprobs is not None:
                out["sampler_logp"][row, first : start + n] = np.asarray(seq.sampler_logprobs, np.float32)
            loss_tokens += n - seq.prompt_len + 1
            start += n
    stats = PackStats(len(sequences), num_rows, row_len, sum(s.num_inputs for s in sequences), loss_tokens)
    return out, stats


def micro_batches(batch: dict[str, np.ndarray], rows_per_micro: int) -> dict[str, np.ndarray]:
    """[rows, L] -> [num_micro, rows_per_micro, L], num_micro rounded up to a power of two with empty
    micro-batches (all-zero masks; the update skips their compute), so only a few shapes ever compile."""
    rows = next(iter(batch.values())).shape[0]
    if rows % rows_per_micro:
        raise ValueError(f"{rows} rows do not split into micro-batches of {rows_per_micro}")
    count = rows // rows_per_micro
    bucket = 1 << (count - 1).bit_length()
    out = {}
    for name, array in batch.items():
        shaped = array.reshape(count, rows_per_micro, *array.shape[1:])
        pad = np.zeros((bucket - count, *shaped.shape[1:]), array.dtype)
        out[name] = np.concatenate([shaped, pad]) if bucket > count else shaped
    return out
