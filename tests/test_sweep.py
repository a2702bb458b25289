"""Sweeps: grid expansion, key checks, dry runs for local and SLURM, and a real local sweep's summary."""

import json
import pathlib
import sys

import pytest

from memagent_jax.run.config_error import ConfigError
from memagent_jax.run.evaluation import EvalConfig, write_results
from memagent_jax.run.sweep_grid import expand, final_metrics, parse_axis, point_name, summarize
from memagent_jax.sweep import main

CONFIG = str(pathlib.Path(__file__).resolve().parent / "tiny_run_config.py")


def test_axes_expand_into_every_combination_last_axis_fastest():
    axes = [parse_axis("rl.optimizer.learning_rate=1e-6,3e-6"), parse_axis("rl.group_size=8, 16")]
    points = expand(axes)
    assert points == [{"rl.optimizer.learning_rate": "1e-6", "rl.group_size": "8"},
                      {"rl.optimizer.learning_rate": "1e-6", "rl.group_size": "16"},
                      {"rl.optimizer.learning_rate": "3e-6", "rl.group_size": "8"},
                      {"rl.optimizer.learning_rate": "3e-6", "rl.group_size": "16"}]
    assert len({point_name(p) for p in points}) == 4
    assert point_name({"a.b": "x/y z"}) == "a.b=x-y-z"


@pytest.mark.parametrize("spec", ["rl.group_size", "=1,2", "rl.group_size=1,,2"])
def test_malformed_axes_are_refused(spec):
    with pytest.raises(ConfigError, match="bad sweep axis"):
        parse_axis(spec)


def test_unknown_keys_and_repeated_axes_stop_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match="no field 'lr'"):
        main(["--config", CONFIG, "--sweep", "rl.lr=1e-6,3e-6", "--root", str(tmp_path)])
    with pytest.raises(ConfigError, match="a section"):
        main(["--config", CONFIG, "--sweep", "rl.optimizer=1,2", "--root", str(tmp_path)])
    with pytest.raises(ConfigError, match="swept twice"):
        main(["--config", CONFIG, "--sweep", "rl.steps=1,2", "rl.steps=3", "--root", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_a_typo_in_the_config_file_stops_the_sweep_naming_the_key(tmp_path):
    path = tmp_path / "typo_config.py"
    path.write_text(f"import runpy\n\n\ndef get_config():\n    config = runpy.run_path({CONFIG!r})['get_config']()\n"
                    "    config.rl.batchsize = 8\n    return config\n")
    with pytest.raises(ConfigError, match=r"config\.rl\.batchsize is not a known key; did you mean config\.rl\.b"):
        main(["--config", str(path), "--sweep", "rl.group_size=2,4", "--root", str(tmp_path / "runs"), "--dry-run"])


def test_dry_runs_print_one_command_per_point(tmp_path, capsys):
    assert main(["--config", CONFIG, "--sweep", "rl.group_size=2,4", "--set", "rl.steps=3",
                 "--root", str(tmp_path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "memagent_jax.train" in lines[0]
    assert f"--config.workdir={tmp_path}/rl.group_size=4" in lines[1] and "--config.rl.steps=3" in lines[1]
    assert main(["--config", CONFIG, "--sweep", "rl.group_size=2,4", "--root", str(tmp_path), "--dry-run",
                 "--slurm", "launch/slurm.sbatch"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert all(" launch/slurm.sbatch " + CONFIG + " --config.workdir=" in line for line in lines)
    assert lines[0].split("] ", 1)[1].startswith("sbatch --job-name=sweep-rl.group_size=2")
    assert not list(tmp_path.iterdir())


def test_a_local_sweep_runs_every_point_and_tabulates_their_final_metrics(tmp_path, sp_tokenizer_dir):
    tokenizer = sp_tokenizer_dir
    root = tmp_path / "sweep"
    code = main(["--config", CONFIG, "--sweep", "sft.optimizer.learning_rate=1e-3,1e-2",
                 "--set", f"tokenizer.path={tokenizer}", "sft.steps=1", "rl.steps=0",
                 "--root", str(root), "--python", sys.executable])
    assert code == 0
    rows = json.loads((root / "summary.json").read_text())
    assert [r["overrides"]["sft.optimizer.learning_rate"] for r in rows] == ["1e-3", "1e-2"]
    assert all(r["status"] == "done" and "sft/nll" in r["metrics"] for r in rows)
    table = (root / "summary.md").read_text()
    assert "| sft.optimizer.learning_rate | status | sft/nll |" in table
    # The points really ran with their own learning rates: different weights.
    low, high = (root / f"sft.optimizer.learning_rate={lr}" / "export" / "model.safetensors" for lr in ("1e-3", "1e-2"))
    assert low.read_bytes() != high.read_bytes()


def test_the_summary_reads_last_metrics_and_evaluation_means_and_lists_failures(tmp_path):
    run = tmp_path / "rl.group_size=2"
    (run / "metrics").mkdir(parents=True)
    (run / "metrics" / "metrics.jsonl").write_text(
        '{"step": 1, "time": 0, "rl/reward_mean": 0.25}\n{"step": 2, "time": 1, "rl/reward_mean": 0.5}\n')
    cfg = EvalConfig(tasks=("niah_single",), lengths=(1024, 4096), samples_per_cell=2)
    cells = [{"task": "niah_single", "length": n, "accuracy": a} for n, a in ((1024, 1.0), (4096, 0.5))]
    write_results({"SFT+GRPO": {"cells": cells}}, cfg, run / "eval")  # the evaluation's own writer
    assert final_metrics(run) == {"rl/reward_mean": 0.5, "eval/SFT+GRPO/mean": 0.75}
    points = [{"rl.group_size": "2"}, {"rl.group_size": "4"}]
    table = summarize(tmp_path, points, {"rl.group_size=4": "failed (exit 1)"})
    assert "| 2 | done | 0.5 | 0.75 |" in table and "| 4 | failed (exit 1) |" in table
