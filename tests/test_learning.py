"""Learning, shown: a tiny model warm-started by SFT answers a toy task below 30% of the time; Multi-Conv
GRPO, from the verifier's reward alone, takes it above 80% (seeded, so the run is reproducible)."""

import jax
import numpy as np
import pytest
from flax import nnx

from fixture_data import tokenizer_corpus
from memagent_jax.agent.memory_agent import AgentConfig, MemoryAgent
from memagent_jax.data.pipeline import make_pipeline
from memagent_jax.data.synthetic import SyntheticSource
from memagent_jax.data.tasks import make_task
from memagent_jax.engine.engine import Engine
from memagent_jax.engine.requests import EngineConfig
from memagent_jax.model.config import ModelConfig
from memagent_jax.model.sharding import DEFAULT_RULES, make_mesh
from memagent_jax.model.transformer import Transformer
from memagent_jax.rl.grpo import LossConfig
from memagent_jax.rl.optimizer import OptimizerConfig
from memagent_jax.rl.policy import BatchShape, Policy
from memagent_jax.rl.trainer import GRPOTrainer, RLConfig, SFTTrainer, batches_from
from memagent_jax.rl.update import UpdateConfig
from memagent_jax.tokenizer import load_tokenizer, train_sentencepiece

SFT_STEPS = 30
RL_STEPS = 16


# ~2 minutes on 2 cores: kept out of the default run to hold it under 15 minutes; `python -m pytest -q -m slow`.
@pytest.mark.slow
def test_grpo_raises_reward_from_below_0_3_to_above_0_8(tmp_path):
    train_sentencepiece(tokenizer_corpus(1500), tmp_path, vocab_size=512)
    tokenizer = load_tokenizer(tmp_path)
    cfg = ModelConfig(family="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=16, qkv_bias=True, tie_word_embeddings=True,
                      rope_theta=10000.0, max_position_embeddings=1024, initializer_range=0.02)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    agent_cfg = AgentConfig(chunk_size=48, max_memory_tokens=32, max_answer_tokens=12, max_question_tokens=40)
    engine = Engine(model, EngineConfig(page_size=16, num_pages=2048, max_slots=64, max_seq_len=512,
                                        max_prompt_len=448, prefill_chunk=256, prefill_batch=8, decode_steps=8))
    agent = MemoryAgent(engine, tokenizer, agent_cfg)
    shape = BatchShape(row_len=384, rows_per_micro=8)

    # Warm start: a few SFT steps on oracle traces of random codes teach the format, not yet the answer.
    sft_task = make_task("toy_code", tokenizer, 32)
    sft_data = iter(make_pipeline(SyntheticSource(sft_task, 10_000), 16, tokenizer=tokenizer,
                                  chunk_tokens=agent_cfg.chunk_size, seed=0, num_epochs=None))
    sft_policy = Policy(model, mesh, DEFAULT_RULES,
                        OptimizerConfig(learning_rate=3e-3, warmup_steps=5, weight_decay=0.0),
                        UpdateConfig(objective="sft", max_segments=8), shape)
    sft = SFTTrainer(sft_policy, agent, mini_batch_size=8)
    for _ in range(SFT_STEPS):
        sft.step(next(sft_data))

    # GRPO on documents whose code is always 7: only the verifier's reward says which answer is right.
    rl_task = make_task("toy_code", tokenizer, 32, digits="7")
    rl_data = batches_from(iter(make_pipeline(SyntheticSource(rl_task, 10_000), 8, tokenizer=tokenizer,
                                              chunk_tokens=agent_cfg.chunk_size, seed=1, num_epochs=None)))
    policy = Policy(nnx.merge(sft_policy.graphdef, sft_policy.params), mesh, DEFAULT_RULES,
                    OptimizerConfig(learning_rate=2e-3, warmup_steps=0, weight_decay=0.0),
                    UpdateConfig(loss=LossConfig(kl_coef=0.0), max_segments=8), shape)
    trainer = GRPOTrainer(policy, agent, RLConfig(group_size=8, batch_size=8, mini_batch_size=4), seed=0)
    trainer.sync_weights()
    rewards = []
    for step in range(RL_STEPS):
        metrics = trainer.step(rl_data, step)
        rewards.append(metrics["reward_mean"])
        assert metrics["skipped"] == 0 and metrics["updates"] == 2
        assert metrics["logp_gap_sampler_trainer"] < 1e-3  # sampler and trainer agree on the same tokens
    start, end = np.mean(rewards[:2]), np.mean(rewards[-3:])
    print("GRPO mean reward per step:", np.round(rewards, 3).tolist())
    assert start < 0.3, rewards
    assert end > 0.8, rewards
