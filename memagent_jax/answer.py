"""Answer a question about a document of any length with a memory agent.

    memagent-answer --checkpoint DIR --document FILE --question "..." [--show-memory]

DIR is a checkpoint folder in Hugging Face layout (config.json, safetensors, and tokenizer.json or our
SentencePiece tokenizer.model); the project's trained models are exported in that layout. The document is
streamed: read, decoded and tokenized piece by piece, so host memory stays bounded whatever its size.
"""

from __future__ import annotations

import os

from absl import app, flags

from memagent_jax import command_line
from memagent_jax.agent.memory_agent import CHUNK_BOUNDARIES, AgentConfig, load_sizes

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
        from memagent_jax.run.answering import answer_document  # imported here: --help stays fast

        trajectory = answer_document(_CHECKPOINT.value, _DOCUMENT.value, _QUESTION.value, config,
                                     show_memory=_SHOW_MEMORY.value)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(trajectory.answer)


def run() -> None:
    """Console-script entry point (memagent-answer); --show-memory reads as --show_memory (command_line.py)."""
    command_line.run_app(main, __name__)


if __name__ == "__main__":
    run()
