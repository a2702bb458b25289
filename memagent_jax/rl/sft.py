"""SFT warm start: oracle traces of the memory agent on synthetic tasks.

The ideal memory after chunk k is what the answer-bearing spans read so far give, in reading order: their
notes (the answer so far: a needle's value, a chain's names, comma-separated) when every span has one, as in
the synthetic tasks, else the spans' lines, one per line; before any is found it says so. The final answer is
that memory boxed when it lists exactly the answers, else the boxed reward answer. Each
conversation is assembled with the agent's own prompt templates (token level, like the rollouts), so SFT
trains exactly the prompts the policy will later see.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from memagent_jax.agent.chunks import iter_rechunked
from memagent_jax.agent.memory_agent import AgentConfig
from memagent_jax.agent.prompts import EMPTY_MEMORY, AgentPrompts
from memagent_jax.data.document import boxed_target, evidence_memory
from memagent_jax.data.pipeline import AgentSample
from memagent_jax.data.synthetic import stable_id
from memagent_jax.rl.packing import TrainSequence
from memagent_jax.tokenizer import Tokenizer

_END_OF_TURN = ("<|im_end|>", "<|eot_id|>")


def end_of_turn_id(tokenizer: Tokenizer) -> int:
    """The token that closes an assistant turn in the chat template (what the sampler stops on)."""
    for token in tokenizer.stop_ids:
        if tokenizer.decode([token], skip_special=False) in _END_OF_TURN:
            return token
    return tokenizer.eos_id


def _words_of(span: str) -> str:
    """The span without trailing punctuation and spaces (all of it when nothing else is left)."""
    return span.rstrip(" .,;:!?\n") or span


def oracle_memories(chunks: Sequence[Sequence[int]], spans: Sequence[str], tokenizer: Tokenizer,
                    max_span_tokens: int = 256, notes: Sequence[str] | None = None) -> list[str]:
    """The ideal memory text after each chunk: the spans completed by the end of that chunk, in the order read,
    one per line; with `notes` (`notes[i]` is the answer piece `spans[i]` gives), their notes joined as the
    final answer joins them (data.document.evidence_memory).

    Each chunk is decoded together with the `max_span_tokens` tokens before it, so a span that crosses a
    chunk boundary counts once it is complete, in linear time. A span's closing punctuation is not needed:
    a needle cut just before its final period has been read whole in the chunk that holds its last word."""
    if notes is not None and len(notes) != len(spans):
        raise ValueError(f"{len(notes)} notes for {len(spans)} spans")
    note_of = dict(zip(spans, notes if notes is not None else spans))
    found: list[str] = []
    pending = list(dict.fromkeys(spans))
    memories = []
    history: list[int] = []
    for chunk in chunks:
        window = history[-max_span_tokens:] + list(chunk)
        text = tokenizer.decode(window)
        hits = sorted((text.find(_words_of(span)), span) for span in pending if _words_of(span) in text)
        for _, span in hits:
            found.append(span)
            pending.remove(span)
        history = window
        memories.append(evidence_memory([note_of[s] for s in found], notes is not None) if found else EMPTY_MEMORY)
    return memories


def oracle_sequences(item: AgentSample, tokenizer: Tokenizer, prompts: AgentPrompts,
                     agent: AgentConfig, quiet_updates: int | None = None) -> list[TrainSequence]:
    """The SFT conversations of one sample: a memory update per chunk, then the final answer.

    `quiet_updates` None keeps every update. A number keeps every update that changes the memory, the final
    answer, and only that many of the updates that leave the memory as it was (chosen at random, fixed per
    sample). A long document then costs about what a short one does, yet teaches what only long documents
    show: whole chunks of haystack both before the evidence (the memory stays empty) and after it (the memory
    is kept). Trained on short documents alone, the tiny model learned that a full chunk of filler means an
    empty memory, and wiped memories it had found at 4K tokens and beyond (BENCHMARKS.md "RULER's task
    definitions")."""
    sample = item.sample
    spans = [span.text for span in sample.document.spans]
    # Notes when every span has one (the synthetic tasks): the memory is then the answer as far as it goes.
    notes = [span.note for span in sample.document.spans] if all(s.note for s in sample.document.spans) else None
    if not spans:
        raise ValueError(f"sample {sample.index} of task {sample.task!r} has no answer spans: no oracle memory "
                         "can be written (SFT needs synthetic tasks or sources that mark their evidence)")
    question = [int(t) for t in item.question_ids]
    if len(question) > agent.max_question_tokens:
        raise ValueError(f"sample {sample.index}: question of {len(question)} tokens exceeds "
                         f"max_question_tokens={agent.max_question_tokens}")
    end = end_of_turn_id(tokenizer)
    # Cut as the agent cuts (the pipeline's chunks are plain chunk_size cuts), so SFT sees the rollouts' chunks.
    chunks = list(iter_rechunked(([int(t) for t in c] for c in item.iter_chunks(tokenizer)), agent.chunk_size,
                                 agent.line_ends(tokenizer)))
    sequences, quiet = [], []  # quiet: updates that find no new evidence
    memory, previous = list(prompts.initial_memory), EMPTY_MEMORY
    for chunk, text in zip(chunks, oracle_memories(chunks, spans, tokenizer, notes=notes)):
        prompt = prompts.memory_update.assemble({"prompt": question, "memory": memory, "chunk": chunk})
        new_memory = tokenizer.encode(text)
        if len(new_memory) + 1 > agent.max_memory_tokens:
            raise ValueError(f"sample {sample.index}: the oracle memory needs {len(new_memory) + 1} tokens, more than "
                             f"max_memory_tokens={agent.max_memory_tokens}")
        if text == previous:
            quiet.append(len(sequences))
        sequences.append(TrainSequence(prompt + new_memory + [end], len(prompt)))
        memory, previous = new_memory, text
    if quiet_updates is not None and quiet_updates < len(quiet):
        rng = np.random.default_rng([stable_id(sample.task), sample.index, len(chunks)])
        dropped = set(rng.choice(quiet, size=len(quiet) - quiet_updates, replace=False).tolist())
        sequences = [seq for i, seq in enumerate(sequences) if i not in dropped]
    prompt = prompts.final_answer.assemble({"prompt": question, "memory": memory})
    answer = tokenizer.encode("\\boxed{" + boxed_target(previous, sample) + "}") + [end]
    if len(answer) > agent.max_answer_tokens:
        raise ValueError(f"sample {sample.index}: the boxed answer needs {len(answer)} tokens, more than "
                         f"max_answer_tokens={agent.max_answer_tokens}")
    sequences.append(TrainSequence(prompt + answer, len(prompt)))
    return sequences
