"""HF safetensors checkpoints: loading (validated, sharded on arrival), export, and bad input."""

import gc
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from fixture_model import describe_shardings, padding_to_segments
from memagent_jax.model import hf
from memagent_jax.model.hf import CheckpointError, load_hf_checkpoint, save_hf_checkpoint
from memagent_jax.model.sharding import DEFAULT_RULES, logical_to_spec, make_mesh
from reference_libraries import torch_and_transformers

torch, transformers = torch_and_transformers()

VOCAB = 320  # divisible by 8, so the vocabulary really is split on an 8-way tensor axis
TOL = 1e-4


def _hf_model(family: str, seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  max_position_embeddings=512, initializer_range=0.1)
    if family == "qwen2":
        config = transformers.Qwen2Config(**common, num_attention_heads=4, num_key_value_heads=2,
                                          tie_word_embeddings=True, rope_theta=10000.0)
        model = transformers.Qwen2ForCausalLM(config)
    else:
        # GQA ratio 4 and llama3 scaling whose original context (16) is shorter than the test rows.
        config = transformers.LlamaConfig(
            **common, num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False,
            rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                               "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # HF zero-initialises biases; random ones make the bias mapping matter
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model.float().eval()


@pytest.fixture(scope="module")
def hf_models():
    return {family: _hf_model(family) for family in ("qwen2", "llama")}


@pytest.fixture(scope="module")
def checkpoints(hf_models, tmp_path_factory):
    """family -> {"single": dir, "sharded": dir} written by transformers."""
    out = {}
    for family, model in hf_models.items():
        single = tmp_path_factory.mktemp(f"{family}_single")
        sharded = tmp_path_factory.mktemp(f"{family}_sharded")
        model.save_pretrained(single)
        model.save_pretrained(sharded, max_shard_size="100KB")
        assert (single / "model.safetensors").is_file()
        assert (sharded / "model.safetensors.index.json").is_file()
        out[family] = {"single": single, "sharded": sharded}
    return out


def _tokens(seed: int = 0, shape=(3, 40)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, shape)


def _padding_mask() -> np.ndarray:
    mask = np.ones((3, 40), np.int64)
    mask[0, :9] = 0  # left padding
    mask[1, 27:] = 0  # right padding
    return mask


def _hf_logits(model, tokens, mask=None) -> np.ndarray:
    kwargs = {}
    if mask is not None:
        kwargs = dict(attention_mask=torch.tensor(mask),
                      position_ids=torch.tensor(np.maximum(np.cumsum(mask, -1) - 1, 0)))
    with torch.no_grad():
        return model(torch.tensor(tokens), **kwargs).logits.float().numpy()


def _our_logits(model, tokens, mask=None) -> np.ndarray:
    with jax.default_matmul_precision("highest"):
        if mask is None:
            return np.asarray(model(jnp.asarray(tokens)))
        segments, positions = padding_to_segments(jnp.asarray(mask))
        return np.asarray(model(jnp.asarray(tokens), segment_ids=segments, positions=positions))


def _assert_matches(ours_model, hf_model, tol=TOL):
    tokens = _tokens()
    np.testing.assert_allclose(_our_logits(ours_model, tokens), _hf_logits(hf_model, tokens), atol=tol, rtol=0)
    mask = _padding_mask()
    real = mask.astype(bool)
    ours = _our_logits(ours_model, tokens, mask)[real]
    np.testing.assert_allclose(ours, _hf_logits(hf_model, tokens, mask)[real], atol=tol, rtol=0)


# ---- Loading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["single", "sharded"])
@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_load_matches_transformers(hf_models, checkpoints, family, layout):
    model, cfg = load_hf_checkpoint(checkpoints[family][layout])
    assert cfg.family == family and cfg.num_layers == 2
    assert cfg.tie_word_embeddings == (family == "qwen2") and cfg.qkv_bias == (family == "qwen2")
    if family == "llama":
        assert cfg.rope_scaling is not None and cfg.rope_scaling.original_max_position_embeddings == 16
        assert cfg.num_heads // cfg.num_kv_heads == 4 and cfg.rope_theta == 500000.0
    _assert_matches(model, hf_models[family])


def test_loaded_weights_equal_hf_tensors_and_own_their_memory(checkpoints, tmp_path):
    directory = _copy(checkpoints, tmp_path)
    path = directory / "model.safetensors"
    tensors = load_file(path)
    # Pad the header so every tensor starts 64-byte aligned: XLA's CPU client would then adopt a view
    # of the file map as it is, which is the aliasing this test must catch.
    for pad in range(64):
        save_file(tensors, path, metadata={"format": "pt", "pad": "x" * pad})
        if all(info.start % 64 == 0 for info in hf.read_safetensors_header(path).values()):
            break
    else:
        pytest.fail("could not align the tensors")
    model, cfg = load_hf_checkpoint(directory)
    d, h, hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    q = model.layers[1].self_attn.q_proj[...]
    np.testing.assert_array_equal(q, tensors["model.layers.1.self_attn.q_proj.weight"].T.reshape(d, h, hd))
    np.testing.assert_array_equal(model.layers[0].self_attn.o_proj[...],
                                  tensors["model.layers.0.self_attn.o_proj.weight"].T.reshape(h, hd, d))
    np.testing.assert_array_equal(model.lm_head[...], tensors["lm_head.weight"].T)
    # Loaded arrays own their memory: once loading returns, no file map is left (an array aliasing the
    # read-only map would keep it alive, and donating that array to a jitted step would write into it).
    gc.collect()
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(directory) not in maps.read_text()
    before = np.asarray(model.embed_tokens[...]).copy()
    doubled = jax.jit(lambda x: x * 2, donate_argnums=0)(model.embed_tokens[...])
    np.testing.assert_array_equal(doubled, 2 * before)


MESHES = {"fsdp": {"fsdp": 8}, "tensor": {"tensor": 8}, "mixed": {"fsdp": 2, "tensor": 4}}


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_load_onto_mesh_places_each_slice(hf_models, checkpoints, mesh_name):
    mesh = make_mesh(MESHES[mesh_name])
    model, cfg = load_hf_checkpoint(checkpoints["llama"]["sharded"], mesh=mesh)
    state = nnx.state(model)
    specs = describe_shardings(state)
    for path, variable in nnx.to_flat_state(state):
        name = ".".join(str(p) for p in path)
        array = variable.get_value()
        want = logical_to_spec(variable.get_metadata()["logical_axes"], array.shape, DEFAULT_RULES, mesh)
        assert specs[name] == want, name
        shard_shape = array.sharding.shard_shape(array.shape)
        assert len(array.addressable_shards) == 8
        for shard in array.addressable_shards:
            assert shard.data.shape == shard_shape, name
        if any(axis is not None for axis in want):
            assert np.prod(shard_shape) < np.prod(array.shape), name
    # Spot checks of the rules themselves (2 KV heads do not split 8 or 4 ways, so k/v stay replicated).
    expected = {
        "fsdp": {"layers.0.self_attn.q_proj": ("fsdp",), "embed_tokens": (None, "fsdp"), "lm_head": ("fsdp",)},
        "tensor": {"layers.0.self_attn.q_proj": (None, "tensor"), "layers.0.self_attn.k_proj": (),
                   "embed_tokens": ("tensor",), "layers.0.mlp.down_proj": ("tensor",)},
        "mixed": {"layers.0.self_attn.q_proj": ("fsdp", "tensor"), "layers.0.mlp.gate_proj": ("fsdp", "tensor"),
                  "layers.0.self_attn.k_proj": ("fsdp",), "embed_tokens": ("tensor", "fsdp")},
    }[mesh_name]
    for name, spec in expected.items():
        assert tuple(specs[name]) == spec, (name, specs[name])
    _assert_matches(model, hf_models["llama"])


def test_load_casts_dtypes_and_ignores_buffers(checkpoints, tmp_path):
    directory = tmp_path / "ckpt"
    shutil.copytree(checkpoints["qwen2"]["single"], directory)
    tensors = load_file(directory / "model.safetensors")
    # Buffers some exporters add: rotary inv_freq, and lm_head for a tied model.
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    model, cfg = load_hf_checkpoint(directory, dtype="bfloat16", param_dtype="bfloat16")
    assert cfg.param_dtype == "bfloat16" and model.embed_tokens[...].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(model.norm.weight[...], np.float32),
                                  tensors["model.norm.weight"].astype(jnp.bfloat16).astype(np.float32))


