"""Random-access readers (Grain data sources) for JSONL and JSON-array files of records.

Opening a file scans it once and keeps only the byte offsets of its valid records, so ``source[i]``
is one ``os.pread`` plus one ``json.loads`` and memory stays small whatever the file's size. With
``validate=True`` (the default) every record is parsed during that scan: a malformed one raises
``RecordError`` naming the file and line, or, with ``on_error="skip"``, is left out of the index and
counted in ``skipped``/``metrics()``. ``validate=False`` opens huge files faster; errors then surface
on access (skip mode needs validation, to know the length up front).

``open_source(path)`` picks the reader by extension (.jsonl, .json, .parquet).
"""

from __future__ import annotations

import json
import mmap
import os
import pathlib
import re
import threading
from typing import Any

import numpy as np

from memagent_jax.data.errors import RecordError
from memagent_jax.data.parquet import ParquetSource
from memagent_jax.data.record_source import RecordSource

__all__ = ["JsonArraySource", "JsonlSource", "RecordSource", "open_source", "read_json"]


class _PreadFile:
    """Thread-safe positional reads; reopened after pickling or fork."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self._fd: int | None = None
        self._pid = -1
        self._lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytes:
        if self._fd is None or self._pid != os.getpid():
            with self._lock:
                if self._fd is None or self._pid != os.getpid():
                    self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return os.pread(self._fd, length, offset)

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


def _loads(raw: bytes, location: str) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecordError(location, f"invalid JSON: {err}") from None
    except RecursionError:  # json.loads recurses once per nesting level
        raise RecordError(location, "invalid JSON: nested too deeply") from None


def read_json(path: str | os.PathLike) -> Any:
    """A whole JSON file (a source dataset such as HotpotQA or SQuAD), or RecordError naming the file."""
    return _loads(pathlib.Path(path).read_bytes(), str(path))


class JsonlSource(RecordSource):
    """One JSON record per line; blank lines are allowed and ignored."""

    def __init__(self, path: str | os.PathLike, fmt: str = "auto", **kwargs: Any):
        super().__init__(path, fmt, **kwargs)
        offsets, lengths, lines = [], [], []
        with open(self.path, "rb") as f:
            offset = 0
            for lineno, raw in enumerate(f, start=1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                if self.validate:
                    location = f"{self.path}:{lineno}"
                    try:
                        self._parse(_loads(raw, location), len(offsets), location)
                    except RecordError as err:
                        self._check(err)
                        continue
                offsets.append(start)
                lengths.append(len(raw))
                lines.append(lineno)
        self._offsets = np.asarray(offsets, np.int64)
        self._lengths = np.asarray(lengths, np.int64)
        self._lines = np.asarray(lines, np.int64)
        self._file = _PreadFile(self.path)

    def __len__(self) -> int:
        return len(self._offsets)

    def line_of(self, index: int) -> int:
        """The 1-based file line of valid record ``index``."""
        return int(self._lines[index])

    def _raw(self, index: int) -> tuple[Any, str]:
        location = f"{self.path}:{self._lines[index]}"
        return _loads(self._file.read(int(self._offsets[index]), int(self._lengths[index])), location), location


# A JSON string (with escapes) or one structural character: scanned by the regex engine in C, so a
# multi-megabyte context string is a single match.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]|[^\s,:\[\]{}"]+')


class JsonArraySource(RecordSource):
    """A file holding one JSON array of records (MemAgent's evaluation JSON), indexed without loading it."""

    def __init__(self, path: str | os.PathLike, fmt: str = "auto", **kwargs: Any):
        super().__init__(path, fmt, **kwargs)
        spans: list[tuple[int, int]] = []
        if self.path.stat().st_size == 0:  # mmap refuses an empty file
            raise RecordError(f"{self.path}:1", "expected a JSON array of records, the file is empty")
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            spans = self._scan(buf)
            lines = _LineCounter(buf)
            good = []
            for i, (start, end) in enumerate(spans):
                if self.validate:
                    location = f"{self.path}:{lines.line_at(start)} (element {i})"
                    try:
                        self._parse(_loads(buf[start:end], location), len(good), location)
                    except RecordError as err:
                        self._check(err)
                        continue
                good.append((start, end, i))
        self._spans = np.asarray([(s, e) for s, e, _ in good], np.int64).reshape(-1, 2)
        self._elements = np.asarray([i for _, _, i in good], np.int64)
        self._file = _PreadFile(self.path)

    def _scan(self, buf: Any) -> list[tuple[int, int]]:
        """(start, end) byte spans of the top-level array's elements (objects or anything else)."""
        stripped = re.match(rb"\s*", buf).end()
        if stripped >= len(buf) or buf[stripped : stripped + 1] != b"[":
            raise RecordError(f"{self.path}:1", "expected a JSON array of records")
        spans, depth, start = [], 0, -1
        for m in _TOKENS.finditer(buf, stripped):
            c = m.group()[:1]
            if c in b"[{":
                depth += 1
                if depth == 2:
                    start = m.start()
            elif c in b"]}":
                depth -= 1
                if depth == 1:
                    spans.append((start, m.end()))
                elif depth == 0:
                    return spans
            elif depth == 1:  # a scalar element: not a record, but reported where it is, never dropped
                spans.append((m.start(), m.end()))
        raise RecordError(f"{self.path}:{_LineCounter(buf).line_at(len(buf))}", "unterminated JSON array")

    def __len__(self) -> int:
        return len(self._spans)

    def _raw(self, index: int) -> tuple[Any, str]:
        start, end = (int(x) for x in self._spans[index])
        location = f"{self.path} (element {self._elements[index]}, byte {start})"
        return _loads(self._file.read(start, end - start), location), location


class _LineCounter:
    """Line numbers of increasing byte offsets, counting each newline once."""

    def __init__(self, buf: Any):
        self._buf, self._pos, self._line = buf, 0, 1

    def line_at(self, offset: int) -> int:
        if offset < self._pos:
            self._pos, self._line = 0, 1
        self._line += self._buf[self._pos : offset].count(b"\n")
        self._pos = offset
        return self._line


def open_source(path: str | os.PathLike, fmt: str = "auto", **kwargs: Any) -> RecordSource:
    """A reader for ``path`` chosen by extension: .jsonl, .json (an array) or .parquet."""
    suffix = pathlib.Path(path).suffix.lower()
    if suffix == ".jsonl":
        return JsonlSource(path, fmt, **kwargs)
    if suffix == ".json":
        return JsonArraySource(path, fmt, **kwargs)
    if suffix == ".parquet":
        return ParquetSource(path, fmt, **kwargs)
    raise ValueError(f"unsupported data file {path}: expected .jsonl, .json or .parquet")
