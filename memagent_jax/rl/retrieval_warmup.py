"""Retrieval warm-up: teaches a model trained from scratch to find a line by its content and copy it.

The copy warm-up (rl/copy_warmup.py) teaches repeating a whole string; the agent must instead find the
one line of a chunk that answers the question (a needle: its key is in the question) and copy it,
digits included, into the memory. Learned from oracle memories alone, inside ~400-token prompts, this
did not start within hundreds of steps on the quickstart's tiny model: with attention spread over the
whole prompt, the gradient towards the right line is weak. Here the same synthetic documents are made
short (a few dozen to a few hundred tokens) and the target is dense: the document, the question, then
the notes of the document's evidence (what the oracle memory holds after the last chunk: each span's
``memory_text``, e.g. a needle's value). BENCHMARKS.md
("Retrieval warm-up") has the measured effect.

Sequence: document tokens, newline, question, newline | the evidence memory (data.document.evidence_memory),
end-of-turn; loss on the part after the bar. With `question_first` the question comes first (question, newline,
document, newline), as in the agent's memory-update prompt, where the problem precedes the section: a needle's key
can then be checked against the question while the needle is read, instead of only when the value is written.

With `boxed_answer` the target goes on to the agent's final answer, `\\boxed{...}` after one more newline: a
model answers from a memory of evidence lines, and copying the value out of a line into the box is trained here
on every sample, where SFT has one answer per document.

With an `answer_prompt` (the agent's final-answer prompt) a share of the samples is rendered in it instead: the
question in its problem slot, the short document in its memory slot, then the boxed answer alone (with the evidence
lines first, the base's answers began with the value and lost the box). That is answering in a box from a text,
what an instruct model brings to MemAgent's final turn; it trains no memory update (no memory-update prompt, no
oracle memory), so a base warmed up this way has still never written a memory (configs/ablation.py).
"""

from __future__ import annotations

from typing import Sequence

from memagent_jax.agent.prompts import SlotPrompt
from memagent_jax.data.document import boxed_target, evidence_memory
from memagent_jax.data.pipeline import AgentSample
from memagent_jax.rl.packing import TrainSequence
from memagent_jax.tokenizer import Tokenizer


def retrieval_sequence(item: AgentSample, tokenizer: Tokenizer, end_id: int, row_len: int,
                       boxed_answer: bool = False, answer_prompt: SlotPrompt | None = None,
                       question_first: bool = False) -> TrainSequence:
    """One sample as a retrieval sequence: the document, newline, question, newline (question first with
    `question_first`), then the evidence lines (and the boxed answer when `boxed_answer`); with `answer_prompt`
    (slots prompt and memory) that prompt holding the question and the document, then the boxed answer alone.
    ValueError when the sample has no evidence or does not fit a packed row of `row_len` inputs."""
    sample = item.sample
    # In reading order, like the oracle memory after the last chunk.
    ordered = sorted(sample.document.spans, key=lambda span: span.piece)
    if not ordered:
        raise ValueError(f"sample {sample.index} of task {sample.task!r} has no evidence spans to retrieve")
    newline = tokenizer.encode("\n")
    document = [int(t) for chunk in item.iter_chunks(tokenizer) for t in chunk]
    question = [int(t) for t in item.question_ids]
    if answer_prompt is not None:
        prompt = answer_prompt.assemble({"prompt": question, "memory": document})
    elif question_first:
        prompt = question + newline + document + newline
    else:
        prompt = document + newline + question + newline
    text = evidence_memory([span.memory_text for span in ordered], all(span.note for span in ordered))
    if answer_prompt is not None:  # the boxed answer alone: every answer starts with its box
        text = "\\boxed{" + boxed_target(text, sample) + "}"
    elif boxed_answer:
        text += "\n\\boxed{" + boxed_target(text, sample) + "}"
    target = tokenizer.encode(text) + [end_id]
    if len(prompt) + len(target) - 1 > row_len:
        raise ValueError(f"sample {sample.index} of task {sample.task!r}: retrieval sequence of "
                         f"{len(prompt) + len(target)} tokens does not fit a packed row of {row_len} "
                         "(raise config.retrieval.row_len or lower config.retrieval.lengths)")
    return TrainSequence(prompt + target, len(prompt))


def retrieval_batch(items: Sequence[AgentSample], tokenizer: Tokenizer, end_id: int, row_len: int,
                    boxed_answer: bool = False, answer_prompt: SlotPrompt | None = None,
                    answer_prompt_fraction: float = 0.0, question_first: bool = False) -> list[TrainSequence]:
    """The batch's sequences: its first round(answer_prompt_fraction * len(items)) samples in `answer_prompt`
    (the batches come shuffled, so which samples is random), the others as document, question, evidence (question,
    document, evidence with `question_first`)."""
    if not 0.0 <= answer_prompt_fraction <= 1.0:
        raise ValueError(f"answer_prompt_fraction must be in [0, 1], got {answer_prompt_fraction}")
    if answer_prompt_fraction and answer_prompt is None:
        raise ValueError("answer_prompt_fraction > 0 needs an answer_prompt")
    prompted = round(answer_prompt_fraction * len(items))
    return [retrieval_sequence(item, tokenizer, end_id, row_len, boxed_answer, answer_prompt if i < prompted else None,
                               question_first)
            for i, item in enumerate(items)]