@pytest.mark.parametrize("torch_dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoint(hf_models, tmp_path, torch_dtype):
    half = _hf_model("llama")
    half.to(torch_dtype).save_pretrained(tmp_path)
    header = hf.read_safetensors_header(tmp_path / "model.safetensors")
    assert {info.dtype for info in header.values()} == {"BF16" if torch_dtype == torch.bfloat16 else "F16"}
    # float32 params from half weights are exact: compare with the same file upcast by transformers
    # (not half.float(): .to(bfloat16) also rounded the rotary inv_freq buffer).
    model, _ = load_hf_checkpoint(tmp_path)
    upcast = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    _assert_matches(model, upcast)
    # Half params and compute roughly match the float32 original.
    model, _ = load_hf_checkpoint(tmp_path, dtype="bfloat16", param_dtype="bfloat16")
    tokens = _tokens()
    ours = _our_logits(model, tokens)
    np.testing.assert_allclose(ours, _hf_logits(hf_models["llama"], tokens), atol=0.15, rtol=0)


# ---- Saving -------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_save_reloads_in_transformers_and_ours(hf_models, checkpoints, tmp_path, family):
    model, cfg = load_hf_checkpoint(checkpoints[family]["sharded"])
    single = save_hf_checkpoint(model, tmp_path / "single")
    sharded = save_hf_checkpoint(model, tmp_path / "sharded", max_shard_bytes=60_000)
    assert sorted(p.name for p in single.iterdir()) == ["config.json", "model.safetensors"]
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert sorted(p.name for p in sharded.iterdir()) == sorted(files + ["config.json", "model.safetensors.index.json"])
    assert index["metadata"]["total_size"] == 4 * cfg.num_params
    assert "lm_head.weight" in index["weight_map"] or cfg.tie_word_embeddings
    assert not list(tmp_path.glob(".*"))  # no temporary folders left behind
    for directory in (single, sharded):
        reloaded_hf = transformers.AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).eval()
        _assert_matches(model, reloaded_hf)
        np.testing.assert_allclose(_hf_logits(reloaded_hf, _tokens(1)), _hf_logits(hf_models[family], _tokens(1)),
                                   atol=TOL, rtol=0)
        ours, cfg2 = load_hf_checkpoint(directory)
        assert cfg2 == cfg
        for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(ours))):
            np.testing.assert_array_equal(a.get_value(), b.get_value(), err_msg=str(path))


