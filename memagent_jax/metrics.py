"""Training and evaluation metrics: JSONL + TensorBoard scalar logs, a console progress bar, FLOPs and MFU.

MetricsWriter writes each step's scalars twice:

* ``<dir>/metrics.jsonl``: one JSON object per line, flushed on every write, easy to read back
  (``read_jsonl``) for tests and evaluation tables.
* ``<dir>/tensorboard/events.out.tfevents.<time>.<hostname>.memagent``: a TensorBoard event file.
  It is written by hand (TFRecord framing, CRC32C, protobuf wire format) so that neither
  TensorFlow nor TensorBoard has to be installed on a training machine.

The FLOPs/MFU helpers follow the PaLM paper's accounting (Chowdhery et al. 2022, appendix B).
"""

from __future__ import annotations

import io
import json
import math
import operator
import os
import pathlib
import re
import socket
import struct
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MetricsWriter",
    "read_jsonl",
    "ProgressBar",
    "model_flops_per_token",
    "PEAK_FLOPS",
    "device_peak_flops",
    "mfu",
]

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"

# Keys every JSONL record carries; a scalar with one of these names would silently overwrite them.
_RESERVED_KEYS = ("step", "time")

# JSON has no NaN/Infinity literals; these strings keep each line valid JSON and read back as floats.
_STR_TO_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# --------------------------------------------------------------------------------------------------
# CRC32C and TFRecord framing
# --------------------------------------------------------------------------------------------------

def _make_crc32c_table() -> tuple[int, ...]:
    # Castagnoli polynomial, bit-reflected (LSB-first), as TFRecord uses.
    poly = 0x82F63B78
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _make_crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``; event records are small, so a table-driven loop is fast enough."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc32c(data: bytes) -> int:
    # TFRecord stores a rotated-and-offset CRC so that a CRC of data that itself holds CRCs stays well mixed.
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _tfrecord(data: bytes) -> bytes:
    """One TFRecord: uint64 length, masked CRC of the length, data, masked CRC of the data (all little-endian)."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_crc32c(length)) + data + struct.pack("<I", _masked_crc32c(data))


# --------------------------------------------------------------------------------------------------
# Protobuf wire format for tensorflow.Event / Summary / Summary.Value
# --------------------------------------------------------------------------------------------------

def _varint(value: int) -> bytes:
    # int64 fields encode negatives as their 64-bit two's complement (10 bytes).
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _float32(value: float) -> bytes:
    try:
        return struct.pack("<f", value)
    except OverflowError:  # finite doubles beyond float32 range: TensorBoard's field is a float, so saturate
        return struct.pack("<f", math.copysign(math.inf, value))


def _summary_value(tag: str, value: float) -> bytes:
    # Summary.Value: 1 = tag (string), 2 = simple_value (float, wire type 5).
    return _length_delimited(1, tag.encode("utf-8")) + _key(2, 5) + _float32(value)


def _event(wall_time: float, step: int, *, file_version: str | None = None,
           scalars: Mapping[str, float] | None = None) -> bytes:
    # Event: 1 = wall_time (double, wire type 1), 2 = step (int64 varint), 3 = file_version, 5 = summary.
    out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(step)
    if file_version is not None:
        out += _length_delimited(3, file_version.encode("utf-8"))
    if scalars is not None:
        summary = b"".join(_length_delimited(1, _summary_value(tag, value)) for tag, value in scalars.items())
        out += _length_delimited(5, summary)
    return out


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
    the same file; each run gets its own TensorBoard event file, which TensorBoard merges by step.
    Not thread-safe: call it from one thread.
    """

    def __init__(self, directory: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True,
                 jsonl: bool = True) -> None:
        self.directory = pathlib.Path(directory)
        self.enabled = enabled
        self._jsonl: IO[str] | None = None
        self._events: IO[bytes] | None = None
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
            self._events, self.event_path = self._open_event_file(self.directory / TENSORBOARD_DIR)
            # TensorBoard recognises the file by this first record.
            self._events.write(_tfrecord(_event(time.time(), 0, file_version="brain.Event:2")))
            self._events.flush()

    @staticmethod
    def _open_event_file(tb_dir: pathlib.Path) -> tuple[IO[bytes], pathlib.Path]:
        tb_dir.mkdir(parents=True, exist_ok=True)
        hostname = socket.gethostname() or "localhost"
        stamp = int(time.time())
        while True:
            path = tb_dir / f"events.out.tfevents.{stamp:010d}.{hostname}.memagent"
            try:
                # Exclusive create: two writers started in the same second must not share a file.
                return open(path, "xb"), path
            except FileExistsError:
                stamp += 1

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
            self._events.write(_tfrecord(_event(now, step, scalars=values)))
            self._events.flush()

    def flush(self) -> None:
        for stream in (self._jsonl, self._events):
            if stream is not None:
                stream.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for stream in (self._jsonl, self._events):
            if stream is not None:
                stream.close()
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
# ProgressBar
# --------------------------------------------------------------------------------------------------

