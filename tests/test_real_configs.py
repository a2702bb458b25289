"""The real-scale configs (Qwen2.5-7B on 8 GPUs, Qwen2.5-14B on a TPU v5p-64 slice) and the memory budget
that says whether they fit, computed abstractly on fake CPU devices (nothing of real size is allocated).

The TPU slice has 32 JAX devices; this process has 8, so its mesh is a jax.sharding.AbstractMesh, whose
per-device numbers are checked here to equal those of a concrete mesh of the same shape.
"""

from __future__ import annotations

import math
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from flax import nnx
from jax.sharding import AbstractMesh

from fixture_model import shard_module
from memagent_jax.model import sharding
from memagent_jax.model.config import ModelConfig, get_preset
from memagent_jax.model.transformer import Transformer
from memagent_jax.rl.logprobs import token_stats
from memagent_jax.rl.optimizer import OptimizerConfig, init_optimizer_state, make_optimizer
from memagent_jax.run import configuration, memory_budget
from memagent_jax.run.budget_check import check_run_budget, config_budget, device_memory_bytes
from memagent_jax.run.memory_budget import DEVICE_MEMORY_BYTES, check_fits, format_budget, per_device_budget
from memagent_jax.run.settings import run_settings

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
GPU8 = CONFIGS / "qwen2_5_7b_gpu8.py"
TPU_V5P = CONFIGS / "qwen2_5_14b_tpu_v5p.py"
V5P_64_DEVICES = 32  # v5p-64 = 64 TensorCores = 32 chips; one JAX (megacore) device per chip


def _flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, type]:
    out: dict[str, type] = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = config.get_type(key)  # a placeholder's declared type, even when None
    return out


def _budget(config: ml_collections.ConfigDict, mesh, *, remat_layers: bool | None = None) -> memory_budget.Budget:
    return config_budget(config, run_settings(config), mesh, remat_layers=remat_layers)


