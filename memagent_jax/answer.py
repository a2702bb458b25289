"""Answer a question about a document of any length with a memory agent.

    memagent-answer --checkpoint DIR --document FILE --question "..." [--show-memory]

DIR is a checkpoint folder in Hugging Face layout (config.json, safetensors, and tokenizer.json or our
SentencePiece tokenizer.model); the project's trained models are exported in that layout. The document is
streamed: read, decoded and tokenized piece by piece, so host memory stays bounded whatever its size.
"""

from __future__ import annotations

import math
import os
import pathlib
import sys

from absl import app, flags
from tqdm import tqdm

from memagent_jax import commands
from memagent_jax.agent.chunks import iter_text_file, iter_token_pieces
from memagent_jax.agent.memory_agent import (CHUNK_BOUNDARIES, AgentConfig, AgentTask, MemoryAgent, Trajectory,
                                              load_sizes)
from memagent_jax.agent.prompts import AgentPrompts
from memagent_jax.engine.engine import Engine
from memagent_jax.engine_sizing import size_engine
from memagent_jax.progress import progress_bar

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint folder (HF layout with a tokenizer).")
_DOCUMENT = flags.DEFINE_string("document", None, "Text file to read (any size; invalid UTF-8 is replaced).")
_QUESTION = flags.DEFINE_string("question", None, "The question to answer.")
_SHOW_MEMORY = flags.DEFINE_bool("show_memory", False, "Print the memory after each chunk.")
_CHUNK = flags.DEFINE_integer("chunk_size", 5000, "Document tokens per memory update (default: the size saved "
                               "with the checkpoint, else 5000; likewise the three limits below).")
_MEMORY = flags.DEFINE_integer("max_memory_tokens", 1024, "Longest memory the model may write.")
_ANSWER = flags.DEFINE_integer("max_answer_tokens", 1024, "Longest final answer.")
_QUESTION_MAX = flags.DEFINE_integer("max_question_tokens", 1024, "Longest accepted question.")
_BOUNDARY = flags.DEFINE_enum("chunk_boundary", "token", list(CHUNK_BOUNDARIES),
                              "Where chunks end: every chunk_size tokens (the paper), or at the last line break "
                              "that fits (default: what the checkpoint was trained with, else token).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature (0: greedy).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


class _ChunkProgress:
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
    from memagent_jax.model.hf import load_hf_checkpoint  # imported here: flags parse fast for --help
    from memagent_jax.tokenizer import load_tokenizer

    checkpoint, document = pathlib.Path(checkpoint), pathlib.Path(document)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint folder {checkpoint} does not exist")
    if not document.is_file():
        raise FileNotFoundError(f"document {document} does not exist")
    tokenizer = load_tokenizer(checkpoint)
    model, _ = load_hf_checkpoint(checkpoint)
    prompts = AgentPrompts.build(tokenizer)
    engine_config = size_engine(prompts, config, batch=1)
    if engine_config.max_seq_len > model.cfg.max_position_embeddings:
        raise ValueError(f"chunk, memory and question sizes need {engine_config.max_seq_len} positions but the "
                         f"model has {model.cfg.max_position_embeddings}: lower --chunk_size or --max_memory_tokens")
    engine = Engine(model, engine_config)
    agent = MemoryAgent(engine, tokenizer, config, prompts)
    progress = _ChunkProgress(document.stat().st_size, config.chunk_size)
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


def main(argv: list[str]) -> None:
    del argv
    missing = [f"--{f.name}" for f in (_CHECKPOINT, _DOCUMENT, _QUESTION) if f.value is None]
    if missing:
        raise app.UsageError(f"missing required flags: {', '.join(missing)}")
    try:
        # Sizes saved with the checkpoint (what it was trained with) unless given on the command line.
        saved = load_sizes(_CHECKPOINT.value) if os.path.isdir(_CHECKPOINT.value) else {}
        sizes = {flag.name: (saved.get(flag.name, flag.value) if not flag.present else flag.value)
                 for flag in (_CHUNK, _MEMORY, _ANSWER, _QUESTION_MAX, _BOUNDARY)}
        config = AgentConfig(**sizes, temperature=_TEMPERATURE.value, seed=_SEED.value)
        trajectory = answer_document(_CHECKPOINT.value, _DOCUMENT.value, _QUESTION.value, config,
                                     show_memory=_SHOW_MEMORY.value)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(trajectory.answer)


def run() -> None:
    """Console-script entry point (memagent-answer); --show-memory reads as --show_memory (commands.py)."""
    commands.run_app(main, __name__)


if __name__ == "__main__":
    run()
