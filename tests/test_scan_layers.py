"""The scan over decoder layers (Transformer.hidden_states(scan=True), UpdateConfig.scan_layers): the same
numbers as the unrolled layers, a program that does not grow with depth, and per-layer remat that holds."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memagent_jax.model import sharding
from memagent_jax.model.config import ModelConfig
from memagent_jax.model.transformer import Transformer, stack_layer_weights
from memagent_jax.rl.logprobs import token_stats

CFG = ModelConfig(family="qwen2", vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4,
                  num_kv_heads=2, head_dim=8, qkv_bias=True, tie_word_embeddings=False, initializer_range=0.2)


def _batch(rows: int = 2, length: int = 256, seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    # Two packed segments per row and some padding, so masks and positions matter.
    segments = np.zeros((rows, length), np.int32)
    segments[:, : length // 3] = 1
    segments[:, length // 3: length - 10] = 2
    positions = np.zeros_like(segments)
    for row in range(rows):
        for seg in (1, 2):
            where = np.flatnonzero(segments[row] == seg)
            positions[row, where] = np.arange(len(where))
    return {"tokens": jnp.asarray(rng.integers(1, 97, (rows, length)), jnp.int32),
            "targets": jnp.asarray(rng.integers(1, 97, (rows, length)), jnp.int32),
            "segment_ids": jnp.asarray(segments), "positions": jnp.asarray(positions)}


@functools.lru_cache(maxsize=None)
def _loss_and_grads(cfg: ModelConfig, scan: bool, remat: bool, piece_len: int = 64):
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(1)))
    batch = _batch(length=192)

    def loss(p):
        logp, entropy = token_stats(nnx.merge(graphdef, p), batch, 0.7, piece_len, remat=remat, scan=scan)
        return jnp.sum(logp * (batch["segment_ids"] > 0)) + 0.1 * jnp.sum(entropy), (logp, entropy)

    (_, (logp, entropy)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logp, entropy, grads


@pytest.mark.parametrize("remat", [False, True])
def test_scan_gives_the_unrolled_numbers_in_float32(remat):
    # The same arithmetic; XLA may fuse a loop body differently from unrolled code (jax 0.10.2 gives identical
    # bits here, jax 0.12.1 differs in the last bits of 13% of the log-probs): equal to float32 rounding.
    logp, entropy, grads = _loss_and_grads(CFG, scan=False, remat=False)
    logp_s, entropy_s, grads_s = _loss_and_grads(CFG, scan=True, remat=remat)
    np.testing.assert_allclose(logp_s, logp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(entropy_s, entropy, rtol=1e-5, atol=1e-6)
    flat, flat_s = jax.tree.leaves(grads), jax.tree.leaves(grads_s)
    assert len(flat) == len(flat_s)
    for g, g_s in zip(flat, flat_s, strict=True):
        assert g.shape == g_s.shape and g.dtype == g_s.dtype
        # Gradients sum many tokens' terms: their rounding scales with the largest entry, not each one.
        np.testing.assert_allclose(g_s, g, rtol=1e-4, atol=1e-5 * float(np.abs(g).max()))


@pytest.mark.slow
def test_scan_in_bfloat16_keeps_float32_master_gradients():
    cfg = CFG.replace(dtype="bfloat16", param_dtype="float32")
    logp, _, grads = _loss_and_grads(cfg, scan=False, remat=False)
    logp_s, _, grads_s = _loss_and_grads(cfg, scan=True, remat=True)
    assert {g.dtype for g in jax.tree.leaves(grads_s)} == {jnp.dtype(jnp.float32)}
    # Same roundings, possibly fused differently: within bfloat16's resolution of the log-probs.
    np.testing.assert_allclose(logp_s, logp, atol=0.05)


def test_stacked_weights_are_the_layers_in_the_compute_dtype():
    model = Transformer(CFG.replace(dtype="bfloat16", param_dtype="float32"), rngs=nnx.Rngs(0))
    _, stacked = stack_layer_weights(list(model.layers), jnp.bfloat16)
    q = stacked["self_attn"]["q_proj"][...]
    assert q.shape == (CFG.num_layers, *model.layers[0].self_attn.q_proj[...].shape) and q.dtype == jnp.bfloat16
    np.testing.assert_array_equal(q[2], model.layers[2].self_attn.q_proj[...].astype(jnp.bfloat16))


def _dot_count(layers: int, scan: bool) -> int:
    """dot_general ops in the lowered gradient program of a `layers`-deep model."""
    cfg = CFG.replace(num_layers=layers)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    row = jax.ShapeDtypeStruct((1, 512), jnp.int32)
    batch = {"tokens": row, "segment_ids": row, "positions": row, "targets": row}

    def loss(p, b):
        logp, _ = token_stats(nnx.merge(graphdef, p), b, 1.0, 128, remat=True, scan=scan)
        return jnp.sum(logp)

    text = jax.jit(jax.grad(loss)).lower(params, batch).as_text()
    return len(re.findall(r"dot_general", text))


def test_the_scanned_program_does_not_grow_with_depth():
    # Unrolled, every layer and every 128-token attention block and LM-head piece is its own code.
    assert _dot_count(4, scan=False) > 1.8 * _dot_count(2, scan=False)
    assert _dot_count(8, scan=True) == _dot_count(2, scan=True) < _dot_count(2, scan=False)


def _backward_temp_bytes(cfg: ModelConfig, row_len: int) -> int:
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    row = jax.ShapeDtypeStruct((1, row_len), jnp.int32)
    batch = {"tokens": row, "segment_ids": row, "positions": row, "targets": row}

    def loss(p, b):
        logp, entropy = token_stats(nnx.merge(graphdef, p), b, 1.0, 256, remat=True, scan=True)
        return jnp.sum(logp) + jnp.sum(entropy)

    return jax.jit(jax.grad(loss)).lower(params, batch).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_scanned_remat_keeps_one_residual_per_layer():
    """What one more layer costs XLA's buffer assignment under scan + remat: its float32 input (what the memory
    budget's remat estimate counts) plus its share of the stacked weight copy and that copy's gradient (the
    budget's compute_weights), not the layer's intermediates."""
    from memagent_jax.run import memory_budget

    row_len, hidden = 1024, 256
    base = ModelConfig(family="qwen2", vocab_size=2048, hidden_size=hidden, intermediate_size=768, num_layers=2,
                       num_heads=8, num_kv_heads=2, head_dim=32, qkv_bias=True)
    per_layer = (_backward_temp_bytes(base.replace(num_layers=4), row_len)
                 - _backward_temp_bytes(base.replace(num_layers=2), row_len)) / 2
    residual = row_len * hidden * 4
    layer_weights = 4 * (base.num_params - base.replace(num_layers=1).num_params)
    assert residual <= per_layer <= residual + 2 * layer_weights
    mesh = jax.sharding.AbstractMesh((1, 1, 1), sharding.MESH_AXES)
    unrolled_estimate = memory_budget.activation_bytes(base.replace(num_layers=1), mesh, sharding.DEFAULT_RULES,
                                                       row_len=row_len, rows_per_micro=1)
    assert per_layer < unrolled_estimate / 4  # far below what a layer keeps without remat
