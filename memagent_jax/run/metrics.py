"""Training and evaluation metrics: JSONL + TensorBoard scalar logs, FLOPs and MFU.

MetricsWriter writes each step's scalars twice:

* ``<dir>/metrics.jsonl``: one JSON object per line, flushed on every write, easy to read back
  (``read_jsonl``) for tests and evaluation tables.
* ``<dir>/tensorboard/events.out.tfevents.<time>.<hostname>.<id>.memagent``: a TensorBoard event file
  written by tensorboardX (no TensorFlow needed), one Event per write holding every scalar.

The FLOPs/MFU helpers follow the PaLM paper's accounting (Chowdhery et al. 2022, appendix B).
"""

from __future__ import annotations

import json
import math
import operator
import os
import pathlib
import re
import time
import uuid
from collections.abc import Mapping
from typing import IO, Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MetricsWriter",
    "read_jsonl",
    "model_flops_per_token",
    "PEAK_FLOPS",
    "device_peak_flops",
    "mfu",
]

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# tensorboardX writes events from a background thread; this bounds how long they wait to reach the disk.
TENSORBOARD_FLUSH_S = 2

# Keys every JSONL record carries; a scalar with one of these names would silently overwrite them.
_RESERVED_KEYS = ("step", "time")

# JSON has no NaN/Infinity literals; these strings keep each line valid JSON and read back as floats.
_STR_TO_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# --------------------------------------------------------------------------------------------------
# MetricsWriter
# --------------------------------------------------------------------------------------------------

def _to_float(key: str, value: Any) -> float:
    array = np.asarray(value)
    if array.ndim != 0:
        raise ValueError(f"metric {key!r} must be a scalar, got an array of shape {array.shape}")
    # jnp.issubdtype, not np's: it knows ml_dtypes such as bfloat16, which numpy files under void.
    real = jnp.issubdtype(array.dtype, jnp.integer) or jnp.issubdtype(array.dtype, jnp.floating)
    if not (real or array.dtype == np.bool_):
        raise ValueError(f"metric {key!r} must be a real number, got {type(value).__name__} ({array.dtype})")
    return float(array)


def _json_value(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


class MetricsWriter:
    """Appends scalar metrics to ``<directory>/metrics.jsonl`` and a TensorBoard event file.

    ``enabled=False`` (every process but 0 in a multi-host run) turns every method into a no-op and
    creates no directory or file. ``metrics.jsonl`` is opened for appending so a resumed run continues
    the same file; each writer gets its own TensorBoard event file (a unique name, even for two writers
    started in the same second), which TensorBoard merges by step. TensorBoard events reach the disk
    within TENSORBOARD_FLUSH_S seconds and all of them by ``close()``. Not thread-safe: call it from one thread.
    """

    def __init__(self, directory: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True,
                 jsonl: bool = True) -> None:
        self.directory = pathlib.Path(directory)
        self.enabled = enabled
        self._jsonl: IO[str] | None = None
        self._events: Any = None  # a tensorboardX.FileWriter
        self._closed = False
        self.jsonl_path: pathlib.Path | None = None
        self.event_path: pathlib.Path | None = None
        if not enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if jsonl:
            self.jsonl_path = self.directory / JSONL_NAME
            self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        if tensorboard:
            import tensorboardX  # here, not at the top: it imports torch when torch is installed (~1 s)

            tb_dir = self.directory / TENSORBOARD_DIR
            # tensorboardX names the file by the second and the host: the suffix keeps two writers apart.
            suffix = f".{uuid.uuid4().hex[:12]}.memagent"
            self._events = tensorboardX.FileWriter(str(tb_dir), flush_secs=TENSORBOARD_FLUSH_S,
                                                   filename_suffix=suffix)
            [self.event_path] = tb_dir.glob(f"events.out.tfevents.*{suffix}")

    def write(self, step: int, scalars: Mapping[str, float | int | np.number | jax.Array]) -> None:
        """Record ``scalars`` at ``step``: one JSONL line and one TensorBoard Event holding every value."""
        if not self.enabled:
            return
        if self._closed:
            raise ValueError("MetricsWriter.write() after close()")
        step = operator.index(step)
        for key in scalars:
            if not isinstance(key, str):
                raise TypeError(f"metric names must be str, got {key!r} ({type(key).__name__})")
            if key in _RESERVED_KEYS:
                raise ValueError(f"metric name {key!r} is reserved for the record's own {key}")
            if not key:
                raise ValueError("metric names must be non-empty")
        # One device_get for all values: device arrays are fetched together instead of one sync each.
        host_values = jax.device_get(list(scalars.values()))
        values = {key: _to_float(key, value) for key, value in zip(scalars, host_values)}
        now = time.time()
        if self._jsonl is not None:
            record = {"step": step, "time": now, **{k: _json_value(v) for k, v in values.items()}}
            self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
            self._jsonl.flush()  # a crash loses at most the line being written
        if self._events is not None:
            # simple_value is a float32 field: finite doubles beyond its range are stored as +-inf.
            from tensorboardX.proto.summary_pb2 import Summary

            summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
            self._events.add_summary(summary, global_step=step, walltime=now)

    def discard_after(self, prefix: str, step: int) -> int:
        """Drops the JSONL records of ``prefix/...`` metrics (e.g. one phase's) past ``step``, and a last line a
        kill cut short; returns how many records went.

        A resumed phase calls it with its restored step: the steps it redoes were written before the kill but
        not checkpointed, and must appear once. The file is rewritten beside itself and renamed over it, so a
        kill during the rewrite leaves the old or the new file. TensorBoard events of those steps cannot be
        taken back: the rerun's event file holds them again (the values are the same ones).
        """
        if self._jsonl is None or self.jsonl_path is None:
            return 0
        self._jsonl.close()
        lines = self.jsonl_path.read_text(encoding="utf-8").split("\n")
        kept, dropped = [], 0
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # the unfinished last write of a killed run
                    dropped += 1
                    continue
                raise ValueError(f"{self.jsonl_path}:{number}: not valid JSON") from None
            ours = any(key.startswith(f"{prefix}/") for key in record)
            if ours and record["step"] > step:
                dropped += 1
            else:
                kept.append(line + "\n")
        if dropped:
            fresh = self.jsonl_path.with_name(f".{JSONL_NAME}.rewrite")
            with open(fresh, "w", encoding="utf-8") as out:
                out.writelines(kept)
                out.flush()
                os.fsync(out.fileno())
            os.replace(fresh, self.jsonl_path)
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        return dropped

    def flush(self) -> None:
        if self._jsonl is not None:
            self._jsonl.flush()
        if self._events is not None:
            self._events.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._jsonl is not None:
            self._jsonl.close()
        if self._events is not None:
            self._events.close()  # writes every queued event, then closes the file
        self._jsonl = self._events = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (or of ``<path>/metrics.jsonl`` when ``path`` is a directory).

    The strings "nan", "inf" and "-inf" come back as floats. A last line without its newline that does
    not parse (a write cut short by a crash) is skipped; any other malformed line raises ValueError.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / JSONL_NAME
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):  # no trailing newline: the final write never finished
                break
            raise ValueError(f"{path}:{number}: not valid JSON: {err}") from err
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append({k: _STR_TO_NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in record.items()})
    return records