def _mesh_sizes(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    shape = configuration.mesh_shape(config.mesh)
    return tuple(shape[axis] for axis in sharding.MESH_AXES)


@pytest.mark.parametrize("path", [GPU8, TPU_V5P], ids=["7b_gpu8", "14b_tpu_v5p"])
def test_real_config_is_valid_with_the_papers_settings(path):
    config = configuration.load_config_file(str(path))
    quickstart = configuration.load_config_file(str(CONFIGS / "quickstart.py"))
    assert _flatten(config) == _flatten(quickstart)  # same keys and value types: same overrides work
    settings = run_settings(config)  # must not raise
    model_cfg = configuration.build_model_config(config.model)
    assert (model_cfg.dtype, model_cfg.param_dtype) == ("bfloat16", "float32")  # bfloat16 compute, float32 masters
    assert config.tokenizer.path == config.model.checkpoint
    agent, rl, loss, opt = settings.agent, settings.rl, settings.rl_update.loss, settings.rl_optimizer
    assert (agent.chunk_size, agent.max_memory_tokens, agent.max_answer_tokens, agent.max_question_tokens) == \
        (5000, 1024, 1024, 1024)
    assert (agent.temperature, agent.top_p, rl.group_size) == (1.0, 1.0, 16)
    assert rl.batch_size // rl.mini_batch_size == 16 and not rl.experience.normalize_std
    assert (loss.clip_low, loss.clip_high, loss.dual_clip, loss.kl_coef, loss.kl_estimator, loss.aggregation) == \
        (0.2, 0.2, 3.0, 0.001, "k3", "token-mean")
    assert loss.tis_cap == 2.0  # bfloat16 engine and trainer: truncated importance sampling corrects the gap
    assert (opt.learning_rate, opt.warmup_steps, opt.schedule, opt.weight_decay, opt.grad_clip) == \
        (1e-6, 20, "constant", 0.01, 1.0)
    assert settings.shape.ppo_epochs == 1 and config.sft.steps == 0
    # ~8K context: question, memory and chunk plus a template allowance fit the engine's prompts.
    assert settings.engine.max_prompt_len >= 1024 + 1024 + 5000 + 400
    assert settings.engine.max_seq_len >= settings.engine.max_prompt_len + 1024
    assert settings.shape.row_len % memory_budget.ATTENTION_BLOCK == 0  # blocked attention, no dense [T, T]
    data_parallel = config.mesh.data * config.mesh.fsdp
    assert settings.shape.rows_per_micro % data_parallel == 0


def test_7b_on_8_gpus_fits_an_h100_with_per_layer_remat():
    config = configuration.load_config_file(str(GPU8))
    assert configuration.build_model_config(config.model) == get_preset("qwen2.5-7b")
    assert math.prod(_mesh_sizes(config)) == 8
    mesh = sharding.make_mesh(configuration.mesh_shape(config.mesh))  # the 8 fake CPU devices
    device = DEVICE_MEMORY_BYTES["H100"]
    assert config.train.remat  # the configs train with per-layer rematerialisation
    current, remat = _budget(config, mesh, remat_layers=False), _budget(config, mesh)
    print("\nQwen2.5-7B, 8 x H100, mesh", dict(mesh.shape), "\n" + format_budget(current, device))
    print("with per-layer remat\n" + format_budget(remat, device))
    # An abstract mesh of the same shape gives the same numbers (the TPU test relies on it).
    assert _budget(config, AbstractMesh(_mesh_sizes(config), sharding.MESH_AXES)) == remat
    check_fits(remat, device)
    # Why remat is on: without it one 8.7K-token row's activations alone exceed the GPU.
    with pytest.raises(ValueError, match="activations"):
        check_fits(current, device)
    assert current.activations > device


def test_14b_on_tpu_v5p_64_fits_a_chip_with_per_layer_remat():
    config = configuration.load_config_file(str(TPU_V5P))
    assert configuration.build_model_config(config.model) == get_preset("qwen2.5-14b")
    assert math.prod(_mesh_sizes(config)) == V5P_64_DEVICES
    mesh = AbstractMesh(_mesh_sizes(config), sharding.MESH_AXES)
    device = DEVICE_MEMORY_BYTES["TPU v5p"]
    assert config.train.remat  # the configs train with per-layer rematerialisation
    current, remat = _budget(config, mesh, remat_layers=False), _budget(config, mesh)
    print("\nQwen2.5-14B, TPU v5p-64 (32 chips), mesh", dict(mesh.shape), "\n" + format_budget(current, device))
    print("with per-layer remat\n" + format_budget(remat, device))
    model_cfg = configuration.build_model_config(config.model)
    # Float32 masters, Adam moments and gradient sums, FSDP x TP over all 32 chips in training; bfloat16 for
    # the KL reference and the compute copies there, and for the engine's weights, TP over 8.
    per_chip = model_cfg.num_params / V5P_64_DEVICES
    assert remat.params == pytest.approx(4 * per_chip, rel=0.01)
    assert remat.optimizer == pytest.approx(8 * per_chip, rel=0.01)
    assert remat.gradients == pytest.approx(8 * per_chip, rel=0.01)
    # The scan over layers stacks a bfloat16 copy of the weights and builds that stack's gradient.
    assert 2 * remat.reference == remat.compute_weights == pytest.approx(4 * per_chip, rel=0.01)
    assert remat.rollout_weights == pytest.approx(2 * model_cfg.num_params / 8, rel=0.01)
    check_fits(remat, device)
    with pytest.raises(ValueError, match="activations"):
        check_fits(current, device)


def test_14b_on_one_chip_does_not_fit_and_names_the_weights():
    model_cfg = get_preset("qwen2.5-14b")
    mesh = AbstractMesh((1, 1, 1), sharding.MESH_AXES)
    budget = per_device_budget(model_cfg, mesh, sharding.DEFAULT_RULES,
                               optimizer=make_optimizer(OptimizerConfig()), kv_pages=1024, page_size=16,
                               row_len=8704, rows_per_micro=1, remat_layers=True)
    assert budget.params == 4 * model_cfg.num_params  # float32 masters, unsharded
    assert budget.optimizer >= 2 * budget.params  # AdamW's two moments
    with pytest.raises(ValueError) as err:
        check_fits(budget, DEVICE_MEMORY_BYTES["TPU v5p"])
    message = str(err.value)
    assert "95.0 GB" in message and "optimizer" in message and "params" in message


def _per_device_bytes(tree) -> set[int]:
    """Bytes each device actually holds of a tree of placed arrays (one value when all devices agree)."""
    held: dict[jax.Device, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return set(held.values())


def test_budget_matches_real_allocation_on_tiny():
    model_cfg = get_preset("tiny")
    mesh = sharding.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    rules = sharding.DEFAULT_RULES
    optimizer = make_optimizer(OptimizerConfig(weight_decay=0.01))
    model = sharding.create_sharded(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)), mesh, rules)
    params = nnx.state(model)
    opt_state = init_optimizer_state(optimizer, params)
    budget = per_device_budget(model_cfg, mesh, rules, optimizer=optimizer, kv_pages=64, page_size=16,
                               row_len=256, rows_per_micro=8)
    assert _per_device_bytes(params) == {budget.params}
    assert _per_device_bytes(opt_state) == {budget.optimizer}
    assert budget.params < 4 * model_cfg.num_params  # really sharded, not replicated

    # Training and rollout layouts that differ, on a mixed mesh: 2 KV heads stay whole on 4-way tensor.
    mixed = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    rollout_rules = tuple((n, None) if n == "embed" else (n, t) for n, t in rules)
    trained = shard_module(model, mixed, rules)
    rollout = jax.device_put(nnx.state(trained), sharding.state_shardings(nnx.state(trained), mixed, rollout_rules))
    budget = per_device_budget(model_cfg, mixed, rules, optimizer=optimizer, kv_pages=64, page_size=16,
                               rollout_rules=rollout_rules, row_len=256, rows_per_micro=2)
    assert _per_device_bytes(nnx.state(trained)) == {budget.params}
    assert _per_device_bytes(rollout) == {budget.rollout_weights}
    assert budget.kv_cache == 2 * 4 * 2 * 32 * 64 * 16 * 4  # k+v, layers, kv heads, head_dim, tokens, float32


