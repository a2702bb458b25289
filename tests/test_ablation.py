"""The RL ablation (memagent_jax/run/ablation.py, configs/ablation.py): its config, its summary and goals, and
a tiny whole ablation stopped twice and resumed."""

import json
import os
import pathlib
import signal

import pytest

from memagent_jax.run import configuration
from memagent_jax.run.ablation import (
    POLICIES,
    AblationRun,
    arm_config,
    arm_settings,
    check_ablation_config,
    format_summary,
    settings_differences,
    summarize,
)
from memagent_jax.run.config_error import ConfigError
from memagent_jax.run.evaluation import EvalConfig
from memagent_jax.run.preemption import Preempted
from memagent_jax.run.settings import run_settings
from tiny_run_config import tiny_config

ABLATION = pathlib.Path(__file__).resolve().parent.parent / "configs" / "ablation.py"


def test_the_ablation_config_passes_every_check_and_gives_three_runs_from_one_base():
    config = configuration.load_config_file(str(ABLATION))  # strict keys, the ablation section's included
    run_settings(config)
    check_ablation_config(config)
    steps = {arm: {phase: arm_config(config, arm)[phase].steps for phase in ("copy", "retrieval", "sft", "rl")}
             for arm in ("base", "rl_only", "sft_rl")}
    assert steps["base"] == {"copy": 300, "retrieval": 300, "sft": 0, "rl": 0}  # warm-ups only: no memory trace
    assert steps["rl_only"] == {"copy": 0, "retrieval": 0, "sft": 0, "rl": config.rl.steps}
    assert steps["sft_rl"] == {"copy": 0, "retrieval": 0, "sft": 300, "rl": config.ablation.sft_rl_steps}
    assert config.rl.steps > config.ablation.sft_rl_steps  # RL only gets the bulk of the GRPO budget
    for arm in ("rl_only", "sft_rl"):
        arm_cfg = arm_config(config, arm)
        run_settings(arm_cfg)
        assert arm_cfg.model.checkpoint == arm_cfg.tokenizer.path == "runs/ablation/base/export"
    assert config.eval.long and len(config.eval.tasks) == 5


def test_rl_only_overrides_reach_the_rl_only_arm_alone():
    config = configuration.load_config_file(str(ABLATION))
    overrides = dict(config.ablation.rl_only)
    assert overrides  # the RL-only arm's short, easy documents: its first rewards (configs/ablation.py)
    rl_only, sft_rl = arm_config(config, "rl_only"), arm_config(config, "sft_rl")
    for key, value in overrides.items():
        if key == "optimizer":  # the values given, the others kept
            assert {name: rl_only.rl.optimizer[name] for name in value} == dict(value)
            assert rl_only.rl.optimizer.warmup_steps == config.rl.optimizer.warmup_steps
        else:
            assert rl_only.rl[key] == value
    assert {key: sft_rl.rl[key] for key in overrides} == {key: config.rl[key] for key in overrides}
    assert rl_only.rl.steps == config.rl.steps and sft_rl.rl.steps == config.ablation.sft_rl_steps
    run_settings(rl_only)
    for bad in ({"stepz": 3}, {"steps": 3}, {"optimizer": {"learning_rat": 1e-3}}, {"loss": 0.1}):
        config.ablation.rl_only = bad
        with pytest.raises(ConfigError, match="config.ablation.rl_only"):
            check_ablation_config(config)


def test_a_typo_in_the_ablation_section_is_refused(tmp_path):
    path = tmp_path / "config.py"
    path.write_text(f"import runpy\n\ndef get_config():\n"
                    f"    config = runpy.run_path({str(ABLATION)!r})['get_config']()\n"
                    "    config.ablation.sft_rl_step = 3\n    return config\n")
    with pytest.raises(ConfigError, match=r"config\.ablation\.sft_rl_step .*config\.ablation\.sft_rl_steps"):
        configuration.load_config_file(str(path))
    config = configuration.load_config_file(str(ABLATION))
    del config.ablation
    with pytest.raises(ConfigError, match="no `ablation` section"):
        check_ablation_config(config)


