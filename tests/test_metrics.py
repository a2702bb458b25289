"""Metrics: JSONL and TensorBoard logs (read back with TensorBoard's own reader), FLOPs/MFU."""

import json
import math
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memagent_jax.run import metrics
from memagent_jax.run.metrics import (
    PEAK_FLOPS,
    MetricsWriter,
    device_peak_flops,
    mfu,
    model_flops_per_token,
    read_jsonl,
)


def _strict_json(line):
    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant!r} in {line!r}")
    return json.loads(line, parse_constant=reject)


# ------------------------------------------------------------------------------------------ JSONL

def test_jsonl_round_trip_with_nonfinite_and_array_scalars(tmp_path):
    rows = [
        (0, {"loss": 2.5, "count": 7, "np32": np.float32(0.25), "np_int": np.int64(-3)}),
        (1, {"loss": float("nan"), "jax": jnp.asarray(0.75), "bf16": jnp.asarray(1.5, jnp.bfloat16)}),
        (2, {"loss": float("inf"), "neg": -math.inf, "flag": np.bool_(True), "jax_int": jnp.asarray(4)}),
    ]
    with MetricsWriter(tmp_path) as writer:
        for step, scalars in rows:
            writer.write(step, scalars)
            # flushed on every write: a reader (or a crash) sees each line while the writer is still open
            assert read_jsonl(tmp_path)[-1]["step"] == step

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    raw = [_strict_json(line) for line in lines]  # every line is valid JSON (no NaN/Infinity literals)
    assert raw[1]["loss"] == "nan" and raw[2]["loss"] == "inf" and raw[2]["neg"] == "-inf"
    assert all(isinstance(r["step"], int) and isinstance(r["time"], float) for r in raw)

    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert repr(read_jsonl(tmp_path)) == repr(records)  # directory form reads the same file (repr: nan != nan)
    assert [r["step"] for r in records] == [0, 1, 2]
    assert records[0] == {"step": 0, "time": records[0]["time"], "loss": 2.5, "count": 7.0, "np32": 0.25,
                          "np_int": -3.0}
    assert all(type(v) is float for k, v in records[0].items() if k != "step")
    assert math.isnan(records[1]["loss"])
    assert records[1]["jax"] == 0.75 and records[1]["bf16"] == 1.5
    assert records[2]["loss"] == math.inf and records[2]["neg"] == -math.inf
    assert records[2]["flag"] == 1.0 and records[2]["jax_int"] == 4.0
    assert records[0]["time"] <= records[1]["time"] <= records[2]["time"]


def test_jsonl_appends_across_writers_and_skips_a_cut_last_line(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.write(1, {"a": 1.0})
    with MetricsWriter(tmp_path, tensorboard=False) as writer:  # a resumed run continues the file
        writer.write(2, {"a": 2.0})
    assert [r["a"] for r in read_jsonl(tmp_path)] == [1.0, 2.0]
    assert not (tmp_path / "tensorboard").exists()

    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 3, "a": 3.')  # crash in the middle of a write
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]

    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=":2:"):
        read_jsonl(path)


@pytest.mark.parametrize("key, value, error", [
    ("vector", jnp.ones(3), "'vector'"),
    ("np_vector", np.array([1.0]), "'np_vector'"),
    ("matrix", np.zeros((2, 2)), "'matrix'"),
    ("text", "0.5", "'text'"),
    ("missing", None, "'missing'"),
    ("cplx", 1 + 2j, "'cplx'"),
    ("step", 1.0, "reserved"),
    ("time", 1.0, "reserved"),
    ("", 1.0, "non-empty"),
])
def test_invalid_values_raise_and_write_nothing(tmp_path, key, value, error):
    with MetricsWriter(tmp_path) as writer:
        writer.write(0, {"ok": 1.0})
        with pytest.raises(ValueError, match=error):
            writer.write(1, {"good": 2.0, key: value})
    assert [r["step"] for r in read_jsonl(tmp_path)] == [0]
    events = _reload(tmp_path)
    assert events.Tags()["scalars"] == ["ok"] and [e.step for e in events.Scalars("ok")] == [0]


def test_non_string_keys_and_write_after_close(tmp_path):
    writer = MetricsWriter(tmp_path)
    with pytest.raises(TypeError, match="str"):
        writer.write(0, {3: 1.0})
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError, match="close"):
        writer.write(1, {"a": 1.0})


def test_disabled_writer_creates_nothing(tmp_path):
    target = tmp_path / "run" / "logs"
    with MetricsWriter(target, enabled=False) as writer:
        writer.write(0, {"loss": 1.0})
        writer.write(1, {"bad": np.ones(3)})  # not even validated: non-zero processes do no work
        writer.flush()
    assert not (tmp_path / "run").exists()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ TensorBoard

def _reload(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory / "tensorboard"))
    events.Reload()
    return events


