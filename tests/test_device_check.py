"""benchmarks/device_check.py stays runnable: its --smoke mode runs every section at tiny sizes on CPU
(about 40 s on 2 idle cores), and its runner keeps going past a failing section."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
SECTIONS = ["environment", "roofline", "attention", "decode", "prefill", "train", "logprob_gap", "grpo"]


def _device_report():
    spec = importlib.util.spec_from_file_location("device_report", BENCHMARKS / "device_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_failing_section_is_recorded_and_the_next_still_runs(tmp_path):
    report_lib = _device_report()
    report = report_lib.Report(tmp_path, {"mode": "test"})

    def broken() -> dict:
        raise RuntimeError("no GPU")

    sections = [report_lib.Section("broken", broken, 0),
                report_lib.Section("fine", lambda: {"value": 1.5, "rows": [{"a": 1, "b": "x"}]}, 0),
                report_lib.Section("too_big", lambda: {}, 1e9)]
    report_lib.run_sections(sections, report, budget_s=60)
    saved = json.loads(report.json_path.read_text())["sections"]
    assert saved["broken"]["status"] == "error" and "RuntimeError: no GPU" in saved["broken"]["error"]
    assert saved["fine"] == {"status": "ok", "result": {"value": 1.5, "rows": [{"a": 1, "b": "x"}]},
                             "seconds": saved["fine"]["seconds"]}
    assert saved["too_big"]["status"] == "skipped"
    markdown = report.markdown_path.read_text()
    assert "## broken: error" in markdown and "| a | b |" in markdown and "| 1 | x |" in markdown


def test_a_section_that_outlives_the_budget_is_stopped(tmp_path):
    report_lib = _device_report()
    report = report_lib.Report(tmp_path, {})

    def endless() -> dict:
        while True:
            time.sleep(0.05)

    start = time.monotonic()
    report_lib.run_sections([report_lib.Section("endless", endless, 0),
                             report_lib.Section("after", lambda: {}, 0)], report, budget_s=1)
    assert time.monotonic() - start < 10
    assert report.sections["endless"]["status"] == "timeout"
    assert report.sections["after"]["status"] == "skipped"


def test_smoke_runs_every_section_on_cpu(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, str(BENCHMARKS / "device_check.py"), "--smoke", "--out", str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sections = json.loads((tmp_path / "device_check.json").read_text())["sections"]
    assert list(sections) == SECTIONS
    assert all(s["status"] == "ok" for s in sections.values()), sections
    kernels = {(row["kernel"], row["dtype"]): row for row in sections["attention"]["result"]["rows"]}
    for dtype, tolerance in (("bfloat16", 2e-2), ("float32", 1e-5)):
        assert kernels[("ours (pallas triton)", dtype)]["max_abs_err"] <= tolerance
    assert [row["batch"] for row in sections["decode"]["result"]["rows"]] == [2, 4]
    assert sections["grpo"]["result"]["updates"] >= 1
    assert "## grpo: ok" in (tmp_path / "device_check.md").read_text()
