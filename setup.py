"""memagent_jax: MemAgent memory agents trained with Multi-Conv GRPO, in JAX."""

from setuptools import find_packages, setup

# Every pin below is a set of versions tested together on CPU (Python 3.11).
INSTALL_REQUIRES = [
    # jax/jaxlib move together; 0.10.2 is the newest release the project is tested on.
    "jax==0.10.2",
    "jaxlib==0.10.2",
    # flax <= 0.12.8 breaks on jax >= 0.11.1, so flax and jax are pinned as a pair.
    "flax==0.12.8",
    # optax and orbax-checkpoint: the releases that import cleanly against jax 0.10.2.
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    # grain: checkpointable iterator API (DatasetIterator.get_state/set_state) used by data/.
    "grain==0.2.18",
    # tensorstore is orbax's array storage backend; pinned to the version orbax was tested with.
    "tensorstore==0.1.86",
    "ml-collections==1.1.0",
    "absl-py>=2.1,<3",
    # sentencepiece: trainable tokenizer for the embedded CPU default.
    "sentencepiece==0.2.3",
    # tokenizers/safetensors/jinja2: real Qwen/Llama checkpoints (tokenizer.json, weights, chat templates);
    # safetensors writes the exported shards (model/hf.py), loading keeps its own memory-mapped reader.
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "jinja2>=3.1,<4",
    "numpy>=2.0,<3",
    # pyarrow: MemAgent's training data is Parquet (data/parquet.py reader, data/writers.py writer).
    "pyarrow==26.0.1",
    # matplotlib: evaluation.plot_accuracy draws the accuracy-by-length PNG (Agg, headless).
    "matplotlib==3.11.2",
    # wonderwords (MIT): the English adjective and noun lists RULER draws its needle keys from.
    "wonderwords==3.0.1",
    # tensorboardX: TensorBoard event files without TensorFlow (metrics.MetricsWriter).
    "tensorboardX==2.6.5",
    # tqdm: the console progress bars of training, evaluation and memagent-answer (progress.py).
    "tqdm==4.70.1",
]

TEST_REQUIRES = [
    "pytest>=8,<10",
    # torch 2.13.0 is the CPU wheel available offline; a looser spec would pull CUDA builds.
    "torch==2.13.0",
    # transformers builds the tiny random Qwen2/Llama reference checkpoints in tests (no hub access).
    "transformers==5.23.0",
    # tensorboard: test_metrics reads the event files back with TensorBoard's own reader.
    "tensorboard==2.21.0",
    # hypothesis: the tests/test_fuzz_*.py property tests (profiles in tests/conftest.py).
    "hypothesis==6.170.27",
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
    extras_require={"test": TEST_REQUIRES},
    # Every command, also runnable as `python -m memagent_jax.<module>` (tests/test_commands.py runs both).
    entry_points={"console_scripts": [
        "memagent-train=memagent_jax.train:run",
        "memagent-evaluate=memagent_jax.evaluate:run",
        "memagent-answer=memagent_jax.answer:run",
        "memagent-check-config=memagent_jax.check_config:run",
        "memagent-sweep=memagent_jax.sweep:run",
        "memagent-build-hotpotqa=memagent_jax.data.hotpotqa:main",
        "memagent-build-hotpotqa-train=memagent_jax.data.hotpotqa_train:main",
        "memagent-build-ruler-qa=memagent_jax.data.ruler_qa:main",
        "memagent-export-tasks=memagent_jax.data.export:main",
    ]},
)