def test_tensorboard_events_read_back_by_tensorboard(tmp_path):
    steps = [0, 1, 5, 10, 123456789012]  # last one needs a multi-byte varint beyond 32 bits
    written = {
        "loss": [2.5, 1.25, 0.5, float("nan"), 0.125],
        "train/accuracy": [0.0, 0.1, 0.5, 0.9, 1.0],
        "lr": [1e-3, 9e-4, 5e-4, -2.0, float("inf")],
    }
    with MetricsWriter(tmp_path, jsonl=False) as writer:
        for i, step in enumerate(steps):
            scalars = {"loss": written["loss"][i], "train/accuracy": np.float32(written["train/accuracy"][i]),
                       "lr": jnp.asarray(written["lr"][i])}
            writer.write(step, scalars)
        # Events reach the file while the writer is open, within the background thread's flush interval.
        deadline = time.monotonic() + 10 * metrics.TENSORBOARD_FLUSH_S
        while "loss" not in _reload(tmp_path).Tags()["scalars"] or \
                len(_reload(tmp_path).Scalars("loss")) < len(steps):
            assert time.monotonic() < deadline, "events written 20 s ago are still not in the file"
            time.sleep(0.1)
    assert not (tmp_path / "metrics.jsonl").exists()

    files = list((tmp_path / "tensorboard").iterdir())
    assert len(files) == 1
    assert files[0].name.startswith("events.out.tfevents.") and files[0].name.endswith(".memagent")

    acc = _reload(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == sorted(written)
    for tag, values in written.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == steps
        # simple_value is a 32-bit float in the Event proto
        np.testing.assert_array_equal(np.array([e.value for e in events], np.float32), np.array(values, np.float32))
        assert all(e.wall_time > 1e9 for e in events)


def test_two_writers_in_the_same_second_get_separate_event_files(tmp_path):
    first = MetricsWriter(tmp_path, jsonl=False)
    second = MetricsWriter(tmp_path, jsonl=False)  # tensorboardX alone would name both files alike
    first.write(1, {"a": 1.0})
    second.write(2, {"a": 2.0})
    first.close()
    second.close()
    assert first.event_path != second.event_path
    assert len(list((tmp_path / "tensorboard").iterdir())) == 2
    assert sorted(e.step for e in _reload(tmp_path).Scalars("a")) == [1, 2]  # neither file overwrote the other


# ------------------------------------------------------------------------------------------ FLOPs / MFU

def test_model_flops_per_token_hand_computed():
    # N=1000, L=2, T=8, d=16: forward 2*1000 + 4*2*8*16 = 2000 + 1024
    assert model_flops_per_token(1000, 2, 16, 8, training=False) == 3024.0
    assert model_flops_per_token(1000, 2, 16, 8, training=True) == 9072.0  # 6N + 12LTd
    # 7B-ish: 6 * 7e9 + 12 * 32 * 4096 * 4096
    assert model_flops_per_token(7_000_000_000, 32, 4096, 4096, training=True) == 6 * 7e9 + 12 * 32 * 4096 * 4096
    with pytest.raises(ValueError, match="seq_len"):
        model_flops_per_token(1, 1, 1, -1, training=False)


def test_mfu_hand_computed():
    # 10,000 tokens/s * 6e9 FLOPs/token = 6e13 FLOP/s over 8 devices of 1e15 peak = 0.0075
    assert mfu(10_000, 6e9, 8, 1e15) == pytest.approx(0.0075)
    assert mfu(1000.0, 9072.0, 1, 9072.0 * 2000) == pytest.approx(0.5)
    assert mfu(10_000, 6e9, 8, None) is None
    with pytest.raises(ValueError):
        mfu(1.0, 1.0, 0, 1e12)


def test_device_peak_flops():
    assert device_peak_flops(None) is None  # tests run on CPU
    assert device_peak_flops(jax.devices("cpu")[0]) is None

    def fake(kind, platform="gpu"):
        return types.SimpleNamespace(device_kind=kind, platform=platform)

    assert device_peak_flops(fake("NVIDIA H100 80GB HBM3")) == 989e12
    assert device_peak_flops(fake("NVIDIA H100 PCIe")) == 756e12
    assert device_peak_flops(fake("NVIDIA H200")) == 989e12
    assert device_peak_flops(fake("NVIDIA A100-SXM4-80GB")) == 312e12
    assert device_peak_flops(fake("TPU v4", "tpu")) == 275e12
    assert device_peak_flops(fake("TPU v5 lite", "tpu")) == 197e12
    assert device_peak_flops(fake("TPU v5e", "tpu")) == 197e12
    assert device_peak_flops(fake("TPU v5", "tpu")) == 459e12
    assert device_peak_flops(fake("tpu v5p", "tpu")) == 459e12
    assert device_peak_flops(fake("TPU v6 lite", "tpu")) == 918e12
    assert device_peak_flops(fake("NVIDIA GH200 480GB")) == 989e12
    assert device_peak_flops(fake("Tesla T4")) is None
    assert device_peak_flops(fake("TPU v50", "tpu")) is None  # whole words only
    assert PEAK_FLOPS["H100"] == 989e12 and PEAK_FLOPS["TPU v6 lite"] == 918e12


def test_discard_after_drops_one_phases_later_steps_and_a_cut_last_line(tmp_path):
    from memagent_jax.run.metrics import MetricsWriter, read_jsonl

    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        for step in (1, 2, 3):
            writer.write(step, {"copy/nll": float(step)})
        for step in (1, 2, 3):
            writer.write(step, {"sft/nll": 10.0 + step})
    with open(tmp_path / "metrics.jsonl", "a") as file:
        file.write('{"step": 4, "sft/nll"')  # a kill in the middle of a write
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        assert writer.discard_after("sft", 1) == 3  # steps 2 and 3, and the cut line
        writer.write(2, {"sft/nll": 12.0})
    rows = [(row["step"], next(k for k in row if "/" in k)) for row in read_jsonl(tmp_path)]
    assert rows == [(1, "copy/nll"), (2, "copy/nll"), (3, "copy/nll"), (1, "sft/nll"), (2, "sft/nll")]
