"""The GRPO step on a real engine and agent: dynamic sampling drops groups with equal rewards and refills."""

import jax
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
from memagent_jax.rl.experience import ExperienceConfig
from memagent_jax.rl.optimizer import OptimizerConfig
from memagent_jax.rl.policy import BatchShape, Policy
from memagent_jax.rl.trainer import GRPOTrainer, RLConfig, batches_from
from memagent_jax.rl.update import UpdateConfig
from memagent_jax.tokenizer import load_tokenizer, train_sentencepiece


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sp")
    train_sentencepiece(tokenizer_corpus(1500), folder, vocab_size=512)
    tokenizer = load_tokenizer(folder)
    cfg = ModelConfig(family="qwen2", vocab_size=512, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, qkv_bias=True, tie_word_embeddings=True,
                      rope_theta=10000.0, max_position_embeddings=1024, initializer_range=0.02)
    model = Transformer(cfg, rngs=nnx.Rngs(1))
    engine = Engine(model, EngineConfig(page_size=16, num_pages=512, max_slots=16, max_seq_len=512,
                                        max_prompt_len=448, prefill_chunk=256, prefill_batch=8, decode_steps=8))
    agent = MemoryAgent(engine, tokenizer, AgentConfig(chunk_size=48, max_memory_tokens=8, max_answer_tokens=6,
                                                       max_question_tokens=40))
    mesh = make_mesh({"fsdp": 1}, jax.devices()[:1])
    return tokenizer, model, agent, mesh


def _data(tokenizer, batch):
    task = make_task("toy_code", tokenizer, 32)
    return batches_from(iter(make_pipeline(SyntheticSource(task, 1000), batch, tokenizer=tokenizer, chunk_tokens=48,
                                           seed=0, num_epochs=None)))


def test_dynamic_sampling_drops_uniform_groups_and_refills(parts):
    tokenizer, model, agent, mesh = parts
    policy = Policy(model, mesh, DEFAULT_RULES, OptimizerConfig(learning_rate=1e-3, warmup_steps=0),
                    UpdateConfig(max_segments=8), BatchShape(row_len=384, rows_per_micro=4))
    config = RLConfig(group_size=2, batch_size=2, mini_batch_size=1, dynamic_sampling=True, max_refills=2,
                      experience=ExperienceConfig(overlong="none"))
    trainer = GRPOTrainer(policy, agent, config)
    before = jax.tree.map(lambda x: x.copy(), policy.params)
    metrics = trainer.step(_data(tokenizer, 2), step=0)
    # A random model never writes the boxed answer: every group is all-zero reward, dropped, and refilled
    # twice (3 draws of 2 samples); nothing is left to train on and the weights do not move.
    assert metrics["reward_mean"] == 0.0
    assert metrics["groups_dropped_uniform"] == 6 and metrics["groups_trained"] == 0
    assert metrics["updates"] == 0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(policy.params)):
        assert (a == b).all()


def _leaves_differ(a, b):
    return any(not (x == y).all() for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_without_dynamic_sampling_uniform_groups_still_train_and_weights_reach_the_engine(parts):
    tokenizer, model, agent, mesh = parts
    policy = Policy(model, mesh, DEFAULT_RULES, OptimizerConfig(learning_rate=1e-2, warmup_steps=0),
                    UpdateConfig(max_segments=8), BatchShape(row_len=384, rows_per_micro=4))
    config = RLConfig(group_size=2, batch_size=2, mini_batch_size=1, experience=ExperienceConfig(overlong="none"))
    trainer = GRPOTrainer(policy, agent, config)
    initial = jax.tree.map(lambda x: x.copy(), policy.params)
    metrics = trainer.step(_data(tokenizer, 2), step=0)
    assert metrics["groups_trained"] == 2 and metrics["updates"] == 2
    assert metrics["sequences"] == metrics["conversations_per_trajectory"] * 4
    # The uniform groups' tokens reached the loss, and the updates moved the weights (zero advantages and a
    # KL of zero at the reference leave AdamW's weight decay, which still changes every decayed weight).
    assert metrics["loss_tokens"] > 0
    assert _leaves_differ(initial, policy.params)
    # The engine holds the trained weights: equal to the policy's and so different from the initial ones.
    assert agent.engine.stats.weight_updates >= 1
    for a, b in zip(jax.tree.leaves(policy.params), jax.tree.leaves(agent.engine.weights)):
        assert (a == b).all()
    assert _leaves_differ(initial, agent.engine.weights)
