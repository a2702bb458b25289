"""How big an engine the memory agent needs: one rule for every place that builds one for the agent
(held-out evaluation, file evaluation, memagent-answer), so their limits cannot drift apart."""

from __future__ import annotations

from memagent_jax.agent.memory_agent import AgentConfig
from memagent_jax.agent.prompts import AgentPrompts
from memagent_jax.engine.requests import EngineConfig


def size_engine(prompts: AgentPrompts, agent: AgentConfig, batch: int, page_size: int = 16) -> EngineConfig:
    """The smallest engine that fits the longest prompt plus its generation for `batch` sequences at once
    (twice the pages, so prompt records can stay cached).

    The longest prompt is the memory update's: its template, the question, the memory (the initial memory
    may be longer than max_memory_tokens) and a full chunk."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1 sequence, got {batch}")
    longest = (prompts.memory_update.fixed_length() + agent.max_question_tokens
               + max(agent.max_memory_tokens, len(prompts.initial_memory)) + agent.chunk_size)
    generated = max(agent.max_memory_tokens, agent.max_answer_tokens)
    max_seq_len = -(-(longest + generated) // page_size) * page_size
    pages = max_seq_len // page_size
    return EngineConfig(page_size=page_size, num_pages=2 * batch * pages + 2, max_slots=batch,
                        max_seq_len=max_seq_len, max_prompt_len=longest,
                        # A power of two: prefill pieces are padded to powers of two, so no odd extra shape.
                        prefill_chunk=max(page_size, min(512, 1 << (max_seq_len.bit_length() - 1))),
                        prefill_batch=min(8, batch))
