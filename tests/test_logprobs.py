"""The trainer's per-token pass: LM head computed piece by piece gives the log-probs and entropies of the
whole logits, by the same formulas as the GRPO loss pieces (rl.grpo)."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from memagent_jax.model.config import ModelConfig
from memagent_jax.model.transformer import Transformer
from memagent_jax.rl.logprobs import token_stats

CFG = ModelConfig(family="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16, qkv_bias=True, tie_word_embeddings=True,
                  rope_theta=10000.0, max_position_embeddings=256, initializer_range=0.2)


def _reference(logits: np.ndarray, targets: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    z = logits.astype(np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    taken = np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return taken, -(np.exp(log_probs) * log_probs).sum(-1)


def test_token_stats_over_pieces_match_the_whole_logits():
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, CFG.vocab_size, (2, 20))
    segment_ids = np.array([[1] * 12 + [2] * 8, [1] * 17 + [0] * 3])
    positions = np.where(segment_ids == 2, np.arange(20) - 12, np.arange(20)) * (segment_ids > 0)
    batch = {"tokens": jnp.asarray(tokens), "segment_ids": jnp.asarray(segment_ids),
             "positions": jnp.asarray(positions), "targets": jnp.asarray(np.roll(tokens, -1, axis=1))}
    logits = np.asarray(model(batch["tokens"], segment_ids=batch["segment_ids"], positions=batch["positions"]))
    for temperature, piece_len in ((1.0, 256), (0.7, 6)):  # one piece, and pieces that do not divide 20
        logp, entropy = token_stats(model, batch, temperature, piece_len)
        want_logp, want_entropy = _reference(logits, np.asarray(batch["targets"]), temperature)
        assert logp.shape == entropy.shape == tokens.shape
        np.testing.assert_allclose(logp, want_logp, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(entropy, want_entropy, rtol=1e-5, atol=1e-5)