def test_the_summary_has_a_row_per_policy_and_checks_the_goals():
    cfg = EvalConfig(tasks=("niah_single", "vt"), lengths=(1024, 1_048_576), samples_per_cell=4)
    accuracy = {"no RL": (0.5, 0.25, 0.0, 0.0), "RL only": (0.75, 0.75, 0.5, 0.5),
                "SFT": (1.0, 1.0, 0.25, 0.25), "SFT+GRPO": (1.0, 1.0, 0.5, 0.25)}
    results = {name: {"cells": [{"task": t, "length": n, "accuracy": a}
                                for (t, n), a in zip([(t, n) for t in cfg.tasks for n in cfg.lengths], values)]}
               for name, values in accuracy.items()}
    summary = summarize(results, cfg)
    assert summary["policies"]["RL only"]["by_length"] == {"1K": 0.625, "1M": 0.625}
    assert [goal["met"] for goal in summary["goals"]] == [True, True, True]
    table = format_summary(summary)
    assert "| RL only | 62.5% | 62.5% | 62.5% |" in table and "ahead on vt" in table
    results["RL only"]["cells"][1]["accuracy"] = results["RL only"]["cells"][3]["accuracy"] = 0.0  # 0 at 1M
    goals = summarize(results, cfg)["goals"]
    assert [goal["met"] for goal in goals] == [False, False, True]
    assert goals[0]["detail"] == "behind or equal at 1M"


def _tiny_ablation(workdir, tokenizer_dir):
    config = tiny_config(copy=2, retrieval=2, sft=2, rl=2)
    config.workdir = str(workdir)
    config.tokenizer.path = str(tokenizer_dir)
    config.ablation = {"sft_rl_steps": 1, "long_samples_per_cell": 1}
    config.eval.update(enabled=True, tasks=("toy_code",), lengths=(128, 256), samples_per_cell=2, batch=2)
    return config


@pytest.mark.slow
def test_a_tiny_ablation_stopped_twice_resumes_without_redoing_what_finished(tmp_path, sp_tokenizer_dir):
    config = _tiny_ablation(tmp_path / "abl", sp_tokenizer_dir)

    def stopping_at(prefix, lines):
        def log(line):
            lines.append(line)
            if line.startswith(prefix):
                os.kill(os.getpid(), signal.SIGTERM)  # caught by the ablation's guard
        return log

    first: list[str] = []
    with pytest.raises(Preempted, match="before the sft_rl run"):  # asked to stop while rl_only trained
        AblationRun(config, log=stopping_at("rl_only: training", first)).run()
    base_export = tmp_path / "abl" / "base" / "export"
    stamp = {arm: (tmp_path / "abl" / arm / "export" / "model.safetensors").stat().st_mtime_ns
             for arm in ("base", "rl_only")}
    assert not (tmp_path / "abl" / "sft_rl").exists()
    assert not (base_export.parent / "export_sft").exists()  # no SFT in the base: no SFT export

    second: list[str] = []
    with pytest.raises(Preempted, match="the evaluation, after no RL toy_code 128"):
        AblationRun(config, log=stopping_at("[no RL]", second)).run()
    assert second[:2] == [f"base: done earlier, kept ({tmp_path / 'abl' / 'base'})",
                          f"rl_only: done earlier, kept ({tmp_path / 'abl' / 'rl_only'})"]

    third: list[str] = []
    table = AblationRun(config, log=third.append).run()
    assert not any(line.startswith(("base:", "rl_only:", "sft_rl: training", "[no RL] toy_code @ 128"))
                   for line in third if "done earlier" not in line)
    for arm, mtime in stamp.items():  # finished arms are not redone
        assert (tmp_path / "abl" / arm / "export" / "model.safetensors").stat().st_mtime_ns == mtime
    rows = [json.loads(line) for line in (tmp_path / "abl" / "eval" / "cells.jsonl").read_text().splitlines()]
    assert sorted((r["policy"], r["cell"]["length"]) for r in rows) == \
        sorted((name, n) for name in POLICIES for n in (128, 256))  # each cell evaluated once
    for name in POLICIES:
        assert f"| {name} | " in table
    assert table.count("\n| ") >= 4 + 4  # four policies by length, four by task
    out = tmp_path / "abl" / "eval"
    for name in ("ablation.md", "ablation.json", "ablation.png", "table.md", "results.json", "accuracy.png"):
        assert (out / name).is_file(), name
    assert (out / "ablation.md").read_text() == table
    results = json.loads((out / "results.json").read_text())["checkpoints"]
    assert list(results) == list(POLICIES)
    assert results["SFT"]["checkpoint"].endswith("sft_rl/export_sft")


