"""The jitted update: micro-batch splits give the same step, gradients match an unpacked computation,
bad steps are skipped, SFT learns."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from memagent_jax.model.config import ModelConfig
from memagent_jax.model.transformer import Transformer
from memagent_jax.rl import grpo
from memagent_jax.rl.packing import TrainSequence, micro_batches, pack
from memagent_jax.rl.update import UpdateConfig, make_logprob_fn, make_update_fn

CFG = ModelConfig(family="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16, qkv_bias=True, tie_word_embeddings=True,
                  rope_theta=10000.0, max_position_embeddings=256, initializer_range=0.2)


@pytest.fixture(scope="module")
def model_state():
    graphdef, state = nnx.split(Transformer(CFG, rngs=nnx.Rngs(3)))
    _, ref_state = nnx.split(Transformer(CFG, rngs=nnx.Rngs(4)))
    return graphdef, state, ref_state


def _sequences(seed, count=7):
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(count):
        n, p = int(rng.integers(6, 20)), int(rng.integers(2, 5))
        seqs.append(TrainSequence(list(map(int, rng.integers(1, CFG.vocab_size, n))), p,
                                  advantage=float(rng.normal()), sampler_logprobs=list(rng.normal(-3, 0.1, n - p))))
    return seqs


_LOGPROB_FNS = {}


def _logprobs(graphdef, cfg):
    # One jitted function per graph and settings: every test shares its compilations.
    key = (graphdef, cfg.temperature, cfg.piece_len)
    if key not in _LOGPROB_FNS:
        _LOGPROB_FNS[key] = make_logprob_fn(graphdef, cfg)
    return _LOGPROB_FNS[key]


def _batch(graphdef, state, ref_state, seqs, cfg, rows_per_micro, perturb_old=0.0):
    packed, _ = pack(seqs, row_len=24, max_segments=cfg.max_segments, rows_multiple=rows_per_micro)
    micro = {k: jnp.asarray(v) for k, v in micro_batches(packed, rows_per_micro).items()}
    logprobs = _logprobs(graphdef, cfg)
    micro["old_logp"] = logprobs(state, micro)[0] + perturb_old  # an older policy: ratios != 1
    micro["ref_logp"] = logprobs(ref_state, micro)[0]
    return micro


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


@pytest.mark.parametrize("aggregation", grpo.AGGREGATIONS)
def test_micro_batch_split_does_not_change_the_step(model_state, aggregation):
    graphdef, state, ref_state = model_state
    cfg = UpdateConfig(loss=grpo.LossConfig(aggregation=aggregation, kl_coef=0.1, clip_high=0.28), max_segments=4)
    seqs = _sequences(0)
    optimizer = optax.sgd(1.0)
    update = make_update_fn(graphdef, optimizer, cfg)
    results = []
    for rows in (1, 8):
        batch = _batch(graphdef, state, ref_state, seqs, cfg, rows, perturb_old=0.3)
        new, _, metrics = update(_copy(state), optimizer.init(state), batch)
        results.append((new, metrics))
    for new, metrics in results[1:]:
        for a, b in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(new)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(metrics["loss"], results[0][1]["loss"], rtol=1e-5, atol=1e-6)
    assert float(results[0][1]["clipped"]) > 0  # the perturbed old policy made some clips active


def test_gradient_equals_the_unpacked_sequence_by_sequence_loss(model_state):
    graphdef, state, ref_state = model_state
    loss_cfg = grpo.LossConfig(kl_coef=0.05, dual_clip=3.0, clip_low=0.2, clip_high=0.3)
    cfg = UpdateConfig(loss=loss_cfg, max_segments=4)
    seqs = _sequences(1)
    batch = _batch(graphdef, state, ref_state, seqs, cfg, 2)
    offset = 0.1  # old policy = current - 0.1 nats on every token

    @jax.jit
    def direct(params):
        total, count = 0.0, 0
        for seq in seqs:
            tokens = jnp.asarray([seq.tokens])
            logits = nnx.merge(graphdef, params)(tokens[:, :-1])
            ref_logits = nnx.merge(graphdef, ref_state)(tokens[:, :-1])
            logp = grpo.token_logprobs(logits, tokens[:, 1:])[0, seq.prompt_len - 1:]
            ref = grpo.token_logprobs(ref_logits, tokens[:, 1:])[0, seq.prompt_len - 1:]
            old = jax.lax.stop_gradient(logp) - offset
            loss, _ = grpo.ppo_token_loss(logp, old, jnp.full_like(logp, seq.advantage), 0.2, 0.3, 3.0)
            total = total + jnp.sum(loss + 0.05 * grpo.kl_penalty(logp, ref, "k3"))
            count += logp.shape[0]
        return total / count

    expected_loss, expected = jax.value_and_grad(direct)(state)
    batch["old_logp"] = _logprobs(graphdef, cfg)(state, batch)[0] - offset
    optimizer = optax.sgd(1.0)
    new, _, metrics = make_update_fn(graphdef, optimizer, cfg)(_copy(state), optimizer.init(state), batch)
    np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-5)
    got = jax.tree.map(lambda old, upd: old - upd, state, new)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    assert float(metrics["grad_norm"]) == pytest.approx(float(optax.tree.norm(expected)), rel=1e-4)


def test_non_finite_step_is_skipped_and_leaves_everything_unchanged(model_state):
    graphdef, state, ref_state = model_state
    cfg = UpdateConfig(max_segments=4)
    batch = _batch(graphdef, state, ref_state, _sequences(2), cfg, 2)
    where = np.argwhere(np.asarray(batch["loss_mask"]) > 0)[0]
    batch["advantages"] = batch["advantages"].at[tuple(where)].set(jnp.inf)
    optimizer = optax.adamw(1e-2)
    opt_state = optimizer.init(state)
    new, new_opt, metrics = make_update_fn(graphdef, optimizer, cfg)(_copy(state), _copy(opt_state), batch)
    assert float(metrics["skipped"]) == 1.0
    for a, b in zip(jax.tree.leaves((state, opt_state)), jax.tree.leaves((new, new_opt))):
        np.testing.assert_array_equal(a, b)


def test_sft_lowers_the_response_loss(model_state):
    graphdef, state, _ = model_state
    cfg = UpdateConfig(objective="sft", max_segments=4)
    seqs = _sequences(3, count=4)
    packed, _ = pack(seqs, row_len=24, max_segments=4, rows_multiple=2)
    batch = {k: jnp.asarray(v) for k, v in micro_batches(packed, 2).items()}
    optimizer = optax.adam(1e-2)
    update = make_update_fn(graphdef, optimizer, cfg)
    params, opt_state = _copy(state), optimizer.init(state)
    losses = []
    for _ in range(30):
        params, opt_state, metrics = update(params, opt_state, batch)
        losses.append(float(metrics["nll"]))
    assert losses[0] > 3.0 and losses[-1] < 0.5 * losses[0]


def test_config_errors_are_plain_words():
    with pytest.raises(ValueError, match="objective"):
        UpdateConfig(objective="ppo")
    with pytest.raises(ValueError, match="temperature"):
        UpdateConfig(temperature=0.0)


def test_fsdp_sharded_policy_step_equals_the_single_device_one(model_state):
    from fixture_model import shard_module
    from memagent_jax.model.sharding import DEFAULT_RULES, make_mesh
    from memagent_jax.rl.optimizer import OptimizerConfig
    from memagent_jax.rl.policy import BatchShape, Policy

    graphdef, state, _ = model_state
    seqs = _sequences(4, count=10)
    opt = OptimizerConfig(learning_rate=1e-2, warmup_steps=0)
    update = UpdateConfig(loss=grpo.LossConfig(kl_coef=0.01), max_segments=4)
    shape = BatchShape(row_len=24, rows_per_micro=8)
    results = []
    for mesh in (make_mesh({"fsdp": 1}, jax.devices()[:1]), make_mesh({"fsdp": 4, "tensor": 2})):
        model = shard_module(nnx.merge(graphdef, _copy(state)), mesh, DEFAULT_RULES)
        policy = Policy(model, mesh, DEFAULT_RULES, opt, update, shape)
        metrics = policy.train([seqs[:5], seqs[5:]])
        assert metrics["updates"] == 2 and metrics["skipped"] == 0
        results.append((policy, metrics))
    (single, m1), (sharded, m2) = results
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params)):
        # Adam divides by sqrt(v): float32 reduction-order differences of ~1e-7 in a gradient become ~1e-6.
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)
    # The update kept the training layout: FSDP/tensor-split weights and moments stay split.
    specs = {tuple(x.sharding.spec) for x in jax.tree.leaves(sharded.params)}
    assert any(any(axis is not None for axis in spec) for spec in specs)
    for p, m in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(sharded.opt_state[1][0].mu)):
        assert m.sharding == p.sharding
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-4, abs=1e-6)
    assert m1["padding_fraction"] == m2["padding_fraction"] and 0 < m1["padding_fraction"] < 1


def test_remat_gives_the_same_step(model_state):
    graphdef, state, ref_state = model_state
    seqs = _sequences(5)
    optimizer = optax.sgd(1.0)
    results = []
    for remat in (False, True):
        cfg = UpdateConfig(loss=grpo.LossConfig(kl_coef=0.0), max_segments=4, remat=remat)
        batch = _batch(graphdef, state, ref_state, seqs, cfg, 2)
        new, _, _ = make_update_fn(graphdef, optimizer, cfg)(_copy(state), optimizer.init(state), batch)
        results.append(new)
    for a, b in zip(*(jax.tree.leaves(r) for r in results)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_logprobs_of_empty_padding_micro_batches_are_zero_and_real_ones_match(model_state):
    graphdef, state, ref_state = model_state
    cfg = UpdateConfig(max_segments=4)
    seqs = _sequences(6, count=7)
    packed, stats = pack(seqs, row_len=24, max_segments=4, rows_multiple=1)
    assert stats.rows in (3, 5, 6, 7)  # not a power of two
    batch = {k: jnp.asarray(v) for k, v in micro_batches(packed, 1).items()}
    assert batch["tokens"].shape[0] > stats.rows  # padded to a power of two
    logp, _ = _logprobs(graphdef, cfg)(state, batch)
    assert float(jnp.abs(logp[stats.rows:]).sum()) == 0.0
    model = nnx.merge(graphdef, state)
    for row in range(stats.rows):
        micro = {k: v[row] for k, v in batch.items()}
        logits = model(micro["tokens"], segment_ids=micro["segment_ids"], positions=micro["positions"])
        expected = grpo.token_logprobs(logits, micro["targets"])
        real = np.asarray(micro["segment_ids"]) > 0
        np.testing.assert_allclose(np.asarray(logp[row])[real], np.asarray(expected)[real], rtol=1e-5, atol=1e-5)
