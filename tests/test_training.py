"""A whole run from the config: SFT then GRPO, checkpoints that resume exactly, metrics, HF export."""

import pathlib

import jax
import numpy as np
import pytest

from memagent_jax.run.config_error import ConfigError
from memagent_jax.run.metrics import read_jsonl
from tiny_run_config import tiny_config


@pytest.fixture(scope="module")
def tokenizer_dir(sp_tokenizer_dir):
    return sp_tokenizer_dir


def _config(workdir, tokenizer_dir, **phase_steps):
    config = tiny_config(**phase_steps)
    config.workdir = str(workdir)
    config.tokenizer.path = str(tokenizer_dir)
    return config


def _metrics(workdir):
    return {(row["step"], key): value for row in read_jsonl(pathlib.Path(workdir) / "metrics" / "metrics.jsonl")
            for key, value in row.items() if key not in ("step", "time")}


def test_run_resumes_exactly_and_exports_an_hf_checkpoint(tmp_path, tokenizer_dir):
    from memagent_jax.run.training import TrainingRun

    config = _config(tmp_path / "whole", tokenizer_dir, retrieval=1)
    config.eval.enabled = True
    whole = TrainingRun(config).run()
    table = (tmp_path / "whole" / "eval" / "table.md").read_text()
    assert "| SFT | SFT+GRPO |" in table  # SFT-only and SFT+GRPO side by side
    assert (tmp_path / "whole" / "eval" / "accuracy.png").is_file()
    # The same run stopped after one RL step, then continued from that checkpoint (tests/test_multiprocess.py
    # stops and resumes mid-SFT, across processes, after the copy warm-up).
    for steps in ({"retrieval": 1, "sft": 2, "rl": 1}, {"retrieval": 1, "sft": 2, "rl": 2}):
        resumed = TrainingRun(_config(tmp_path / "parts", tokenizer_dir, **steps)).run()
    expected, got = _metrics(tmp_path / "whole"), _metrics(tmp_path / "parts")
    for key in [(1, "retrieval/nll"), (2, "sft/nll"), (2, "rl/loss"), (2, "rl/reward_mean"), (2, "rl/grad_norm"),
                (1, "rl/logp_gap_sampler_trainer")]:
        assert key in expected, sorted(expected)[:20]
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key
    from memagent_jax.model.hf import load_hf_checkpoint

    model_a, _ = load_hf_checkpoint(whole)
    model_b, _ = load_hf_checkpoint(resumed)
    for a, b in zip(jax.tree.leaves(model_a), jax.tree.leaves(model_b)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert (whole / "tokenizer.model").is_file()
    # memagent-answer reads the trained checkpoint with the agent sizes it was trained with.
    from memagent_jax.agent.memory_agent import AgentConfig, load_sizes
    from memagent_jax.run.answering import answer_document

    sizes = load_sizes(whole)
    assert sizes == {"chunk_size": 64, "max_memory_tokens": 12, "max_answer_tokens": 8, "max_question_tokens": 40,
                     "chunk_boundary": "line"}
    document = tmp_path / "doc.txt"
    document.write_text("The code is 4.\n" * 30)
    trajectory = answer_document(whole, document, "What is the code?", AgentConfig(**sizes))
    assert trajectory.error is None and trajectory.num_chunks >= 2
    tags = {key for _, key in expected}
    for tag in ("rl/reward_std", "rl/accuracy", "rl/memory_tokens_mean", "rl/answer_tokens_mean", "rl/clipped",
                "rl/kl", "rl/entropy", "rl/grad_norm", "rl/rollout_tokens_per_s", "rl/update_tokens_per_s",
                "rl/padding_fraction", "sft/nll", "rl/weight_sync_seconds"):
        assert tag in tags, tag
    assert list((tmp_path / "whole" / "metrics" / "tensorboard").iterdir())


@pytest.mark.parametrize("override, message", [
    (("rl", "loss", "kl_estimator", "k9"), "rl.loss"),
    (("rl", "group_size", None, 0), "config.rl"),
    (("train", "row_len", None, 64), "row_len"),
    (("engine", "max_prompt_len", None, 300), "max_prompt_len"),
    (("sft", "tasks", None, ("nope",)), "unknown task"),
    (("rl", "optimizer", "schedule", "weird"), "rl.optimizer"),
    (("copy", "max_tokens", None, 200), "copy.row_len"),
    (("retrieval", "tasks", None, ("nope",)), "config.retrieval.tasks"),
    (("retrieval", "rows_per_micro", None, 0), "config.retrieval"),
    (("budget", "device_gb", None, 1e-4), "does not fit in device memory"),
    # Passes the estimate (2 * 16 + 16 + 16 <= 64) but not with the tokenizer's 17-token separator.
    (("copy", "max_gap_tokens", None, 16), "longest copy sequence"),
])
def test_config_errors_stop_before_anything_is_built(tmp_path, tokenizer_dir, override, message):
    from memagent_jax.run.training import TrainingRun

    config = _config(tmp_path, tokenizer_dir, copy=1)
    section, key, sub, value = override
    if sub is None:
        config[section][key] = value
    else:
        config[section][key][sub] = value
    with pytest.raises(ConfigError, match=message):
        TrainingRun(config)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics").exists()


def test_sft_and_grpo_train_from_a_parquet_file_mixed_with_a_synthetic_task(tmp_path, tokenizer_dir):
    """A Parquet file in MemAgent's exact schema (written with pyarrow) beside a synthetic task, in SFT (its
    supporting facts are the oracle memory) and in GRPO; skipped records are counted in the metrics."""
    from memagent_jax.run.training import TrainingRun
    from test_data_sources import write_train_parquet

    write_train_parquet(tmp_path / "train.parquet", 8)
    config = _config(tmp_path / "run", tokenizer_dir, sft=2, rl=2)
    config.agent.update(max_memory_tokens=32, max_answer_tokens=16)  # the supporting sentence; \boxed{cityN}
    sources = ({"path": str(tmp_path / "train.parquet"), "weight": 1},
               {"task": "toy_code", "lengths": (100,), "weight": 1})
    config.sft.sources = config.rl.sources = sources
    run = TrainingRun(config)
    assert {run.sources[p][i].task for p in ("sft", "rl") for i in range(4)} == {"hotpotqa", "toy_code"}
    run.run()
    metrics = _metrics(tmp_path / "run")
    assert np.isfinite(metrics[(2, "sft/nll")]) and np.isfinite(metrics[(2, "rl/loss")])
    assert metrics[(2, "rl/data/skipped")] == 0


@pytest.mark.parametrize("phase, entry, message", [
    ("rl", {"path": "/nonexistent/hotpotqa_train.parquet"}, r"config.rl.sources\[0\]: no such data file"),
    ("rl", {"path": "/nonexistent/*.parquet"}, "matches no file"),
    ("sft", {"path": "NOEVIDENCE"}, r"config.sft.sources\[0\]: the records of .* mark no evidence"),
])
def test_data_source_errors_stop_before_anything_is_built(tmp_path, tokenizer_dir, phase, entry, message):
    from memagent_jax.run.training import TrainingRun
    from test_data_sources import write_train_parquet

    write_train_parquet(tmp_path / "plain.parquet", 2, evidence=False)
    config = _config(tmp_path / "run", tokenizer_dir)
    plain = str(tmp_path / "plain.parquet")
    config[phase].sources = ({k: plain if v == "NOEVIDENCE" else v for k, v in entry.items()},)
    with pytest.raises(ConfigError, match=message):
        TrainingRun(config)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_run_evaluates_its_exports_on_config_eval_data(tmp_path, tokenizer_dir):
    """config.eval.data (e.g. RULER-HQA files): checked before anything is built, then the exports are scored
    on it by file and length after training."""
    import json

    from memagent_jax.run.training import TrainingRun

    rows = [{"context": f"Document 1:\nItem {i} is in city{i}.\n", "input": f"Where is item {i}?",
             "answers": [f"city{i}"], "num_docs": 1, "index": i} for i in range(2)]
    (tmp_path / "hqa_1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = _config(tmp_path / "run", tokenizer_dir, sft=1, rl=1)
    config.eval.update(enabled=True, data=(str(tmp_path / "hqa_*.jsonl"),), batch=2)
    TrainingRun(config).run()
    results = json.loads((tmp_path / "run" / "eval_data" / "results.json").read_text())
    assert "hqa_1.jsonl" in (tmp_path / "run" / "eval_data" / "table.md").read_text()
    assert len((tmp_path / "run" / "eval_data" / "samples.jsonl").read_text().splitlines()) == 1 + 2 * 2, results
    config = _config(tmp_path / "bad", tokenizer_dir)
    config.eval.update(enabled=True, data=(str(tmp_path / "nope_*.jsonl"),))
    with pytest.raises(ConfigError, match=r"config.eval.data: --data '.*nope_\*.jsonl' matches no file"):
        TrainingRun(config)


def test_an_export_appears_whole_and_a_failed_one_leaves_the_old_folder(tmp_path, tiny_eval_checkpoints):
    from memagent_jax.model.hf import load_hf_checkpoint
    from memagent_jax.run.training import export_model

    model, _ = load_hf_checkpoint(tiny_eval_checkpoints[0])
    tokenizer_dir = tiny_eval_checkpoints[0]
    (tmp_path / ".export.staging").mkdir()  # what a kill during an export leaves
    (tmp_path / ".export.staging.tmp-abc").mkdir()
    export_model(model, tokenizer_dir, tmp_path / "export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    before = {p.name: p.read_bytes() for p in (tmp_path / "export").iterdir()}
    assert "tokenizer.model" in before and "config.json" in before
    with pytest.raises(FileNotFoundError):  # fails after the weights, while adding the tokenizer
        export_model(model, tmp_path / "no-tokenizer", tmp_path / "export")
    assert {p.name: p.read_bytes() for p in (tmp_path / "export").iterdir()} == before


def test_an_export_keeps_its_own_weights_when_the_tokenizer_folder_is_a_checkpoint(tmp_path,
                                                                                  tiny_eval_checkpoints):
    """The ablation's arms take their tokenizer from the base's export: its weights must not come along."""
    from memagent_jax.model.hf import load_hf_checkpoint
    from memagent_jax.run.training import export_model

    first, second = tiny_eval_checkpoints[0], tiny_eval_checkpoints[1]
    model, _ = load_hf_checkpoint(second)
    export_model(model, first, tmp_path / "export")
    weights = sorted(p.name for p in second.iterdir() if p.name.endswith(".safetensors"))
    assert weights and all((tmp_path / "export" / name).read_bytes() != (first / name).read_bytes()
                           for name in weights)
    assert (tmp_path / "export" / "tokenizer.model").read_bytes() == (first / "tokenizer.model").read_bytes()


def test_evaluation_columns_are_named_by_the_phases_that_trained():
    from memagent_jax.run.training import policy_names

    assert policy_names(tiny_config(sft=2, rl=2)) == {"SFT": "export_sft", "SFT+GRPO": "export"}
    assert policy_names(tiny_config(retrieval=2, sft=0, rl=2)) == {"GRPO": "export"}  # no SFT: no SFT column
    assert policy_names(tiny_config(sft=2, rl=0)) == {"SFT": "export"}
    assert policy_names(tiny_config(copy=2, sft=0, rl=0)) == {"warm-ups": "export"}
    assert policy_names(tiny_config(sft=0, rl=0)) == {"checkpoint": "export"}


def test_retrieval_question_first_reaches_the_warm_up_batches(tmp_path, tokenizer_dir):
    """config.retrieval.question_first changes what the retrieval phase trains on: the same first batch in the
    other order gives another loss (with the key ignored, both runs would log the same one)."""
    from memagent_jax.run.training import TrainingRun

    losses = []
    for question_first in (False, True):
        config = _config(tmp_path / str(question_first), tokenizer_dir, retrieval=1, sft=0, rl=0)
        config.retrieval.question_first = question_first
        TrainingRun(config).run()
        losses.append(_metrics(tmp_path / str(question_first))[(1, "retrieval/nll")])
    assert losses[0] != pytest.approx(losses[1], rel=1e-4)
