"""A phase's data from its config: files and synthetic tasks mixed by weight.

Each entry of ``config.<phase>.sources`` is a dict, either a file glob or a synthetic task::

    {"path": "data/hotpotqa_train*.parquet", "weight": 3}          # + "format", "on_error", "task"
    {"task": "niah_single", "lengths": (1024, 2048), "weight": 1}

Files: MemAgent training rows (Parquet/JSONL), MemAgent evaluation rows (JSON/JSONL) or RULER rows
(JSONL); the files of one glob (sorted) read as one source and must share a format. ``on_error``:
"raise" (default: a malformed record stops the run, naming the file and row) or "skip" (counted in the
run's metrics as ``data/skipped``). A task's lengths share its weight equally. Everything is opened and
checked here, before any model exists; a bad entry raises ``SourceError`` naming the entry and the key.
"""

from __future__ import annotations

import bisect
import dataclasses
import glob
import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from memagent_jax.data.document import Sample, TextTokenizer
from memagent_jax.data.errors import RecordError
from memagent_jax.data.mixture import MixtureSource
from memagent_jax.data.readers import open_source
from memagent_jax.data.record_source import RecordSource
from memagent_jax.data.records import FORMATS
from memagent_jax.data.synthetic import SyntheticSource
from memagent_jax.data.tasks import TASKS, make_task

__all__ = ["FileSource", "SourceError", "SourceSpec", "build_sources", "data_files", "parse_sources"]

_FILE_KEYS = {"path", "weight", "format", "on_error", "task"}
_TASK_KEYS = {"task", "lengths", "weight"}


class SourceError(ValueError):
    """A data source entry is wrong; the message names it."""


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One entry of a phase's sources: a file glob (path) or a synthetic task (task and lengths)."""

    weight: Fraction
    path: str = ""
    task: str = ""
    lengths: tuple[int, ...] = ()
    format: str = "auto"
    on_error: str = "raise"

    @property
    def is_file(self) -> bool:
        return bool(self.path)


