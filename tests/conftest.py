"""Test session setup: 8 fake CPU devices (sharding tests), no network access to model hubs, and a persistent
compilation cache shared by every test process (subprocess tests included) and every later session."""

import os

# Must happen before jax initialises its backends, i.e. before any test module imports jax.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from memagent_jax import compile_cache  # noqa: E402

# Beside the commands' folder, not in it: the 8 fake devices are part of every key, so no entry is shared.
os.environ.setdefault(compile_cache.ENV, str(compile_cache.default_dir().with_name("jax-tests")))
compile_cache.enable()


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


@pytest.fixture(scope="session")
def tiny_eval_checkpoints(tmp_path_factory):
    """Two checkpoint folders as the project exports them (HF layout, SentencePiece tokenizer): a random tiny
    Qwen2, and the same architecture with all-zero weights (every logit 0, so greedy decoding always picks
    id 0): it shows which weights an engine shared across checkpoints ran with."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from fixture_data import tokenizer_corpus
    from memagent_jax.model.config import ModelConfig
    from memagent_jax.model.hf import save_hf_checkpoint
    from memagent_jax.model.transformer import Transformer
    from memagent_jax.tokenizer import train_sentencepiece

    root = tmp_path_factory.mktemp("ckpt")
    cfg = ModelConfig(family="qwen2", vocab_size=512, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, qkv_bias=True, tie_word_embeddings=True,
                      max_position_embeddings=2048)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    zero = nnx.merge(graphdef, jax.tree.map(jnp.zeros_like, state))
    folders = []
    for name, weights in (("export", model), ("zero", zero)):
        folder = root / name
        save_hf_checkpoint(weights, folder, overwrite=True)
        train_sentencepiece(tokenizer_corpus(1500), folder, vocab_size=512)  # after the save: it replaces the folder
        folders.append(folder)
    return folders


# -- Fuzzing (tests/test_fuzz_*.py) -------------------------------------------------------------------------
# The default profile keeps the normal run short and reproducible; HYPOTHESIS_PROFILE=fuzz runs the big counts.
# No example database: nothing is written into the repository.
import collections  # noqa: E402

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("default", max_examples=40, derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=2000, derandomize=False, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# Cases each fuzz module ran, printed at the end of the session (hypothesis counts per test function only).
FUZZ_CASES: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="module")
def count_case(request):
    """Call once per fuzzed case; the tally is kept per test module (one module per target family)."""
    name = request.module.__name__.rpartition(".")[2]

    def count() -> None:
        FUZZ_CASES[name] += 1

    return count


def pytest_terminal_summary(terminalreporter):
    if FUZZ_CASES:
        profile = os.environ.get("HYPOTHESIS_PROFILE", "default")
        terminalreporter.section(f"fuzz cases tried (hypothesis profile {profile!r})")
        for name, count in sorted(FUZZ_CASES.items()):
            terminalreporter.write_line(f"{name}: {count}")
        terminalreporter.write_line(f"total: {sum(FUZZ_CASES.values())}")
