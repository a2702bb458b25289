"""The base of every record reader (JSONL, JSON array, Parquet): format parsing, the bad-record policy and
skip accounting; a subclass only indexes its file and reads one raw record.
"""

from __future__ import annotations

import abc
import os
import pathlib
from typing import Any

from memagent_jax.data.document import AnswerMode, Sample
from memagent_jax.data.errors import OnError, RecordError, SkipLog, check_on_error
from memagent_jax.data.records import FORMATS, BadRecord, parse_record

__all__ = ["RecordSource"]


class RecordSource(abc.ABC):
    """Shared logic: format parsing, error policy, skip accounting. Subclasses index and read rows."""

    def __init__(
        self,
        path: str | os.PathLike,
        fmt: str = "auto",
        *,
        on_error: OnError = "raise",
        validate: bool = True,
        task: str | None = None,
        ruler_answer_mode: AnswerMode = "all",
    ):
        check_on_error(on_error)
        if fmt != "auto" and fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected 'auto' or one of {FORMATS}")
        if on_error == "skip" and not validate:
            raise ValueError("on_error='skip' needs validate=True (the length must be known up front)")
        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such data file: {self.path}")
        self.fmt, self.on_error, self.validate, self.task = fmt, on_error, validate, task
        self.ruler_answer_mode = ruler_answer_mode
        self.skip_log = SkipLog(str(self.path))

    # -- subclass interface
    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def _raw(self, index: int) -> tuple[Any, str]:
        """(decoded record, location string) of valid record ``index``; raises RecordError."""

    # -- shared
    @property
    def skipped(self) -> dict[str, int]:
        """Skipped records by reason (empty unless on_error='skip' met bad records)."""
        return dict(self.skip_log.counts)

    def metrics(self) -> dict[str, int]:
        return self.skip_log.metrics()

    def _parse(self, record: Any, position: int, location: str) -> Sample:
        try:
            return parse_record(record, position, self.fmt, self.task, self.ruler_answer_mode)
        except BadRecord as err:
            raise RecordError(location, str(err)) from None

    def _check(self, err: RecordError) -> None:
        """Raise or count a bad record found while indexing."""
        if self.on_error == "raise":
            raise err
        self.skip_log.record(err)

    def __getitem__(self, index: int) -> Sample:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range [0, {len(self)}) in {self.path}")
        record, location = self._raw(index)
        return self._parse(record, index, location)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {len(self)} records, skipped={self.skip_log.total})"
