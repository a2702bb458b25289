"""Mixed precision: float32 masters, optimizer state and gradient sums under bfloat16 compute learn at
MemAgent's lr 1e-6 like a float32 run; the faults bfloat16 storage would bring are caught by the config."""

import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from memagent_jax.model.config import ModelConfig
from memagent_jax.model.transformer import Transformer
from memagent_jax.rl.optimizer import OptimizerConfig, make_optimizer
from memagent_jax.rl.packing import TrainSequence, micro_batches, pack
from memagent_jax.rl.precision import cast_floating, precision_problems, smallest_moving_learning_rate
from memagent_jax.rl.update import UpdateConfig, make_update_fn
from memagent_jax.run import configuration
from memagent_jax.run.config_error import ConfigError
from memagent_jax.run.settings import run_settings

CFG = ModelConfig(family="qwen2", vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16, qkv_bias=True, tie_word_embeddings=True,
                  rope_theta=10000.0, max_position_embeddings=256, initializer_range=0.02)
PAPER = OptimizerConfig(learning_rate=1e-6, warmup_steps=0, weight_decay=0.01, grad_clip=1.0)


def _sft_batch(seed: int, micro: int, rows_per_micro: int = 2) -> dict[str, jax.Array]:
    """Random sequences covering the vocabulary, packed into `micro` micro-batches of 64-token rows."""
    rng = np.random.default_rng(seed)
    seqs = [TrainSequence(list(map(int, rng.integers(1, CFG.vocab_size, 60))), 20)
            for _ in range(micro * rows_per_micro)]
    packed, _ = pack(seqs, row_len=64, max_segments=1, rows_multiple=rows_per_micro)
    return {k: jnp.asarray(v) for k, v in micro_batches(packed, rows_per_micro).items()}


def _train(dtype: str, param_dtype: str, steps: int, optimizer: OptimizerConfig = PAPER):
    """(initial masters, final masters, losses) of `steps` SFT updates from the same float32 start."""
    graphdef, start = nnx.split(Transformer(CFG, rngs=nnx.Rngs(0)))
    cfg = CFG.replace(dtype=dtype, param_dtype=param_dtype)
    graphdef = nnx.graphdef(Transformer(cfg, rngs=nnx.Rngs(0)))
    params = cast_floating(start, cfg.weight_dtype, copy=True)
    initial = jax.tree.map(np.asarray, params)
    tx = make_optimizer(optimizer)
    opt_state = tx.init(params)
    update = make_update_fn(graphdef, tx, UpdateConfig(objective="sft", max_segments=1))
    losses = []
    for step in range(steps):
        params, opt_state, metrics = update(params, opt_state, _sft_batch(step, micro=2))
        losses.append(float(metrics["loss"]))
    return initial, jax.tree.map(np.asarray, params), losses, opt_state


def test_bfloat16_compute_with_float32_masters_moves_every_weight_like_float32():
    steps = 4
    start, f32_end, f32_losses, _ = _train("float32", "float32", steps)
    _, mixed_end, mixed_losses, _ = _train("bfloat16", "float32", steps)
    f32_steps, mixed_steps = [], []
    for (path, a), b, c in zip(jax.tree_util.tree_leaves_with_path(start), jax.tree.leaves(f32_end),
                               jax.tree.leaves(mixed_end)):
        name, f32_step, mixed_step = jax.tree_util.keystr(path), (b - a).ravel(), (c - a).ravel()
        # As in float32, a few weights can end where they started when Adam's steps cancel.
        assert np.sum(mixed_step == 0) <= np.sum(f32_step == 0) + 0.01 * f32_step.size + 1, name
        # Adam's steps are ~lr each, in the same direction: bfloat16 compute only perturbs the gradients.
        # (Not for k_bias: shifting every key's score equally leaves the softmax alone, so its gradient is
        # zero but for rounding, and Adam scales that noise up to full steps in both runs.)
        if "k_bias" not in name:
            assert np.abs(mixed_step - f32_step).mean() < 0.05 * np.abs(f32_step).mean(), name
        f32_steps.append(f32_step)
        mixed_steps.append(mixed_step)
    f32_steps, mixed_steps = np.concatenate(f32_steps), np.concatenate(mixed_steps)
    assert np.abs(mixed_steps - f32_steps).mean() < 0.02 * np.abs(f32_steps).mean()
    np.testing.assert_allclose(mixed_losses, f32_losses, rtol=1e-4)
    # The fault this guards against: bfloat16 masters absorb almost none of the same updates.
    _, bf16_end, _, _ = _train("bfloat16", "bfloat16", steps)
    start_bf16 = jax.tree.map(lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16)), start)
    moved = [np.mean(e != s) for s, e in zip(jax.tree.leaves(start_bf16), jax.tree.leaves(bf16_end))
             if s.size > 1000]
    assert max(moved) < 0.2