def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


class ProgressBar:
    """Console progress for long loops: ``desc 12/100 [12%] 3.4 it/s loss=0.123``.

    On a terminal the line is redrawn in place (``\\r``) at most every ``min_interval_s``. Elsewhere
    (log files, CI) a full line is printed each time another 10% of ``total`` is done, or after 30 s
    without a line, so logs stay short and readable. ``close()`` prints the final state.
    """

    LOG_INTERVAL_S = 30.0
    LOG_FRACTION = 0.1

    def __init__(self, total: int | None, description: str = "", stream: IO[str] | None = None,
                 enabled: bool = True, min_interval_s: float = 0.2, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # stream defaults to sys.stderr looked up now, not at import, so redirected stderr is honoured.
        self.stream = sys.stderr if stream is None else stream
        self.total = total
        self.description = description
        self.enabled = enabled
        self.min_interval_s = min_interval_s
        self.count = 0
        self.postfix: dict[str, float | str] = {}
        self._clock = clock
        self._start = clock()
        self._tty = _isatty(self.stream)
        self._last_draw = -math.inf  # clock time of the last line or redraw
        self._drawn_count: int | None = None  # count shown by the last line or redraw
        self._next_log_milestone = 1  # non-TTY: next multiple of 10% of total to report
        self._line_width = 0
        self._closed = False

    def format(self) -> str:
        elapsed = self._clock() - self._start
        parts = [self.description] if self.description else []
        if self.total is not None:
            parts.append(f"{self.count}/{self.total}")
            if self.total > 0:
                parts.append(f"[{100 * self.count / self.total:.0f}%]")
        else:
            parts.append(str(self.count))
        parts.append(f"{self.count / elapsed:.3g} it/s" if elapsed > 0 else "? it/s")
        for key, value in self.postfix.items():
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            parts.append(f"{key}={shown}")
        return " ".join(parts)

    def update(self, n: int = 1, **postfix: float | str) -> None:
        if not self.enabled or self._closed:
            return
        self.count += n
        self.postfix.update(postfix)
        now = self._clock()
        done = self.total is not None and self.count >= self.total
        if self._tty:
            if done or now - self._last_draw >= self.min_interval_s:
                self._redraw(now)
            return
        reached_milestone = False
        if self.total is not None and self.total > 0:
            # Printing once per crossed 10% step even if one update jumps several of them.
            milestone = math.floor(self.count / (self.total * self.LOG_FRACTION))
            if milestone >= self._next_log_milestone:
                self._next_log_milestone = milestone + 1
                reached_milestone = True
        start_or_last = self._start if self._drawn_count is None else self._last_draw
        if reached_milestone or now - start_or_last >= self.LOG_INTERVAL_S:
            self._print_line(now)

    def _redraw(self, now: float) -> None:
        line = self.format()
        # Pad with spaces so a shorter line fully covers the previous one.
        self.stream.write("\r" + line + " " * max(0, self._line_width - len(line)))
        self.stream.flush()
        self._line_width = len(line)
        self._last_draw = now
        self._drawn_count = self.count

    def _print_line(self, now: float) -> None:
        self.stream.write(self.format() + "\n")
        self.stream.flush()
        self._last_draw = now
        self._drawn_count = self.count

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        now = self._clock()
        if self._tty:
            self._redraw(now)  # the final count and postfix, even if the last redraw was throttled
            self.stream.write("\n")
            self.stream.flush()
        elif self._drawn_count != self.count:
            self._print_line(now)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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