def _weight(value: Any, where: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise SourceError(f"{where}: weight must be a positive number, got {value!r}")
    return Fraction(value).limit_denominator(1000)


def parse_sources(entries: Sequence[Any], where: str) -> list[SourceSpec]:
    """The specs of ``entries`` (checked: keys, types, known tasks and formats), or SourceError."""
    if not isinstance(entries, (list, tuple)) or not entries:
        raise SourceError(f"{where}: expected a non-empty tuple of source dicts, got {entries!r:.80}")
    specs = []
    for i, entry in enumerate(entries):
        here = f"{where}[{i}]"
        if not isinstance(entry, Mapping):
            raise SourceError(f"{here}: expected a dict with 'path' or 'task', got {entry!r:.80}")
        entry = dict(entry)
        if "path" in entry:
            unknown = set(entry) - _FILE_KEYS
            if unknown:
                raise SourceError(f"{here}: unknown key(s) {sorted(unknown)} for a file source; "
                                  f"known: {sorted(_FILE_KEYS)}")
            path, fmt, on_error = entry["path"], entry.get("format", "auto"), entry.get("on_error", "raise")
            if not isinstance(path, str) or not path:
                raise SourceError(f"{here}: path must be a non-empty string (a file or a glob)")
            if fmt != "auto" and fmt not in FORMATS:
                raise SourceError(f"{here}: format must be 'auto' or one of {FORMATS}, got {fmt!r}")
            if on_error not in ("raise", "skip"):
                raise SourceError(f"{here}: on_error must be 'raise' or 'skip', got {on_error!r}")
            specs.append(SourceSpec(_weight(entry.get("weight", 1), here), path=path, task=entry.get("task", ""),
                                    format=fmt, on_error=on_error))
        elif "task" in entry:
            unknown = set(entry) - _TASK_KEYS
            if unknown:
                raise SourceError(f"{here}: unknown key(s) {sorted(unknown)} for a task source; "
                                  f"known: {sorted(_TASK_KEYS)}")
            task, lengths = entry["task"], entry.get("lengths", ())
            if task not in TASKS:
                raise SourceError(f"{here}: unknown task {task!r}; known: {sorted(TASKS)}")
            if isinstance(lengths, int):
                lengths = (lengths,)
            if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
                raise SourceError(f"{here}: lengths must be a non-empty tuple of token counts >= 1, got {lengths!r}")
            specs.append(SourceSpec(_weight(entry.get("weight", 1), here), task=task, lengths=tuple(lengths)))
        else:
            raise SourceError(f"{here}: a source needs 'path' (files) or 'task' (synthetic), got keys {sorted(entry)}")
    return specs


def natural_key(path: str) -> list[Any]:
    """Sort key that compares runs of digits as numbers: train-2 before train-10, 4096/ before 16384/."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path)]


def data_files(pattern: str) -> list[pathlib.Path]:
    """The files a data path names: itself, or a glob's matches in natural name order (numbers by value, so
    RULER's 4096/ comes before 16384/; `**` recurses). A missing
    file, a folder or a glob that matches nothing raises FileNotFoundError or ValueError saying so."""
    expanded = os.path.expanduser(pattern)
    if glob.has_magic(expanded):
        files = [pathlib.Path(p) for p in sorted(glob.glob(expanded, recursive=True), key=natural_key)
                 if os.path.isfile(p)]
        if not files:
            raise FileNotFoundError(f"{pattern!r} matches no file")
        return files
    path = pathlib.Path(expanded)
    if path.is_dir():
        raise ValueError(f"{pattern} is a folder: give a file or a glob such as '{path}/*.jsonl'")
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {pattern}")
    return [path]


class FileSource:
    """The files of one glob as one random-access source (records in file order, files in name order)."""

    def __init__(self, spec: SourceSpec, where: str):
        try:
            paths = data_files(spec.path)
        except (OSError, ValueError) as err:
            raise SourceError(f"{where}: {err}") from None
        self.spec, self.where = spec, where
        self.readers: list[RecordSource] = []
        for path in paths:
            try:
                reader = open_source(path, spec.format, on_error=spec.on_error, task=spec.task or None)
            except (RecordError, ValueError) as err:
                raise SourceError(f"{where}: {err}") from None
            if len(reader) == 0:
                raise SourceError(f"{where}: {path} holds no usable record (skipped: {reader.skipped or 'none'})")
            self.readers.append(reader)
        formats = {str(r.path): r[0].meta.get("format") for r in self.readers}
        if len(set(formats.values())) > 1:
            raise SourceError(f"{where}: the files of {spec.path!r} mix formats: {formats}")
        self.format = next(iter(formats.values()))
        self._starts = np.cumsum([0] + [len(r) for r in self.readers]).tolist()

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> Sample:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range [0, {len(self)}) in {self.spec.path}")
        file = bisect.bisect_right(self._starts, index) - 1
        return self.readers[file][index - self._starts[file]]

    def has_evidence(self) -> bool:
        """Whether the records mark their evidence (supporting facts), as SFT's oracle memories need."""
        return bool(self[0].meta.get("evidence"))

    def metrics(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for reader in self.readers:
            for key, value in reader.metrics().items():
                total[key] = total.get(key, 0) + value
        return total

    def __repr__(self) -> str:
        return f"FileSource({self.spec.path!r}, {len(self)} records, format {self.format})"


def build_sources(specs: Sequence[SourceSpec], where: str, tokenizer: TextTokenizer, *, seed: int,
                  num_samples: int) -> tuple[MixtureSource, list[FileSource]]:
    """The phase's mixture (every file opened and checked) and its file sources. Synthetic tasks yield
    `num_samples` samples per length, seeded by `seed`."""
    sources: list[Any] = []
    weights: list[Fraction] = []
    files = []
    for i, spec in enumerate(specs):
        if spec.is_file:
            source = FileSource(spec, f"{where}[{i}]")
            files.append(source)
            sources.append(source)
            weights.append(spec.weight)
        else:
            for length in spec.lengths:
                sources.append(SyntheticSource(make_task(spec.task, tokenizer, int(length), seed=seed), num_samples))
                weights.append(spec.weight / len(spec.lengths))
    return MixtureSource(sources, weights), files
