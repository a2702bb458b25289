"""Builds the pieces a run needs from its config: device mesh, tokenizer, model (random or from a checkpoint)."""

from __future__ import annotations

import pathlib

import jax
import ml_collections
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from memagent_jax.data.task_corpus import task_corpus
from memagent_jax.model import sharding
from memagent_jax.model.transformer import Transformer
from memagent_jax.parallel import collectives
from memagent_jax.run import configuration
from memagent_jax.tokenizer import Tokenizer, load_tokenizer, train_sentencepiece


def build_mesh(config: ml_collections.ConfigDict) -> Mesh:
    try:
        return sharding.make_mesh(configuration.mesh_shape(config.mesh))
    except ValueError as err:
        raise configuration.ConfigError(f"config.mesh: {err}") from err


def build_tokenizer(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> Tokenizer:
    """The configured tokenizer, or a SentencePiece model trained (once) into {workdir}/tokenizer."""
    if config.tokenizer.path:
        return load_tokenizer(config.tokenizer.path)
    target = workdir / "tokenizer"
    # Process 0 trains it; the others wait, then use its files, or (no shared filesystem) train the same
    # model themselves: the corpus is a pure function of the seed.
    for turn in ("main", "others"):
        if (turn == "main") == (jax.process_index() == 0) and not (target / "tokenizer.model").is_file():
            logging.info("training a SentencePiece tokenizer (vocab %d) into %s", config.tokenizer.vocab_size, target)
            corpus = task_corpus(config.tokenizer.corpus_lines, seed=config.seed)
            try:
                train_sentencepiece(corpus, target, vocab_size=config.tokenizer.vocab_size,
                                    digit_group=config.tokenizer.digit_group)
            except ValueError as err:
                raise configuration.ConfigError(f"config.tokenizer: {err}") from err
        collectives.barrier(f"tokenizer {turn}")
    tokenizer = load_tokenizer(target)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise configuration.ConfigError(
            f"tokenizer at {target} has {tokenizer.vocab_size} ids but config.model.vocab_size is "
            f"{config.model.vocab_size}")
    return tokenizer


def build_model(config: ml_collections.ConfigDict) -> tuple[Transformer, Mesh]:
    """A model placed on the configured mesh: loaded from config.model.checkpoint, or randomly initialised."""
    mesh = build_mesh(config)
    rules = configuration.build_rules(config.sharding)
    if config.model.checkpoint:
        from memagent_jax.model.hf import load_hf_checkpoint  # only real checkpoints need the HF reader

        model, _ = load_hf_checkpoint(config.model.checkpoint, mesh=mesh, rules=rules,
                                      dtype=config.model.dtype, param_dtype=config.model.param_dtype)
        return model, mesh
    model_config = configuration.build_model_config(config.model)
    model = sharding.create_sharded(lambda: Transformer(model_config, rngs=nnx.Rngs(config.seed)), mesh, rules)
    return model, mesh
