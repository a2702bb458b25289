"""The decoder itself: configs, masks, positions, packing, padding and dtypes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fixture_model import padding_to_segments, segment_mask
from memagent_jax.model.config import PRESETS, ModelConfig, RopeScaling, get_preset
from memagent_jax.model.layers import rope_inverse_frequencies
from memagent_jax.model.transformer import Transformer, positions_from_segments

SMALL = ModelConfig(
    family="qwen2", vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=8, qkv_bias=True, tie_word_embeddings=False, rope_theta=10000.0,
    initializer_range=0.2,  # large init so that a masking mistake changes logits visibly
)


class Jitted:
    """Calls the model through one jit (eager op-by-op dispatch is slow and is not what runs)."""

    def __init__(self, module: Transformer):
        self.graphdef, self.state = nnx.split(module)
        self._forward = jax.jit(lambda state, tokens, seg, pos: nnx.merge(self.graphdef, state)(
            tokens, segment_ids=seg, positions=pos))

    def __call__(self, tokens, segment_ids=None, positions=None):
        return self._forward(self.state, tokens, segment_ids, positions)


@pytest.fixture(scope="module")
def model() -> Jitted:
    return Jitted(Transformer(SMALL, rngs=nnx.Rngs(3)))


def _tokens(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(1, SMALL.vocab_size, shape), jnp.int32)


def test_presets_match_published_sizes():
    # Parameter counts of the published checkpoints, in billions (rounded as their model cards do).
    expected = {"qwen2.5-0.5b": 0.49, "qwen2.5-1.5b": 1.54, "qwen2.5-7b": 7.62, "qwen2.5-14b": 14.77,
                "llama3-8b": 8.03}
    for name, billions in expected.items():
        assert PRESETS[name].num_params / 1e9 == pytest.approx(billions, abs=0.01), name
    assert PRESETS["tiny"].num_params < 2_000_000


def test_get_preset_overrides_and_unknown_name():
    assert get_preset("qwen2.5-0.5b", dtype="float32").dtype == "float32"
    with pytest.raises(ValueError, match="unknown model preset 'gpt2'"):
        get_preset("gpt2")


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="num_heads=6 is not a multiple of num_kv_heads=4"):
        SMALL.replace(num_heads=6, num_kv_heads=4)
    with pytest.raises(ValueError, match="dtype='fp8'"):
        SMALL.replace(dtype="fp8")
    with pytest.raises(ValueError, match="hidden_size=0"):
        SMALL.replace(hidden_size=0)


def test_from_hf_roundtrip_and_errors(tmp_path):
    llama = PRESETS["llama3-8b"]
    # from_hf gives float32 numerics unless told otherwise (the CPU default).
    assert ModelConfig.from_hf(llama.to_hf()) == llama.replace(dtype="float32", param_dtype="float32")
    qwen = PRESETS["qwen2.5-7b"]
    assert ModelConfig.from_hf(qwen.to_hf(), dtype="bfloat16", param_dtype="float32") == qwen
    # transformers 5 nests rope settings in rope_parameters.
    nested = {k: v for k, v in llama.to_hf().items() if k not in ("rope_theta", "rope_scaling")}
    nested["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 8192}
    assert ModelConfig.from_hf(nested).rope_scaling == llama.rope_scaling

    with pytest.raises(FileNotFoundError, match="config.json"):
        ModelConfig.from_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        ModelConfig.from_hf(tmp_path)
    broken = qwen.to_hf()
    del broken["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="missing required field 'hidden_size'"):
        ModelConfig.from_hf(tmp_path)
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        ModelConfig.from_hf({"model_type": "gpt2"})


def test_llama3_rope_scaling_bands():
    plain = rope_inverse_frequencies(128, 500000.0, None)
    scaled = rope_inverse_frequencies(128, 500000.0, RopeScaling(8.0, 1.0, 4.0, 8192))
    wavelen = 2 * np.pi / np.asarray(plain)
    high = wavelen < 8192 / 4
    low = wavelen > 8192 / 1
    np.testing.assert_allclose(scaled[high], plain[high])  # short wavelengths kept
    np.testing.assert_allclose(scaled[low], plain[low] / 8.0, rtol=1e-6)  # long ones slowed 8x
    mid = ~high & ~low
    assert np.all((scaled[mid] < plain[mid]) & (scaled[mid] > plain[mid] / 8.0))


def test_positions_and_mask_for_packed_rows():
    seg = jnp.asarray([[1, 1, 1, 2, 2, 3, 0, 0]])
    np.testing.assert_array_equal(positions_from_segments(seg), [[0, 1, 2, 0, 1, 0, 0, 0]])
    mask = np.asarray(segment_mask(seg))[0]
    assert mask[2, 0] and not mask[0, 2]  # causal inside a segment
    assert not mask[3, 2] and mask[4, 3]  # segments do not see each other
    assert not mask[6].any() and not mask[:, 6].any()  # padding sees and is seen by nothing
    seg2, pos2 = padding_to_segments(jnp.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]]))
    np.testing.assert_array_equal(pos2, [[0, 0, 0, 1, 2], [0, 1, 2, 0, 0]])
    np.testing.assert_array_equal(seg2, [[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])


def test_packed_row_equals_separate_sequences(model):
    a, b, c = _tokens((1, 5), 1), _tokens((1, 7), 2), _tokens((1, 3), 3)
    packed = jnp.concatenate([a, b, c, jnp.zeros((1, 1), jnp.int32)], axis=1)
    seg = jnp.asarray([[1] * 5 + [2] * 7 + [3] * 3 + [0]])
    out = model(packed, segment_ids=seg)
    np.testing.assert_allclose(out[:, :5], model(a), atol=1e-5)
    np.testing.assert_allclose(out[:, 5:12], model(b), atol=1e-5)
    np.testing.assert_allclose(out[:, 12:15], model(c), atol=1e-5)


def test_left_and_right_padding_equal_unpadded(model):
    seq = _tokens((1, 6), 4)
    pad = jnp.zeros((1, 3), jnp.int32)
    expected = model(seq)
    for tokens, mask, real in (
        (jnp.concatenate([pad, seq], 1), jnp.asarray([[0] * 3 + [1] * 6]), slice(3, 9)),
        (jnp.concatenate([seq, pad], 1), jnp.asarray([[1] * 6 + [0] * 3]), slice(0, 6)),
    ):
        seg, pos = padding_to_segments(mask)
        out = model(tokens, segment_ids=seg, positions=pos)
        np.testing.assert_allclose(out[:, real], expected, atol=1e-5)
        assert np.isfinite(np.asarray(out)).all()  # fully masked pad rows must not produce NaN


def test_causality_future_tokens_do_not_change_past(model):
    tokens = _tokens((2, 10), 5)
    changed = tokens.at[:, 6:].set(7)
    np.testing.assert_allclose(model(tokens)[:, :6], model(changed)[:, :6], atol=1e-6)
    assert not np.allclose(model(tokens)[:, 6:], model(changed)[:, 6:])


def test_bfloat16_params_and_compute():
    cfg = SMALL.replace(dtype="bfloat16", param_dtype="bfloat16")
    bf16 = Transformer(cfg, rngs=nnx.Rngs(3))
    assert bf16.layers[0].mlp.up_proj[...].dtype == jnp.bfloat16
    f32 = Transformer(SMALL, rngs=nnx.Rngs(3))
    # Same weights, rounded to bf16, so that only the numerics differ.
    nnx.update(bf16, jax.tree.map(lambda x: x.astype(jnp.bfloat16), nnx.state(f32)))
    tokens = _tokens((2, 8), 6)
    out = Jitted(bf16)(tokens)
    assert out.dtype == jnp.float32  # logits always float32
    ref = Jitted(f32)(tokens)
    # bf16 has ~3 significant digits: close to the float32 model, far from exact.
    assert np.abs(np.asarray(out) - np.asarray(ref)).max() < 0.1 * np.abs(np.asarray(ref)).max()


def test_jit_forward_matches_eager(model):
    tokens = _tokens((2, 9), 7)
    eager = nnx.merge(model.graphdef, model.state)
    np.testing.assert_allclose(model(tokens), eager(tokens), atol=1e-5)


def test_bad_token_rank():
    with pytest.raises(ValueError, match=r"tokens must be \[batch, length\]"):
        Transformer(SMALL, rngs=nnx.Rngs(0))(jnp.zeros((4,), jnp.int32))
