"""The full-recompute greedy reference decoder."""

import jax.numpy as jnp
import pytest
from flax import nnx

from memagent_jax.model.config import ModelConfig
from memagent_jax.model.greedy import greedy_generate
from memagent_jax.model.transformer import Transformer

CFG = ModelConfig(family="llama", vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=1, head_dim=8, rope_theta=10000.0, initializer_range=0.3)


@pytest.fixture(scope="module")
def model():
    return Transformer(CFG, rngs=nnx.Rngs(1))


def _naive(model, prompt, steps, width=32):
    """One token at a time, each from a fresh forward over the whole sequence so far (right-padded to a
    fixed width so one compiled forward serves every step; causality makes the padding invisible)."""
    forward = nnx.jit(lambda m, t: m(t))
    tokens = list(prompt)
    for _ in range(steps):
        logits = forward(model, jnp.asarray([tokens + [0] * (width - len(tokens))]))
        tokens.append(int(jnp.argmax(logits[0, len(tokens) - 1])))
    return tokens[len(prompt):]


def test_matches_naive_loop_for_mixed_lengths(model):
    prompts = [[5, 9, 2], [7] * 11, [1, 2, 3, 4, 5, 6]]
    out = greedy_generate(model, prompts, max_new_tokens=5)
    for prompt, got in zip(prompts, out):
        assert got == _naive(model, prompt, 5)


def test_stops_at_stop_token(model):
    free = greedy_generate(model, [[3, 4, 5]], max_new_tokens=6)[0]
    stop = free[2]
    stopped = greedy_generate(model, [[3, 4, 5]], max_new_tokens=6, stop_ids=[stop])[0]
    assert stopped == free[: free.index(stop) + 1]


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="at least one token"):
        greedy_generate(model, [[]], 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_generate(model, [[1]], 0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        greedy_generate(model, [[1] * CFG.max_position_embeddings], 1)
