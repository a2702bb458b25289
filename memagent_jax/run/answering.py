"""One question about one document of any length, answered by a memory agent on an exported checkpoint, with
a bar of chunks answered. The document is streamed (read, decoded and tokenized piece by piece), so host
memory stays bounded whatever its size. `memagent-answer` is its command line."""

from __future__ import annotations

import math
import os
import pathlib
import sys

from tqdm import tqdm

from memagent_jax.agent.chunks import iter_text_file, iter_token_pieces
from memagent_jax.agent.engine_sizing import size_engine
from memagent_jax.agent.memory_agent import AgentConfig, AgentTask, Trajectory
from memagent_jax.run.checkpoint_agent import open_agent
from memagent_jax.run.progress import progress_bar

__all__ = ["ChunkProgress", "answer_document"]


class ChunkProgress:
    """A bar of chunks answered (memory updates done), with the document tokens read so far.

    The document is streamed, so its chunk count is not known up front: the bar's total is extrapolated
    from the tokens per byte read so far, and is exact once the whole file has been read (with line
    boundaries, chunks may hold fewer tokens than chunk_size and the total grows as they are answered).
    The bar appears with the first tokens read, when the first estimate exists."""

    def __init__(self, total_bytes: int, chunk_size: int):
        self.total_bytes = max(total_bytes, 1)
        self.chunk_size = chunk_size
        self.bytes_read = 0
        self.tokens = 0
        self.bar: tqdm | None = None

    def _estimated_chunks(self, chunks_done: int) -> int:
        share_read = min(1.0, self.bytes_read / self.total_bytes)
        estimated_tokens = self.tokens / share_read if share_read > 0 else 0
        return max(chunks_done, math.ceil(estimated_tokens / self.chunk_size))

    def tokens_read(self, count: int) -> None:
        self.tokens += count
        if self.bar is None:
            self.bar = progress_bar(self._estimated_chunks(0), "chunks", unit="chunk")

    def chunk_done(self, chunks_done: int) -> None:
        self.bar.total = self._estimated_chunks(chunks_done)
        self.bar.set_postfix_str(f"{self.tokens:,} tokens read", refresh=False)
        self.bar.update(chunks_done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def answer_document(checkpoint: str | os.PathLike, document: str | os.PathLike, question: str,
                    config: AgentConfig, show_memory: bool = False) -> Trajectory:
    """Loads the checkpoint, streams the document through the agent, and returns the trajectory."""
    checkpoint, document = pathlib.Path(checkpoint), pathlib.Path(document)
    if not document.is_file():
        raise FileNotFoundError(f"document {document} does not exist")
    agent = open_agent(checkpoint, config, lambda prompts: size_engine(prompts, config, batch=1))
    tokenizer = agent.tokenizer
    progress = ChunkProgress(document.stat().st_size, config.chunk_size)
    replaced = [0]

    def texts():
        for text, bad in iter_text_file(document):
            replaced[0] += bad
            progress.bytes_read += len(text.encode("utf-8", errors="replace"))
            yield text

    def pieces():
        for ids in iter_token_pieces(texts(), tokenizer):
            progress.tokens_read(len(ids))
            yield ids

    def on_progress(trajectory: Trajectory, chunks_done: int) -> None:
        progress.chunk_done(chunks_done)
        if show_memory:  # tqdm.write keeps a bar on the terminal below the printed memory
            tqdm.write(f"--- memory after chunk {chunks_done} ---\n{trajectory.memories[-1]}", file=sys.stdout)
            sys.stdout.flush()

    [trajectory] = agent.run([AgentTask("document", question, pieces)], on_progress=on_progress,
                             keep_prompts=False)
    progress.close()
    if replaced[0]:
        print(f"note: {replaced[0]} bytes of {document} were not valid UTF-8 and were replaced by U+FFFD",
              file=sys.stderr)
    if trajectory.error is not None:
        raise RuntimeError(f"generation failed: {trajectory.error}")
    return trajectory
