"""AdamW settings: warm-up and schedules, clipping, and optimizer state placed like the parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from memagent_jax.model.config import get_preset
from memagent_jax.model.sharding import DEFAULT_RULES, create_sharded, make_mesh
from memagent_jax.model.transformer import Transformer
from memagent_jax.rl.optimizer import (
    OptimizerConfig,
    init_optimizer_state,
    learning_rate_schedule,
    make_optimizer,
    optimizer_state_shardings,
)


def test_warmup_then_constant_as_in_memagent():
    schedule = learning_rate_schedule(OptimizerConfig(learning_rate=1e-6, warmup_steps=20))
    rates = [float(schedule(step)) for step in range(25)]
    assert rates[0] == pytest.approx(1e-6 / 20)
    np.testing.assert_allclose(np.diff(rates[:20]), 1e-6 / 20, rtol=1e-4)
    assert rates[19] == pytest.approx(1e-6) and rates[24] == pytest.approx(1e-6)


def test_cosine_and_linear_decay_reach_the_end_rate():
    for kind in ("cosine", "linear"):
        cfg = OptimizerConfig(learning_rate=1.0, warmup_steps=10, schedule=kind, total_steps=110, end_lr_fraction=0.1)
        schedule = learning_rate_schedule(cfg)
        assert float(schedule(10)) == pytest.approx(1.0)
        assert float(schedule(110)) == pytest.approx(0.1, abs=1e-6)
        assert float(schedule(60)) < 1.0


def test_the_real_optimizer_clips_to_the_global_norm():
    """make_optimizer's own chain, checked against NumPy: the gradient reaching Adam is
    grads * min(1, clip / ||grads||), so a make_optimizer that lost its clip fails here."""
    grads = {"a": np.array([3.0, -4.0, 12.0], np.float32), "b": np.array([[20.0, 0.5]], np.float32)}
    norm = np.sqrt(sum(np.sum(np.square(g)) for g in grads.values()))
    eps = 1.0  # a large eps makes Adam's first step g / (|g| + eps) depend on the gradient's scale
    for clip, scale in ((1.0, 1.0 / norm), (100.0, 1.0), (0.0, 1.0)):  # clipped; under the limit; 0 = off
        optimizer = make_optimizer(OptimizerConfig(learning_rate=1.0, warmup_steps=0, grad_clip=clip,
                                                   weight_decay=0.0, b1=0.0, b2=0.5, eps=eps))
        params = {k: jnp.zeros_like(v) for k, v in grads.items()}
        updates, _ = optimizer.update({k: jnp.asarray(v) for k, v in grads.items()}, optimizer.init(params), params)
        for key, grad in grads.items():
            clipped = grad * scale
            # Adam's first step with bias correction: m_hat = g, v_hat = g^2 (whatever b1, b2).
            want = -clipped / (np.abs(clipped) + eps)
            np.testing.assert_allclose(np.asarray(updates[key]), want, rtol=1e-5, err_msg=f"{key}, clip {clip}")


def test_optimizer_state_is_sharded_like_the_params():
    mesh = make_mesh({"fsdp": -1})
    model = create_sharded(lambda: Transformer(get_preset("tiny"), rngs=nnx.Rngs(0)), mesh, DEFAULT_RULES)
    _, params = nnx.split(model)
    optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=2))
    state = init_optimizer_state(optimizer, params)
    adam = state[1][0]
    for moment in (adam.mu, adam.nu):
        for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(moment)):
            assert m.sharding == p.sharding
    assert isinstance(adam.count.sharding, NamedSharding) and adam.count.sharding.spec == PartitionSpec()
    assert any(any(axis is not None for axis in p.sharding.spec) for p in jax.tree.leaves(params))  # really split


def test_abstract_optimizer_shardings_are_the_ones_training_places():
    # The memory budget traces ShapeDtypeStructs through optimizer_state_shardings: same rule, same answer.
    mesh = make_mesh({"fsdp": -1})
    model = create_sharded(lambda: Transformer(get_preset("tiny"), rngs=nnx.Rngs(0)), mesh, DEFAULT_RULES)
    _, params = nnx.split(model)
    optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=2))
    placed = jax.tree.map(lambda x: x.sharding, init_optimizer_state(optimizer, params))
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    abstract, shardings = optimizer_state_shardings(optimizer, abstract_params,
                                                    jax.tree.map(lambda x: x.sharding, params),
                                                    NamedSharding(mesh, PartitionSpec()))
    assert jax.tree.structure(abstract) == jax.tree.structure(placed)
    assert jax.tree.leaves(shardings) == jax.tree.leaves(placed)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="learning_rate"):
        OptimizerConfig(learning_rate=0.0)
    with pytest.raises(ValueError, match="total_steps"):
        OptimizerConfig(schedule="cosine", total_steps=5, warmup_steps=10)
    with pytest.raises(ValueError, match="schedule"):
        OptimizerConfig(schedule="step")
