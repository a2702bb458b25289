"""Sharding on 8 fake CPU devices: meshes, rule -> PartitionSpec mapping, and sharded forward parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from fixture_model import describe_shardings, shard_module
from memagent_jax.model import sharding as sh
from memagent_jax.model.config import ModelConfig
from memagent_jax.model.transformer import Transformer

# Dimensions divisible by 8 so every rule can shard; GQA with 4 KV heads for 8 query heads.
CFG = ModelConfig(
    family="qwen2", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=8,
    num_kv_heads=4, head_dim=8, qkv_bias=True, tie_word_embeddings=False, rope_theta=10000.0,
    initializer_range=0.1,
)


def _build():
    return Transformer(CFG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def reference():
    model = _build()
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, CFG.vocab_size, (8, 12)), jnp.int32)
    return tokens, np.asarray(jax.jit(lambda s, t: nnx.merge(*s)(t))(nnx.split(model), tokens))


def test_have_eight_devices():
    assert jax.device_count() == 8, "tests/conftest.py must set 8 fake CPU devices before jax starts"


def test_make_mesh_sizes_and_errors():
    mesh = sh.make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(sh.make_mesh({}, devices=jax.devices()[:1]).shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="needs 6 devices"):
        sh.make_mesh({"data": 3, "fsdp": 2, "tensor": 1})
    with pytest.raises(ValueError, match="unknown mesh axes"):
        sh.make_mesh({"model": 8})
    with pytest.raises(ValueError, match="only one mesh axis may be -1"):
        sh.make_mesh({"data": -1, "fsdp": -1})
    with pytest.raises(ValueError, match="cannot be split"):
        sh.make_mesh({"data": 3, "fsdp": -1})


def test_rule_errors_name_the_axis():
    mesh = sh.make_mesh({"fsdp": 8})
    with pytest.raises(ValueError, match="unknown mesh axes \\['model'\\]"):
        sh.validate_rules([("embed", "model")])
    with pytest.raises(ValueError, match="'embed' appears twice"):
        sh.validate_rules([("embed", "fsdp"), ("embed", None)])
    with pytest.raises(ValueError, match="logical axis 'experts' has no sharding rule"):
        sh.logical_to_spec(("experts",), (8,), sh.DEFAULT_RULES, mesh)


def test_mesh_axes_of_rule_targets_and_spec_entries_round_trip():
    for entry, axes in ((None, ()), ("fsdp", ("fsdp",)), (("data", "fsdp"), ("data", "fsdp")),
                        (["data", "tensor"], ("data", "tensor"))):
        assert sh.as_mesh_axes(entry) == axes
        assert sh.as_mesh_axes(sh.spec_entry(axes)) == axes
    assert sh.spec_entry(("fsdp",)) == "fsdp" and sh.spec_entry(()) is None  # PartitionSpec's own spelling
    # Entries of a real spec: the batch sharding splits rows over data and fsdp.
    mesh = sh.make_mesh({"data": 2, "fsdp": 4})
    assert sh.as_mesh_axes(sh.batch_sharding(mesh, sh.DEFAULT_RULES).spec[0]) == ("data", "fsdp")


def test_logical_to_spec_drops_reused_trivial_and_indivisible_axes():
    mesh = sh.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    rules = sh.DEFAULT_RULES
    assert sh.logical_to_spec(("embed", "mlp"), (64, 128), rules, mesh) == P("fsdp", "tensor")
    assert sh.logical_to_spec(("batch", "length"), (8, 12), rules, mesh) == P("fsdp")  # data has size 1
    assert sh.logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 2, 8), rules, mesh) == P("fsdp")
    # The same mesh axis may not shard two dimensions of one array.
    assert sh.logical_to_spec(("mlp", "vocab"), (128, 256), rules, mesh) == P("tensor")


EXPECTED = {
    "fsdp": ({"fsdp": 8}, {
        "embed_tokens": P(None, "fsdp"), "lm_head": P("fsdp"),
        "layers.0.self_attn.q_proj": P("fsdp"), "layers.0.self_attn.o_proj": P(None, None, "fsdp"),
        "layers.0.mlp.gate_proj": P("fsdp"), "layers.0.mlp.down_proj": P(None, "fsdp"),
        "layers.0.self_attn.q_bias": P(), "layers.0.input_layernorm.weight": P(),
    }),
    "tensor": ({"tensor": 8}, {
        "embed_tokens": P("tensor"), "lm_head": P(None, "tensor"),
        "layers.0.self_attn.q_proj": P(None, "tensor"), "layers.1.self_attn.o_proj": P("tensor"),
        "layers.0.self_attn.k_proj": P(),  # 4 KV heads do not split 8 ways: replicated
        "layers.0.mlp.up_proj": P(None, "tensor"), "layers.0.mlp.down_proj": P("tensor"),
        "layers.0.self_attn.q_bias": P("tensor"), "layers.0.self_attn.k_bias": P(),
    }),
    "mixed": ({"data": 2, "fsdp": 2, "tensor": 2}, {
        "embed_tokens": P("tensor", "fsdp"), "lm_head": P("fsdp", "tensor"),
        "layers.0.self_attn.q_proj": P("fsdp", "tensor"), "layers.0.self_attn.k_proj": P("fsdp", "tensor"),
        "layers.0.self_attn.o_proj": P("tensor", None, "fsdp"),
        "layers.1.mlp.gate_proj": P("fsdp", "tensor"), "layers.1.mlp.down_proj": P("tensor", "fsdp"),
        "norm.weight": P(),
    }),
}


@pytest.mark.parametrize("layout", sorted(EXPECTED))
def test_sharded_init_places_params_and_matches_single_device(layout, reference):
    mesh_shape, expected_specs = EXPECTED[layout]
    mesh = sh.make_mesh(mesh_shape)
    model = sh.create_sharded(_build, mesh, sh.DEFAULT_RULES)
    specs = describe_shardings(nnx.state(model))
    for name, spec in expected_specs.items():
        assert specs[name] == spec, name
    # Each device holds only its slice: the embedding table is split whenever its spec is not empty.
    table = model.embed_tokens[...]
    shard_shape = table.addressable_shards[0].data.shape
    assert np.prod(shard_shape) * np.prod([mesh.shape[a] for a in ("fsdp", "tensor")]) == table.size

    tokens, expected = reference
    graphdef, state = nnx.split(model)
    tokens = jax.device_put(tokens, sh.batch_sharding(mesh, sh.DEFAULT_RULES))
    out = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, tokens)
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5)


def test_reshard_between_layouts_is_a_device_put(reference):
    """Training (fsdp) -> rollout (tensor) layout on the same devices keeps values exactly."""
    train_mesh = sh.make_mesh({"fsdp": 8})
    model = sh.create_sharded(_build, train_mesh, sh.DEFAULT_RULES)
    rollout_mesh = sh.make_mesh({"tensor": 8})
    moved = shard_module(model, rollout_mesh, sh.DEFAULT_RULES)
    assert describe_shardings(nnx.state(moved))["layers.0.mlp.up_proj"] == P(None, "tensor")
    np.testing.assert_array_equal(np.asarray(moved.lm_head[...]), np.asarray(model.lm_head[...]))


def test_rules_from_config_accepts_lists():
    rules = sh.rules_from_config([["batch", ["data", "fsdp"]], ["embed", "fsdp"], ["norm", None]])
    assert rules == (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("norm", None))
