"""Grain pipelines: source -> global shuffle -> per-process shard -> tokenize -> agent batches -> prefetch.

Sharding is by index after the global shuffle, so global batch ``b`` is the same set of samples
whatever the number of processes: element ``k`` of the shuffled order goes to process
``k % process_count``, and global batch ``b`` is shuffled positions ``[b*G, (b+1)*G)`` for global batch
size ``G``, split across processes. Samples are generated or read only by the process that owns them.

The returned ``grain.IterDataset``'s iterator is checkpointable: ``it.get_state()`` is a small dict
(save it with the training checkpoint) and ``it.set_state(state)`` on a fresh iterator of the same
pipeline continues with exactly the batch that would have come next.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Protocol

import grain
import numpy as np

from memagent_jax.agent.memory_agent import AgentTask
from memagent_jax.data.document import Sample, TextTokenizer

__all__ = ["AgentSample", "Tokenize", "make_pipeline"]


class RandomAccessSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


@dataclasses.dataclass(frozen=True, eq=False)
class AgentSample:
    """What the memory agent consumes: the sample, its question ids, and (for short documents) the
    document's token chunks; long documents stay lazy and are streamed by ``iter_chunks``."""

    sample: Sample
    question_ids: np.ndarray
    chunks: tuple[np.ndarray, ...] | None
    chunk_tokens: int

    def iter_chunks(self, tokenizer: TextTokenizer) -> Iterator[Sequence[int]]:
        """Document token chunks of ``chunk_tokens`` (the last may be shorter)."""
        if self.chunks is not None:
            yield from self.chunks
        else:
            yield from self.sample.document.iter_tokens(tokenizer, self.chunk_tokens)

    def agent_task(self, tokenizer: TextTokenizer) -> AgentTask:
        """The agent's view of this sample: pre-tokenized question, chunks streamed or cached."""
        return AgentTask(self.sample.index, self.sample.question, lambda: self.iter_chunks(tokenizer),
                         tuple(self.sample.ground_truth), question_ids=[int(t) for t in self.question_ids])


class Tokenize(grain.transforms.Map):
    """Sample -> AgentSample. Documents up to ``pretokenize_max_tokens`` (approx) are tokenized here, in
    the pipeline's worker threads; longer ones are left to stream chunk by chunk in the agent."""

    def __init__(self, tokenizer: TextTokenizer, chunk_tokens: int, pretokenize_max_tokens: int):
        if chunk_tokens <= 0:
            raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
        self.tokenizer, self.chunk_tokens = tokenizer, chunk_tokens
        self.pretokenize_max_tokens = pretokenize_max_tokens

    def map(self, sample: Sample) -> AgentSample:
        question = np.asarray(self.tokenizer.encode(sample.question), np.int32)
        chunks = None
        if sample.document.approx_tokens <= self.pretokenize_max_tokens:
            chunks = tuple(
                np.asarray(c, np.int32) for c in sample.document.iter_tokens(self.tokenizer, self.chunk_tokens)
            )
        return AgentSample(sample, question, chunks, self.chunk_tokens)


def _process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, {process_count}")
    return process_index, process_count


def make_pipeline(
    source: RandomAccessSource,
    global_batch_size: int,
    *,
    tokenizer: TextTokenizer | None = None,
    chunk_tokens: int = 5000,
    pretokenize_max_tokens: int = 32_768,
    shuffle: bool = True,
    seed: int = 0,
    num_epochs: int | None = 1,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    read_threads: int = 2,
    prefetch_batches: int = 2,
    mp_workers: int = 0,
) -> grain.IterDataset:
    """Batches (lists) of this process's ``global_batch_size / process_count`` samples.

    Elements are ``AgentSample`` if ``tokenizer`` is given, else ``Sample``. ``num_epochs=None``
    repeats forever (each epoch reshuffled). ``drop_remainder`` keeps every process in lock-step by
    dropping the last incomplete global batch; without it the last batch may be short and differ in
    size between processes. ``read_threads``/``prefetch_batches`` configure Grain's thread prefetch;
    ``mp_workers > 0`` adds ``mp_prefetch`` worker processes (spawned: the source and tokenizer must
    pickle, which ours do).
    """
    pi, pc = _process_layout(process_index, process_count)
    if global_batch_size <= 0 or global_batch_size % pc:
        raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of {pc} processes")
    if len(source) == 0:
        raise ValueError("empty source")
    local = global_batch_size // pc

    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    if drop_remainder and num_epochs is not None:
        keep = len(ds) // global_batch_size * global_batch_size
        if keep == 0:
            raise ValueError(f"fewer samples ({len(ds)}) than one global batch ({global_batch_size})")
        ds = ds[:keep]
    ds = ds[pi::pc]
    if tokenizer is not None:
        ds = ds.map(Tokenize(tokenizer, chunk_tokens, pretokenize_max_tokens))
    ds = ds.batch(local, drop_remainder=drop_remainder, batch_fn=list)
    options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(prefetch_batches, 1))
    out = ds.to_iter_dataset(options)
    if mp_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # Grain reads absl flags in its workers; outside an absl app
            flags.FLAGS.mark_as_parsed()  # use their defaults instead of failing
        out = out.mp_prefetch(grain.MultiprocessingOptions(num_workers=mp_workers))
    return out
