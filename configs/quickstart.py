"""The embedded CPU default: a tiny model and a SentencePiece tokenizer trained on synthetic text.

Runs on a 2-core CPU with no downloads. Override any field on the command line, e.g.
`--config.model.num_layers=2 --config.generate.max_new_tokens=32`.
"""

import ml_collections

from memagent_jax.configuration import mesh_section, model_section, sharding_section


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.workdir = "runs/quickstart"
    config.model = model_section("tiny")
    config.mesh = mesh_section(data=1, fsdp=-1, tensor=1)
    config.sharding = sharding_section()

    config.tokenizer = ml_collections.ConfigDict()
    config.tokenizer.path = ""  # empty: train a SentencePiece model into {workdir}/tokenizer
    config.tokenizer.vocab_size = config.model.vocab_size
    config.tokenizer.corpus_lines = 4000

    config.generate = ml_collections.ConfigDict()
    config.generate.prompt = "What is the special magic number for jittery-hospital?"
    config.generate.max_new_tokens = 24
    return config