def test_optimizer_state_stays_float32_and_the_second_moment_decays():
    """With bfloat16 params the moments are float32 (bfloat16(0.999) == 1.0 would freeze them): after the
    gradient scale drops 10x, the second moment decays as Adam's formula says, as for float32 params."""
    params32 = {"w": jnp.full((256,), 0.02, jnp.float32)}
    params16 = cast_floating(params32, jnp.bfloat16)
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-6, warmup_steps=0, grad_clip=0.0))
    update = jax.jit(tx.update)
    states = {name: tx.init(p) for name, p in (("f32", params32), ("bf16", params16))}
    rng = np.random.default_rng(0)
    for step in range(600):
        grad = rng.choice([-1.0, 1.0], size=256).astype(np.float32) * (1.0 if step < 300 else 0.1)
        for name, p in (("f32", params32), ("bf16", params16)):
            _, states[name] = update({"w": jnp.asarray(grad, p["w"].dtype)}, states[name], p)
    nu = {name: optax.tree.get(state, "nu")["w"] for name, state in states.items()}
    assert nu["bf16"].dtype == jnp.float32
    expected = (1 - 0.999**300) * 0.999**300 + 0.01 * (1 - 0.999**300)  # g^2 = 1, then 0.01
    np.testing.assert_allclose(nu["f32"], expected, rtol=1e-4)
    np.testing.assert_allclose(nu["bf16"], expected, rtol=2e-3)  # 0.1 is not exact in bfloat16


def _gradient_recorder() -> optax.GradientTransformation:
    """An 'optimizer' whose state is the last gradient it was given, exactly, and that leaves params alone."""
    return optax.GradientTransformation(lambda p: jax.tree.map(jnp.zeros_like, p),
                                        lambda g, state, params=None: (jax.tree.map(jnp.zeros_like, g), g))


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_micro_batch_gradient_sums_are_float32_under_bfloat16_compute(param_dtype):
    """The gradient the optimizer receives from 32 micro-batches equals the float64 sum of the micro-batches'
    own gradients to float32 precision, even when the params (and so each micro-batch's gradient) are
    bfloat16: a sum kept in the params' dtype was off by ~1e-3. The unsplit batch's gradient agrees within
    bfloat16 compute noise."""
    cfg = CFG.replace(dtype="bfloat16", param_dtype=param_dtype)
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(1)))
    recorder = _gradient_recorder()
    update = make_update_fn(graphdef, recorder, UpdateConfig(objective="sft", max_segments=1))
    batch = _sft_batch(7, micro=32, rows_per_micro=1)

    def gradient(b):
        _, received, _ = update(jax.tree.map(jnp.copy, params), recorder.init(params), b)
        return [np.asarray(g, np.float64) for g in jax.tree.leaves(received)]

    split = gradient(batch)
    # Alone, a micro-batch's loss is divided by its own tokens instead of the whole batch's: 32x (all
    # micro-batches hold the same number of response tokens, so the factor is exact).
    assert len({float(jnp.sum(m)) for m in batch["loss_mask"]}) == 1
    alone = [gradient({k: v[i:i + 1] for k, v in batch.items()}) for i in range(32)]
    reference = [sum(g[j] for g in alone) / 32 for j in range(len(split))]
    magnitude = [sum(np.abs(g[j]) for g in alone) / 32 for j in range(len(split))]
    unsplit = gradient({k: v.reshape(1, 32, *v.shape[2:]) for k, v in batch.items()})
    for s, r, m in zip(split, reference, magnitude):
        assert np.all(np.abs(s - r) <= 1e-5 * m + 1e-12)
    # One micro-batch of 32 rows runs other matmul shapes, so its bfloat16 roundings fall elsewhere (about
    # 1% of the gradient's norm here); float32 sums keep the split from adding anything to that.
    def flat(tree):
        return np.concatenate([x.ravel() for x in tree])

    assert np.linalg.norm(flat(split) - flat(unsplit)) <= 0.03 * np.linalg.norm(flat(reference))