def test_save_from_mesh_in_bfloat16(checkpoints, tmp_path):
    model, _ = load_hf_checkpoint(checkpoints["llama"]["single"], mesh=make_mesh({"fsdp": 2, "tensor": 4}))
    out = save_hf_checkpoint(model, tmp_path / "bf16", dtype=jnp.bfloat16)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert {i.dtype for i in hf.read_safetensors_header(out / "model.safetensors").values()} == {"BF16"}
    reloaded, cfg = load_hf_checkpoint(out)
    want = np.asarray(model.layers[1].mlp.down_proj[...]).astype(jnp.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(reloaded.layers[1].mlp.down_proj[...], want)


def test_float32_masters_of_a_bfloat16_model_export_in_bfloat16_and_reload_in_transformers(checkpoints, tmp_path):
    """Training keeps float32 masters under bfloat16 compute; the export is the model's own dtype (as the
    Qwen2.5 checkpoints are stored), each weight its master rounded to bfloat16, and transformers computes
    the same logits from it as our model does from the same rounded weights."""
    model, cfg = load_hf_checkpoint(checkpoints["qwen2"]["single"], dtype="bfloat16", param_dtype="float32")
    assert model.layers[0].mlp.up_proj[...].dtype == jnp.float32
    out = save_hf_checkpoint(model, tmp_path / "export")  # default dtype: the compute dtype
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert {i.dtype for i in hf.read_safetensors_header(out / "model.safetensors").values()} == {"BF16"}
    reloaded, _ = load_hf_checkpoint(out)  # float32 params and compute: exact copies of the bfloat16 values
    for (path, master), (_, stored) in zip(nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(reloaded))):
        want = np.asarray(jnp.asarray(master.get_value(), jnp.bfloat16).astype(jnp.float32))
        np.testing.assert_array_equal(stored.get_value(), want, err_msg=str(path))
    upcast = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    _assert_matches(reloaded, upcast)