def test_budget_matches_real_allocation_with_float32_masters_and_bfloat16_copies():
    """Float32 masters and Adam state in training, the KL reference and the engine's copy in bfloat16: each
    budget item against what the real Policy and RolloutLayout allocate per device."""
    from memagent_jax.rl.policy import BatchShape, Policy
    from memagent_jax.rl.rollout_layout import RolloutLayout
    from memagent_jax.rl.update import UpdateConfig

    model_cfg = get_preset("tiny", dtype="bfloat16", param_dtype="float32")
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    rules = sharding.DEFAULT_RULES
    rollout_rules = tuple((n, None) if n == "embed" else (n, t) for n, t in rules)
    model = sharding.create_sharded(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)), mesh, rules)
    policy = Policy(model, mesh, rules, OptimizerConfig(), UpdateConfig(), BatchShape(row_len=256, rows_per_micro=2))
    rollout = RolloutLayout(policy.params, mesh, rollout_rules, model_cfg.compute_dtype).place(policy.params)
    budget = per_device_budget(model_cfg, mesh, rules, optimizer=policy.optimizer, kv_pages=64, page_size=16,
                               rollout_rules=rollout_rules, row_len=256, rows_per_micro=2)
    assert _per_device_bytes(policy.params) == {budget.params}
    assert _per_device_bytes(policy.opt_state) == {budget.optimizer}
    assert _per_device_bytes(policy.reference) == {budget.reference} == {budget.params // 2}
    assert _per_device_bytes(rollout) == {budget.rollout_weights}
    assert {x.dtype for x in jax.tree.leaves(rollout)} == {jnp.dtype(jnp.bfloat16)}
    assert budget.gradients == 2 * budget.params and budget.compute_weights == budget.reference


def _xla_backward_bytes(model_cfg: ModelConfig, row_len: int) -> int:
    """XLA's compiled temporary bytes for the gradient of one row's token log-probs and entropies."""
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0))))
    row = jax.ShapeDtypeStruct((1, row_len), jnp.int32)
    batch = {"tokens": row, "segment_ids": row, "positions": row, "targets": row}

    def loss(p, b):
        logp, entropy = token_stats(nnx.merge(graphdef, p), b, 1.0, 256)
        return jnp.sum(logp) + jnp.sum(entropy)

    return jax.jit(jax.grad(loss)).lower(params, batch).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("heads, row_len", [(8, 1024), (16, 512)])
def test_activation_estimate_matches_xla_per_layer(heads, row_len):
    """The per-layer activation formula against XLA's buffer assignment (float32 on CPU, where the compiled
    sizes are exact): the difference between a 2-layer and a 1-layer model is what one layer keeps."""
    base = ModelConfig(family="qwen2", vocab_size=2048, hidden_size=256, intermediate_size=768, num_layers=2,
                       num_heads=heads, num_kv_heads=2, head_dim=32, qkv_bias=True)
    mesh = AbstractMesh((1, 1, 1), sharding.MESH_AXES)
    estimate = {layers: memory_budget.activation_bytes(base.replace(num_layers=layers), mesh, sharding.DEFAULT_RULES,
                                                       row_len=row_len, rows_per_micro=1)
                for layers in (1, 2)}
    measured = {layers: _xla_backward_bytes(base.replace(num_layers=layers), row_len) for layers in (1, 2)}
    per_layer_estimate = estimate[2] - estimate[1]
    per_layer_measured = measured[2] - measured[1]
    print(f"\nper layer: estimate {per_layer_estimate / 1e6:.1f} MB, XLA {per_layer_measured / 1e6:.1f} MB")
    assert per_layer_estimate == pytest.approx(per_layer_measured, rel=0.15)


def test_a_run_that_cannot_fit_stops_before_allocating_with_the_table():
    config = configuration.load_config_file(str(GPU8))
    settings = run_settings(config)
    mesh = AbstractMesh(_mesh_sizes(config), sharding.MESH_AXES)
    table = check_run_budget(config, settings, mesh, device_bytes=DEVICE_MEMORY_BYTES["H100"])
    assert "kv_cache" in table and "total" in table
    with pytest.raises(configuration.ConfigError, match="does not fit in device memory") as err:
        check_run_budget(config, settings, mesh, device_bytes=20e9)
    assert "kv_cache" in str(err.value) and "config.train.remat" in str(err.value)
    config.budget.enforce = False
    assert "total" in check_run_budget(config, settings, mesh, device_bytes=20e9)


def test_cpu_devices_share_the_host_memory():
    size = device_memory_bytes()
    assert size is not None and 0 < size * len(jax.local_devices()) <= 2 ** 50