def test_precision_problems_name_the_faults():
    assert smallest_moving_learning_rate(0.02, "bfloat16") == pytest.approx(0.5 * 0.02 * 2**-7)
    ok = dict(state_dtype="float32", learning_rate=1e-6, b1=0.9, b2=0.999, weight_scale=0.02)
    assert precision_problems(param_dtype="float32", **ok) == []
    [problem] = precision_problems(param_dtype="bfloat16", **ok)
    assert "cannot absorb learning rate 1e-06" in problem and "float32" in problem
    assert precision_problems(param_dtype="bfloat16", **{**ok, "learning_rate": 3e-3}) == []
    [problem] = precision_problems(param_dtype="float32", **{**ok, "state_dtype": "bfloat16"})
    assert "b2=0.999 to 1.0" in problem
    assert precision_problems(param_dtype="float32", **{**ok, "state_dtype": "bfloat16", "b2": 0.95}) == []


def _paper_like_config() -> ml_collections.ConfigDict:
    gpu8 = pathlib.Path(__file__).parent.parent / "configs" / "qwen2_5_7b_gpu8.py"
    config = configuration.load_config_file(str(gpu8))
    config.rl.steps = 1
    return config


def test_the_config_check_rejects_bfloat16_masters_or_state_at_the_papers_rate():
    run_settings(_paper_like_config())  # float32 masters and state: fine
    config = _paper_like_config()
    config.model.param_dtype = "bfloat16"
    with pytest.raises(ConfigError, match=r"config.model.param_dtype='bfloat16' with config.rl.optimizer .*"
                                          r"cannot absorb learning rate 1e-06"):
        run_settings(config)
    config = _paper_like_config()
    config.rl.optimizer.state_dtype = "bfloat16"
    with pytest.raises(ConfigError, match="never decay"):
        run_settings(config)
    config = _paper_like_config()
    config.rl.optimizer.state_dtype = "float16"
    with pytest.raises(ConfigError, match="state_dtype must be one of"):
        run_settings(config)


def test_resume_is_exact_with_float32_masters_under_bfloat16_compute(tmp_path):
    """Orbax round trip of float32 masters and Adam state mid-run: the resumed steps equal the uninterrupted
    ones bit for bit, and nothing comes back in another dtype."""
    from memagent_jax.run.checkpoint import Checkpointer, abstract_like

    cfg = CFG.replace(dtype="bfloat16", param_dtype="float32")
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(2)))
    tx = make_optimizer(PAPER)
    update = make_update_fn(graphdef, tx, UpdateConfig(objective="sft", max_segments=1))
    state = {"params": params, "opt_state": tx.init(params)}

    def run(state, steps):
        for step in steps:
            p, o, _ = update(jax.tree.map(jnp.copy, state["params"]), jax.tree.map(jnp.copy, state["opt_state"]),
                             _sft_batch(step, micro=2))
            state = {"params": p, "opt_state": o}
        return state

    middle = run(state, range(2))
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(2, middle, rng=jax.random.key(0), data_state={}, config={})
        restored = ckpt.restore(abstract_like(middle)).state
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(middle), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert {x.dtype for x in jax.tree.leaves(restored["params"])} == {jnp.dtype(jnp.float32)}
    resumed, straight = run(restored, range(2, 4)), run(middle, range(2, 4))
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
