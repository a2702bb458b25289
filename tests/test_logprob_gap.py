"""The bfloat16 sampler/trainer log-prob gap stays bounded (benchmarks/logprob_gap.py measures it; the
numbers are in BENCHMARKS.md). Slow: about 20 seconds on 2 cores; `python -m pytest -q -m slow`."""

import importlib.util
import pathlib

import pytest

BENCHMARK = pathlib.Path(__file__).parent.parent / "benchmarks" / "logprob_gap.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("logprob_gap", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bfloat16_gap_at_12_layers_stays_under_2e_2_mean_with_no_token_above_0_1():
    benchmark = _benchmark()
    row = benchmark.measure_gap(12, benchmark.parse_args([]))
    assert row["tokens"] >= 1000
    assert row["mean"] <= 2e-2 and row["max"] < 0.1, row
