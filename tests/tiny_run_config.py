"""A training run of seconds (a tiny model on 100-token toy documents) for the tests.

Used as a module (`tiny_config`) and as a config file for `python -m memagent_jax.train` in subprocesses
(`--config=tests/tiny_run_config.py --config.workdir=... --config.tokenizer.path=...`).
"""

import pathlib

import ml_collections

from memagent_jax.model.sharding import DEFAULT_RULES
from memagent_jax.run.configuration import load_config_file

QUICKSTART = pathlib.Path(__file__).resolve().parent.parent / "configs" / "quickstart.py"


def tiny_config(copy: int = 0, sft: int = 2, rl: int = 2, retrieval: int = 0) -> ml_collections.ConfigDict:
    config = load_config_file(str(QUICKSTART))
    config.model.update(vocab_size=512, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=8, max_position_embeddings=1024)
    # Training FSDP over every device; rollouts on replicated weights (one resharding per step).
    config.mesh.update(data=1, fsdp=-1, tensor=1)
    config.rollout_sharding.rules = tuple((name, None) for name, _ in DEFAULT_RULES)
    config.agent.update(chunk_size=64, max_memory_tokens=12, max_answer_tokens=8, max_question_tokens=40)
    config.engine.update(num_pages=512, max_slots=16, max_seq_len=512, max_prompt_len=480, prefill_chunk=128)
    config.train.update(row_len=512, rows_per_micro=8)
    config.copy.update(steps=copy, batch_size=8, max_tokens=16, max_gap_tokens=8, row_len=64, rows_per_micro=8)
    config.retrieval.update(steps=retrieval, batch_size=4, tasks=("toy_code",), lengths=(40,), num_samples=64,
                            row_len=128)
    config.sft.update(steps=sft, batch_size=2, mini_batch_size=1, lengths=(100,), tasks=("toy_code",),
                      num_samples=64)
    config.rl.update(steps=rl, batch_size=2, mini_batch_size=1, group_size=2, lengths=(100,), tasks=("toy_code",),
                     num_samples=64, dynamic_sampling=False, overlong="none")
    config.eval.update(enabled=False, tasks=("toy_code",), lengths=(128,), samples_per_cell=2, batch=2)
    config.checkpoint.update(every=1, keep=2)
    config.metrics.progress = False
    return config


def get_config() -> ml_collections.ConfigDict:
    return tiny_config()
