"""Test session setup: 8 fake CPU devices (sharding tests) and no network access to model hubs."""

import os

# Must happen before jax initialises its backends, i.e. before any test module imports jax.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def sp_tokenizer_dir(tmp_path_factory):
    """One SentencePiece model (vocab 512, trained on the task corpus like the quickstart's, so prompts are
    short) for every test that only reads it."""
    from memagent_jax.data.task_corpus import task_corpus
    from memagent_jax.tokenizer import train_sentencepiece

    folder = tmp_path_factory.mktemp("sp_shared")
    train_sentencepiece(task_corpus(1500), folder, vocab_size=512)
    return folder
