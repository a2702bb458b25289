"""memagent_jax: MemAgent memory agents trained with Multi-Conv GRPO, in JAX."""

from setuptools import find_packages, setup

# Ranges: the CPU set tested in CI (Python 3.11, exact versions in constraints-cpu.txt) up to the newest
# releases tested with scripts/test_newest.sh (Python 3.12), so a GPU/TPU machine keeps the JAX that matches
# its drivers. jax >= 0.11 needs Python >= 3.12, so on 3.11 these resolve to the CPU set's jax 0.10.2.
INSTALL_REQUIRES = [
    # jax brings the jaxlib that matches it; < 0.13 because every minor release moves experimental APIs
    # (Pallas moved its Triton backend in 0.12: memagent_jax/compat.py).
    "jax>=0.10.2,<0.13",
    # flax 0.12.8 is the last release for jax 0.10 (and breaks on jax >= 0.11.1); 0.12.9+ needs jax >= 0.11.1.
    # pip cannot say "this flax with that jax", so memagent_jax/compat.py refuses the broken pair at import.
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    # grain: checkpointable iterator API (DatasetIterator.get_state/set_state) used by data/.
    "grain>=0.2.18,<0.3",
    # tensorstore is orbax's array storage backend (orbax 0.12.8 needs >= 0.1.84).
    "tensorstore>=0.1.86,<0.2",
    "ml-collections>=1.1,<2",
    "absl-py>=2.1,<3",
    # sentencepiece: trainable tokenizer for the embedded CPU default.
    "sentencepiece>=0.2.3,<0.3",
    # tokenizers/safetensors/jinja2: real Qwen/Llama checkpoints (tokenizer.json, weights, chat templates);
    # safetensors writes the exported shards (model/hf.py), loading keeps its own memory-mapped reader.
    "tokenizers>=0.23.3,<0.24",
    "safetensors>=0.8.0,<0.9",
    "jinja2>=3.1,<4",
    "numpy>=2.0,<3",
    # pyarrow: MemAgent's training data is Parquet (data/parquet.py reader, data/writers.py writer).
    "pyarrow>=26.0.1,<27",
    # matplotlib: evaluation.plot_accuracy draws the accuracy-by-length PNG (Agg, headless).
    "matplotlib>=3.11.2,<4",
    # wonderwords (MIT): the English adjective and noun lists RULER draws its needle keys from.
    "wonderwords>=3.0.1,<4",
    # tensorboardX: TensorBoard event files without TensorFlow (metrics.MetricsWriter).
    "tensorboardX>=2.6.5,<3",
    # tqdm: the console progress bars of training, evaluation and memagent-answer (progress.py).
    "tqdm>=4.70.1,<5",
]

# The accelerator plugins, in the same jax range. Machines that already have a JAX matching their drivers
# install the project without these (README "Set up").
ACCELERATOR_EXTRAS = {
    # CUDA 13 wheels (driver >= 580; H100/H200 images); every covered jax has them.
    "cuda": ["jax[cuda13]>=0.10.2,<0.13"],
    # CUDA 12 for older drivers: jax 0.12.1 has no cuda12 plugin, so pip settles on jax <= 0.12.0.1.
    "cuda12": ["jax[cuda12]>=0.10.2,<0.13"],
    # libtpu, pinned by each jax release to the one it was built with.
    "tpu": ["jax[tpu]>=0.10.2,<0.13"],
}

TEST_REQUIRES = [
    "pytest>=8,<10",
    # torch's CPU wheel (2.13.0, pinned in constraints-cpu.txt) exists for Python 3.11 only; elsewhere a
    # plain `pip install torch` pulls CUDA builds, so the parity tests skip where torch is missing.
    "torch>=2.13.0,<3; python_version < '3.12'",
    # transformers builds the tiny random Qwen2/Llama reference checkpoints in tests (no hub access).
    "transformers>=5.23.0,<6",
    # tensorboard: test_metrics reads the event files back with TensorBoard's own reader.
    "tensorboard>=2.21.0,<3",
    # hypothesis: the tests/test_fuzz_*.py property tests (profiles in tests/conftest.py).
    "hypothesis>=6.170.27,<7",
    # ruff: the linter .ci/run runs before the tests (config in ruff.toml); pinned so its rules do not drift.
    "ruff==0.17.6",
]

setup(
    name="memagent_jax",
    version="0.1.0",
    description="MemAgent: long-document memory agents trained with Multi-Conv GRPO, in JAX/Flax NNX.",
    packages=find_packages(include=["memagent_jax", "memagent_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, **ACCELERATOR_EXTRAS},
    # Every command, also runnable as `python -m memagent_jax.<module>` (tests/test_commands.py runs both).
    entry_points={"console_scripts": [
        "memagent-train=memagent_jax.train:run",
        "memagent-evaluate=memagent_jax.evaluate:run",
        "memagent-answer=memagent_jax.answer:run",
        "memagent-check-config=memagent_jax.check_config:run",
        "memagent-sweep=memagent_jax.sweep:run",
        "memagent-ablation=memagent_jax.ablation:run",
        "memagent-build-hotpotqa=memagent_jax.data.hotpotqa:main",
        "memagent-build-hotpotqa-train=memagent_jax.data.hotpotqa_train:main",
        "memagent-build-ruler-qa=memagent_jax.data.ruler_qa:main",
        "memagent-export-tasks=memagent_jax.data.export:main",
    ]},
)
