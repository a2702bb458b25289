"""A memory agent on an exported checkpoint: its weights, its tokenizer and chat template, an engine sized for
the agent. Shared by `memagent-answer` and evaluation, which reuses one engine across checkpoints."""

from __future__ import annotations

import os
import pathlib
from typing import Callable

from flax import nnx

from memagent_jax.agent.memory_agent import AgentConfig, MemoryAgent
from memagent_jax.agent.prompts import AgentPrompts
from memagent_jax.engine.engine import Engine
from memagent_jax.engine.requests import EngineConfig
from memagent_jax.model.config import ModelConfig
from memagent_jax.model.hf import load_hf_checkpoint
from memagent_jax.model.transformer import Transformer
from memagent_jax.tokenizer import load_tokenizer

__all__ = ["open_agent"]


def _engine_for(model: Transformer, model_cfg: ModelConfig, engine_cfg: EngineConfig,
                previous: Engine | None) -> Engine:
    """`previous` with `model`'s weights when architecture and settings match (no new compilations; the
    engine drops its cached prompts), else a new engine."""
    if previous is not None and previous.model_config == model_cfg and previous.config == engine_cfg:
        previous.update_weights(nnx.split(model)[1])
        return previous
    return Engine(model, engine_cfg)


def open_agent(checkpoint_dir: str | os.PathLike, agent_cfg: AgentConfig,
               engine_config: Callable[[AgentPrompts], EngineConfig], previous: Engine | None = None) -> MemoryAgent:
    """A memory agent on the checkpoint's weights and tokenizer (its chat template builds the prompts), on
    `previous`'s engine when architecture and `engine_config(prompts)` match (no new compilations)."""
    checkpoint = pathlib.Path(checkpoint_dir)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint folder {checkpoint} does not exist")
    tokenizer = load_tokenizer(checkpoint)
    model, model_cfg = load_hf_checkpoint(checkpoint)
    prompts = AgentPrompts.build(tokenizer)
    engine_cfg = engine_config(prompts)
    if engine_cfg.max_seq_len > model_cfg.max_position_embeddings:
        raise ValueError(f"chunk, memory, question and answer sizes need {engine_cfg.max_seq_len} positions but "
                         f"{checkpoint} has max_position_embeddings={model_cfg.max_position_embeddings}: "
                         f"lower chunk_size or max_memory_tokens")
    engine = _engine_for(model, model_cfg, engine_cfg, previous)
    del model  # the engine holds its own copy of the weights
    return MemoryAgent(engine, tokenizer, agent_cfg, prompts)