def test_save_refuses_to_overwrite_and_is_atomic(checkpoints, tmp_path, monkeypatch):
    model, _ = load_hf_checkpoint(checkpoints["qwen2"]["single"])
    target = tmp_path / "out"
    target.mkdir()
    save_hf_checkpoint(model, target)  # an empty existing folder is fine
    before = (target / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_hf_checkpoint(model, target)
    # A crash half way through writing leaves the old checkpoint untouched and no temporary folder.
    calls, real_get = [], jax.device_get

    def failing_get(x):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("simulated crash")
        return real_get(x)

    monkeypatch.setattr(jax, "device_get", failing_get)
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_hf_checkpoint(model, target, overwrite=True, max_shard_bytes=50_000)
    monkeypatch.undo()
    assert (target / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    save_hf_checkpoint(model, target, overwrite=True, max_shard_bytes=50_000)
    assert (target / "model.safetensors.index.json").is_file() and not (target / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---- Bad input ----------------------------------------------------------------------------------


@pytest.fixture
def no_arrays(monkeypatch):
    """Fails the test if load_hf_checkpoint creates any array (validation must come first)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("an array was created before validation finished")

    monkeypatch.setattr(jax, "make_array_from_callback", forbidden)


def _copy(checkpoints, tmp_path, family="llama", layout="single"):
    directory = tmp_path / f"{family}_{layout}"
    shutil.copytree(checkpoints[family][layout], directory)
    return directory


def test_missing_directory_and_config(checkpoints, tmp_path, no_arrays):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_hf_checkpoint(tmp_path / "nowhere")
    directory = _copy(checkpoints, tmp_path)
    (directory / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_checkpoint(directory)
    directory = _copy(checkpoints, tmp_path, "qwen2")
    (directory / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_hf_checkpoint(directory)


def _edit(directory, edit):
    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})
    return path


def test_missing_tensor(checkpoints, tmp_path, no_arrays):
    directory = _copy(checkpoints, tmp_path)
    path = _edit(directory, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'model\.layers\.1\.mlp\.up_proj\.weight' "
                                              r"is missing \(expected shape \[96, 64\]\)") as err:
        load_hf_checkpoint(directory)
    assert str(path) in str(err.value)


def test_wrong_shape_and_unexpected_tensor_reported_together(checkpoints, tmp_path, no_arrays):
    directory = _copy(checkpoints, tmp_path)

    def edit(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:8]
        t["model.layers.2.mlp.gate_proj.weight"] = np.zeros((96, 64), np.float32)

    path = _edit(directory, edit)
    with pytest.raises(CheckpointError) as err:
        load_hf_checkpoint(directory)
    message = str(err.value)
    assert "2 problems" in message
    assert f"{path}: tensor 'model.layers.0.self_attn.k_proj.weight' has shape [8, 64], expected [16, 64]" in message
    assert f"{path}: unexpected tensor 'model.layers.2.mlp.gate_proj.weight'" in message


def test_untied_model_needs_lm_head_and_supported_dtype(checkpoints, tmp_path, no_arrays):
    directory = _copy(checkpoints, tmp_path)

    def edit(t):
        t.pop("lm_head.weight")
        t["model.norm.weight"] = t["model.norm.weight"].astype(np.float64)

    _edit(directory, edit)
    with pytest.raises(CheckpointError, match="lm_head.weight' is missing") as err:
        load_hf_checkpoint(directory)
    assert "tensor 'model.norm.weight' has dtype F64" in str(err.value)


def test_index_naming_missing_shard(checkpoints, tmp_path, no_arrays):
    directory = _copy(checkpoints, tmp_path, layout="sharded")
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    held = sorted(n for n, f in index["weight_map"].items() if f == victim)
    (directory / victim).unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_hf_checkpoint(directory)
    assert isinstance(err.value, CheckpointError)
    assert victim in str(err.value) and held[0] in str(err.value) and "index.json" in str(err.value)


def test_index_and_file_disagree_and_truncated_file(checkpoints, tmp_path, no_arrays):
    directory = _copy(checkpoints, tmp_path, layout="sharded")
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.layers.0.mlp.extra.weight"] = next(iter(index["weight_map"].values()))
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="'model.layers.0.mlp.extra.weight' is listed in"):
        load_hf_checkpoint(directory)

    directory = _copy(checkpoints, tmp_path, "qwen2")
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=f"{path}: tensor '.*': bytes .* lie outside the file"):
        load_hf_checkpoint(directory)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_hf_checkpoint(directory)


def test_name_table_round_trips_layouts():
    rng = np.random.default_rng(0)
    for layout, ours_shape in [(hf.SAME, (5, 3)), (hf.FLAT, (4, 2)), (hf.LINEAR_IN, (6, 4, 2)),
                               (hf.LINEAR_OUT, (4, 2, 6))]:
        ours = rng.standard_normal(ours_shape)
        back = layout.to_hf(ours)
        assert back.shape == layout.hf_shape(ours_shape)
        stored = np.ascontiguousarray(back)  # as read from a file
        restored = layout.to_ours(stored, ours_shape)
        assert np.shares_memory(restored, stored)  # a view: bytes move only when a device slice is copied
        np.testing.assert_array_equal(restored, ours)


@pytest.mark.parametrize("threads", [1, 3])
def test_copy_paths_equal_numpy(monkeypatch, threads):
    # Every path of the slice copy (plain, tiled transpose, threaded, merged axes, cast) against numpy.
    monkeypatch.setattr(hf, "_THREADS", threads)
    monkeypatch.setattr(hf, "_THREADED_BYTES", 0)
    monkeypatch.setattr(hf, "_TILE", 8)
    rng = np.random.default_rng(0)
    stored = rng.standard_normal((50, 36)).astype(np.float32)
    bf16 = np.dtype(jnp.bfloat16)
    sources = [stored, stored.T, stored.T.reshape(36, 5, 10), stored.T.reshape(4, 9, 50),
               stored[3:40:2], stored.T[5:30, 10:45], stored.T.reshape(36, 5, 10)[:, 1:3], stored[0]]
    for src in sources:
        for dtype in (np.dtype(np.float32), bf16, np.dtype(np.float16)):
            for stored_src in (src, src.astype(bf16)):
                out = hf._copy(stored_src, dtype)
                assert out.dtype == dtype and out.flags.c_contiguous and out.ctypes.data % hf._ALIGN == 0
                np.testing.assert_array_equal(out, np.asarray(stored_src).astype(dtype))