# --------------------------------------------------------------------------------------------------
# FLOPs and MFU
# --------------------------------------------------------------------------------------------------

def model_flops_per_token(num_params: int, num_layers: int, hidden_size: int, seq_len: int,
                          training: bool) -> float:
    """Matmul FLOPs per token of a decoder-only transformer, PaLM appendix B accounting.

    Forward: ``2 * num_params`` (each weight is one multiply-add) plus attention scores and the
    weighted sum of values, ``2 * 2 * num_layers * seq_len * hidden_size`` (QK^T and AV each cost
    ``2 * seq_len * hidden_size`` per token per layer). Like PaLM, every token is counted as attending
    to all ``seq_len`` positions even with a causal mask, so numbers compare with published MFU.
    Training (forward + backward) is 3x the forward: ``6 N + 12 L T d``.

    ``num_params`` should be the weights used in matmuls: an input embedding lookup is no matmul and
    can be left out, but an output projection (tied to the embedding or not) counts.
    """
    for name, value in (("num_params", num_params), ("num_layers", num_layers),
                        ("hidden_size", hidden_size), ("seq_len", seq_len)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    forward = 2.0 * num_params + 4.0 * num_layers * seq_len * hidden_size
    return 3.0 * forward if training else forward


# bf16 dense (no sparsity) peak FLOP/s per JAX device.
PEAK_FLOPS: dict[str, float] = {
    "H100": 989e12,  # SXM; the PCIe card is listed below and wins as the longer match
    "H100 PCIe": 756e12,
    "H200": 989e12,
    "GH200": 989e12,  # Grace Hopper: the same Hopper GPU
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,  # JAX reports a v5p chip as "TPU v5"; "TPU v5 lite" is the longer match for v5e
    "TPU v6 lite": 918e12,
    "v6e": 918e12,
}


def device_peak_flops(device: jax.Device | None = None) -> float | None:
    """Peak bf16 FLOP/s of ``device`` (default: ``jax.devices()[0]``); None for CPU or an unknown kind.

    ``device.device_kind`` is matched case-insensitively against the keys of PEAK_FLOPS as a
    whole-word substring; the longest matching key wins ("TPU v5 lite" over "TPU v5").
    """
    if device is None:
        device = jax.devices()[0]
    if getattr(device, "platform", None) == "cpu":
        return None
    kind = str(getattr(device, "device_kind", "")).lower()
    # Whole-word matches only, so "TPU v5" does not claim "TPU v5e" nor "H200" claim "GH200".
    matches = [key for key in PEAK_FLOPS
               if re.search(rf"(?<![a-z0-9]){re.escape(key.lower())}(?![a-z0-9])", kind)]
    if not matches:
        return None
    return PEAK_FLOPS[max(matches, key=len)]


def mfu(tokens_per_second: float, flops_per_token: float, num_devices: int,
        peak_flops_per_device: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' peak; None when the peak is unknown."""
    if peak_flops_per_device is None:
        return None
    if num_devices <= 0:
        raise ValueError(f"num_devices must be > 0, got {num_devices}")
    if peak_flops_per_device <= 0:
        raise ValueError(f"peak_flops_per_device must be > 0, got {peak_flops_per_device}")
    return tokens_per_second * flops_per_token / (num_devices * peak_flops_per_device)
