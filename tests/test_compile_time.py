"""benchmarks/compile_time.py stays runnable: every program lowers and compiles from abstract shapes on fake CPU
devices, here at a tiny size (one layer of a small model, short rows)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_program_compiles_from_abstract_shapes(tmp_path):
    out = tmp_path / "compile.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)  # the script makes the mesh's fake devices itself
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile_time.py"), "--preset", "tiny", "--layers", "1",
                    "--mesh", "data=1,fsdp=2,tensor=2", "--row-len", "128", "--rows", "2", "--micro", "1",
                    "--pages", "64", "--max-seq-len", "256", "--prefill-chunk", "128", "--prefill-batch", "2",
                    "--slots", "4", "--decode-steps", "2", "--json", str(out)],
                   check=True, env=env, cwd=tmp_path, timeout=300)
    report = json.loads(out.read_text())
    assert report["scan_layers"] is True and report["layers"] == 1
    assert set(report["results"]) == {"train", "logprobs", "prefill", "prefill_fresh", "decode"}
    for timing in report["results"].values():
        assert 0 < timing["lower_s"] < timing["total_s"] and timing["compile_s"] > 0
