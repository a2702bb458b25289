"""The rollout layout: trained weights (FSDP x tensor) moved to the engine's layout (tensor parallel only)."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from memagent_jax.engine.engine import Engine
from memagent_jax.engine.requests import EngineConfig, Request, SamplingParams
from memagent_jax.model.config import ModelConfig
from memagent_jax.model.sharding import DEFAULT_RULES, create_sharded, make_mesh
from memagent_jax.model.transformer import Transformer
from memagent_jax.rl.rollout_layout import RolloutLayout, local_mesh_shape
from memagent_jax.run.configuration import tensor_parallel_rules

CFG = ModelConfig(family="qwen2", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8, max_position_embeddings=256, qkv_bias=True, tie_word_embeddings=False)


def _axes(spec: PartitionSpec) -> set:
    return {a for entry in spec if entry is not None for a in ((entry,) if isinstance(entry, str) else entry)}


def test_fsdp_training_weights_reach_a_tensor_parallel_engine_unchanged():
    mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2}, jax.devices()[:8])
    model = create_sharded(lambda: Transformer(CFG, rngs=nnx.Rngs(0)), mesh, DEFAULT_RULES)
    graphdef, trained = nnx.split(model)
    train_axes = set().union(*(_axes(x.sharding.spec) for x in jax.tree.leaves(trained)))
    assert {"fsdp", "tensor"} <= train_axes
    layout = RolloutLayout(trained, mesh, tensor_parallel_rules())
    placed = layout.place(trained)
    placed_axes = set().union(*(_axes(x.sharding.spec) for x in jax.tree.leaves(placed)))
    assert placed_axes == {"tensor"}  # no FSDP: a decode step never gathers weights
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(placed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The engine on the placed weights generates what the engine on the trained layout does.
    config = EngineConfig(page_size=8, num_pages=64, max_slots=4, max_seq_len=64, max_prompt_len=32,
                          prefill_chunk=32)
    params = SamplingParams(temperature=0.0, max_new_tokens=6)
    requests = [Request(0, [1, 5, 9, 3], params), Request(1, [7, 7, 2], params)]
    tp = Engine(nnx.merge(graphdef, placed), config).generate(requests)
    same = Engine(nnx.merge(graphdef, trained), config).generate(requests)
    assert [r.tokens for r in tp] == [r.tokens for r in same]
    # The per-step sync: one copy onto the engine's layout, never the trainer's own buffers (it donates them).
    engine = Engine(nnx.merge(graphdef, placed), config)
    layout.send(engine, trained)

    def pointers(tree):
        return {shard.data.unsafe_buffer_pointer() for x in jax.tree.leaves(tree) for shard in x.addressable_shards}

    assert not pointers(engine.weights) & pointers(trained)
    assert jax.tree.map(lambda x: x.sharding, engine.weights) == layout.shardings


def test_local_rollout_mesh_keeps_tensor_parallelism_inside_a_host():
    assert local_mesh_shape({"data": 2, "fsdp": 4, "tensor": 2}, 4) == {"data": 1, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="must divide the 4 devices of each process"):
        local_mesh_shape({"tensor": 8}, 4)