def test_arms_of_an_earlier_base_are_refused(tmp_path):
    config = configuration.load_config_file(str(ABLATION))
    config.workdir = str(tmp_path)
    (tmp_path / "base").mkdir()
    (tmp_path / "rl_only").mkdir()
    # A marker of an earlier version: the steps alone.
    (tmp_path / "base" / "ablation_arm.json").write_text(json.dumps(
        {"steps": {"copy": 300, "retrieval": 100, "sft": 0, "rl": 0}}))
    with pytest.raises(ConfigError, match="base was trained with other settings"):
        AblationRun(config).run()


def test_arm_settings_follow_what_trains_the_arm_and_nothing_else():
    config = configuration.load_config_file(str(ABLATION))
    settings = {arm: arm_settings(config, arm) for arm in ("base", "rl_only", "sft_rl")}
    assert "sft" not in settings["base"] and "rl" not in settings["base"]  # phases an arm skips
    assert "copy" not in settings["rl_only"] and "sft" not in settings["rl_only"]
    assert settings["rl_only"]["rl"]["optimizer"]["learning_rate"] == config.ablation.rl_only.optimizer.learning_rate
    json.dumps(settings)  # plain JSON values, as written into the marker

    other = configuration.load_config_file(str(ABLATION))
    other.workdir, other.eval.samples_per_cell, other.checkpoint.every = "elsewhere", 2, 3
    other.ablation.long_samples_per_cell = 1
    for arm in settings:  # where it is written, how often it saves and the evaluation change no weights
        assert settings_differences(settings[arm], arm_settings(other, arm)) == []

    other.retrieval.answer_prompt_fraction = 0.25
    other.ablation.rl_only.optimizer.learning_rate = 1e-4
    other.sft.steps = 10
    changed = {arm: settings_differences(settings[arm], arm_settings(other, arm)) for arm in settings}
    assert changed == {"base": ["retrieval.answer_prompt_fraction"],
                       "rl_only": ["rl.optimizer.learning_rate"],
                       "sft_rl": ["sft.steps"]}


def test_an_arm_begun_with_other_settings_is_refused_and_a_finished_one_kept(tmp_path):
    config = configuration.load_config_file(str(ABLATION))
    config.workdir = str(tmp_path)
    run = AblationRun(config, log=(lines := []).append)
    run._write_marker("base", finished=True, seconds=1.0)
    run.train_arm("base")  # finished under the same settings: kept, not trained
    assert lines == [f"base: done earlier, kept ({tmp_path / 'base'})"]
    run.check_arms_unchanged()

    run._write_marker("rl_only", finished=False)  # begun, stopped before the end
    changed = configuration.load_config_file(str(ABLATION))
    changed.workdir = str(tmp_path)
    changed.ablation.rl_only.group_size = 4
    changed.ablation.rl_only.optimizer.learning_rate = 1e-4
    with pytest.raises(ConfigError, match=r"rl_only was trained with other settings \(rl.group_size, "
                                          r"rl.optimizer.learning_rate differ\)"):
        AblationRun(changed).check_arms_unchanged()
    assert settings_differences({"a": {"b": 1}, "c": 2}, {"a": {"b": 1, "d": 0}}) == ["a.d", "c"]
