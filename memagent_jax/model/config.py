"""ModelConfig: the shape of a Qwen2/Qwen2.5 or Llama 3 decoder, its presets, and HF config.json I/O."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Mapping

import jax.numpy as jnp

FAMILIES = ("qwen2", "llama")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3 frequency-dependent rope scaling (rope_type "llama3" in HF configs)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and numerics of one decoder-only transformer."""

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False
    tie_word_embeddings: bool = False
    # Numerics: `dtype` is what matmuls run in (their inputs and outputs), `param_dtype` what the trained
    # weights are stored in (float32 masters: updates of lr 1e-6 survive; see rl/precision.py). The residual
    # stream, norms, softmax, logits and losses are float32 whatever `dtype` says.
    dtype: str = "float32"
    param_dtype: str = "float32"
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        errors = []
        if self.family not in FAMILIES:
            errors.append(f"family={self.family!r} is not one of {FAMILIES}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                errors.append(f"{name}={value!r} must be a positive integer")
        if not errors and self.num_heads % self.num_kv_heads:
            errors.append(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                errors.append(f"{name}={getattr(self, name)!r} is not one of {DTYPES}")
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            errors.append("rms_norm_eps and rope_theta must be positive")
        if errors:
            raise ValueError("invalid ModelConfig: " + "; ".join(errors))

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @property
    def num_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        d, f, h, kv, hd = self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads, self.head_dim
        attn = d * (h + 2 * kv) * hd + h * hd * d + (((h + 2 * kv) * hd) if self.qkv_bias else 0)
        per_layer = attn + 3 * d * f + 2 * d
        embed = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + embed + d

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ---- Hugging Face config.json ------------------------------------------------------------

    @classmethod
    def from_hf(cls, source: str | os.PathLike | Mapping[str, Any], **overrides: Any) -> "ModelConfig":
        """Builds a config from an HF `config.json` (a path, a checkpoint folder, or the parsed dict)."""
        if isinstance(source, Mapping):
            hf, where = dict(source), "<dict>"
        else:
            path = pathlib.Path(source)
            if path.is_dir():
                path = path / "config.json"
            if not path.is_file():
                raise FileNotFoundError(f"no HF config.json at {path}")
            try:
                hf = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} is not valid JSON: {err}") from err
            where = str(path)
        model_type = hf.get("model_type")
        if model_type == "qwen2":
            family = "qwen2"
        elif model_type == "llama":
            family = "llama"
        else:
            raise ValueError(f"{where}: model_type={model_type!r} is not supported (qwen2 or llama)")
        try:
            num_heads = int(hf["num_attention_heads"])
            hidden = int(hf["hidden_size"])
            fields = dict(
                family=family,
                vocab_size=int(hf["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(hf["intermediate_size"]),
                num_layers=int(hf["num_hidden_layers"]),
                num_heads=num_heads,
                num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
                head_dim=int(hf.get("head_dim") or hidden // num_heads),
                max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
                rope_theta=float(_rope_theta(hf)),
                # Older configs say rope_scaling; transformers 5 writes rope_parameters (theta inside).
                rope_scaling=_parse_rope_scaling(hf.get("rope_scaling") or hf.get("rope_parameters"), where),
                rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                qkv_bias=bool(hf.get("attention_bias", family == "qwen2")),
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                initializer_range=float(hf.get("initializer_range", 0.02)),
            )
        except KeyError as err:
            raise ValueError(f"{where}: missing required field {err.args[0]!r}") from err
        if family == "llama" and hf.get("mlp_bias"):
            raise ValueError(f"{where}: mlp_bias=true is not supported")
        if hf.get("use_sliding_window"):
            raise ValueError(f"{where}: use_sliding_window=true is not supported (full attention only)")
        fields.update(overrides)
        return cls(**fields)

    def to_hf(self) -> dict[str, Any]:
        """The HF config.json dict that transformers reads back as the same architecture."""
        hf: dict[str, Any] = {
            "architectures": ["Qwen2ForCausalLM" if self.family == "qwen2" else "LlamaForCausalLM"],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "torch_dtype": self.param_dtype,
            "attention_dropout": 0.0,
        }
        if self.rope_scaling is not None:
            hf["rope_scaling"] = {"rope_type": "llama3", **dataclasses.asdict(self.rope_scaling)}
        if self.family == "llama":
            hf["attention_bias"] = self.qkv_bias
            hf["mlp_bias"] = False
        elif not self.qkv_bias:
            raise ValueError("Qwen2 checkpoints always carry q/k/v biases; set qkv_bias=True to export")
        return hf


def _rope_theta(hf: Mapping[str, Any]) -> float:
    # Newer transformers releases nest rope_theta inside rope_parameters.
    if "rope_theta" in hf:
        return hf["rope_theta"]
    params = hf.get("rope_parameters") or {}
    return params.get("rope_theta", 10000.0)


def _parse_rope_scaling(raw: Mapping[str, Any] | None, where: str) -> RopeScaling | None:
    if not raw:
        return None
    kind = raw.get("rope_type", raw.get("type"))
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise ValueError(f"{where}: rope_scaling type {kind!r} is not supported (only llama3)")
    return RopeScaling(
        factor=float(raw["factor"]),
        low_freq_factor=float(raw["low_freq_factor"]),
        high_freq_factor=float(raw["high_freq_factor"]),
        original_max_position_embeddings=int(raw["original_max_position_embeddings"]),
    )


def _qwen25(hidden: int, inter: int, layers: int, heads: int, kv: int, tie: bool, vocab: int) -> ModelConfig:
    return ModelConfig(
        family="qwen2", vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_layers=layers,
        num_heads=heads, num_kv_heads=kv, head_dim=hidden // heads, max_position_embeddings=32768,
        rope_theta=1_000_000.0, rms_norm_eps=1e-6, qkv_bias=True, tie_word_embeddings=tie,
        dtype="bfloat16", param_dtype="float32",
    )


# Published architectures (from the models' config.json files). Accelerators compute in bfloat16 and
# train float32 master weights (exported in bfloat16, the checkpoints' own dtype).
PRESETS: dict[str, ModelConfig] = {
    # The embedded CPU default: a few hundred thousand parameters, trains in minutes on 2 cores.
    "tiny": ModelConfig(
        family="qwen2", vocab_size=1024, hidden_size=128, intermediate_size=384, num_layers=4,
        num_heads=4, num_kv_heads=2, head_dim=32, max_position_embeddings=8192, rope_theta=10000.0,
        rms_norm_eps=1e-6, qkv_bias=True, tie_word_embeddings=True,
    ),
    "qwen2.5-0.5b": _qwen25(896, 4864, 24, 14, 2, tie=True, vocab=151936),
    "qwen2.5-1.5b": _qwen25(1536, 8960, 28, 12, 2, tie=True, vocab=151936),
    "qwen2.5-7b": _qwen25(3584, 18944, 28, 28, 4, tie=False, vocab=152064),
    "qwen2.5-14b": _qwen25(5120, 13824, 48, 40, 8, tie=False, vocab=152064),
    # Llama 3.1 8B: the Llama 3 architecture with its llama3 rope scaling to 128K positions.
    "llama3-8b": ModelConfig(
        family="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
        num_heads=32, num_kv_heads=8, head_dim=128, max_position_embeddings=131072, rope_theta=500000.0,
        rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192), rms_norm_eps=1e-5, qkv_bias=False,
        tie_word_embeddings=False, dtype="bfloat16", param_dtype="float32",
    ),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset, optionally with fields replaced (e.g. dtype="float32" for CPU)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
