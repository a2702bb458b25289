"""The agent's engine size: the fullest prompts the agent can build, plus their generation, fit."""

import pytest

from memagent_jax.agent.engine_sizing import size_engine
from memagent_jax.agent.memory_agent import AgentConfig
from memagent_jax.agent.prompts import AgentPrompts
from memagent_jax.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def prompts(sp_tokenizer_dir):
    return AgentPrompts.build(load_tokenizer(sp_tokenizer_dir))


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_the_fullest_prompts_and_their_generation_fit(prompts, batch):
    agent = AgentConfig(chunk_size=700, max_memory_tokens=96, max_answer_tokens=200, max_question_tokens=40)
    config = size_engine(prompts, agent, batch)
    question, memory, chunk = [7] * agent.max_question_tokens, [7] * agent.max_memory_tokens, [7] * agent.chunk_size
    update = prompts.memory_update.assemble({"prompt": question, "memory": memory, "chunk": chunk})
    final = prompts.final_answer.assemble({"prompt": question, "memory": memory})
    assert len(update) <= config.max_prompt_len and len(final) <= config.max_prompt_len
    assert len(update) + agent.max_memory_tokens <= config.max_seq_len
    assert len(final) + agent.max_answer_tokens <= config.max_seq_len
    # Every slot can hold a full sequence, twice over (cached prompt records), plus the reserved pages.
    assert config.max_slots == batch
    assert config.num_pages >= 2 * batch * config.max_seq_len // config.page_size
    assert config.prefill_batch == min(8, batch)
    assert config.prefill_chunk & (config.prefill_chunk - 1) == 0  # a power of two (padded prefill shapes)


def test_an_initial_memory_longer_than_the_memory_limit_still_fits(prompts):
    agent = AgentConfig(chunk_size=64, max_memory_tokens=1, max_answer_tokens=8, max_question_tokens=8)
    assert len(prompts.initial_memory) > agent.max_memory_tokens
    config = size_engine(prompts, agent, 1)
    first = prompts.memory_update.assemble({"prompt": [7] * 8, "memory": prompts.initial_memory, "chunk": [7] * 64})
    assert len(first) <= config.max_prompt_len


def test_a_batch_below_one_is_named(prompts):
    with pytest.raises(ValueError, match="batch must be >= 1"):
        size_engine(prompts, AgentConfig(), 0)
