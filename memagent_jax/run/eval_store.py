"""The resumable results file of `memagent_jax.evaluate --data`: one JSON line per finished sample.

A 3.5M-token RULER-HQA cell runs for hours, so every sample is appended (and flushed to disk) the moment
its rollouts finish; rerunning the same command reads the file back and skips what is done. The first
line holds the settings that change scores (agent sizes, sampling, metric choice, bad-record policy):
resuming under other settings would mix two experiments in one table, so it is refused. A process killed
mid-write leaves at most one unfinished last line; it is dropped (that sample runs again).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["ResultStore", "sample_key"]

SampleKey = tuple[str, str, int]  # (checkpoint name, resolved data file, record index in the file)


def sample_key(checkpoint: str, path: os.PathLike | str, record: int) -> SampleKey:
    return checkpoint, str(pathlib.Path(path).resolve()), int(record)


class ResultStore:
    """Append-only JSONL of finished samples, keyed by `sample_key`, under fixed `settings`."""

    def __init__(self, path: str | os.PathLike, settings: Mapping[str, Any]):
        self.path = pathlib.Path(path)
        self.settings = json.loads(json.dumps(dict(settings)))  # what JSON gives back, for comparison
        self._done: dict[SampleKey, dict[str, Any]] = {}
        self.dropped_partial = False
        if self.path.is_file() and self.path.stat().st_size:
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write_line({"settings": self.settings})

    def _load(self) -> None:
        raw = self.path.read_bytes()
        if not raw.endswith(b"\n"):  # killed mid-write: the last line is an unfinished sample
            cut = raw.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(cut)
            raw, self.dropped_partial = raw[:cut], True
        lines = raw.decode("utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{self.path}:{number}: not a results line ({err}); move the file away to "
                                 f"start again") from None
            if number == 1:
                self._check_settings(row)
            else:
                self._done[sample_key(row["checkpoint"], row["file"], row["record"])] = row

    def _check_settings(self, row: Mapping[str, Any]) -> None:
        saved = row.get("settings")
        if saved != self.settings:
            changed = sorted(k for k in set(saved or {}) | set(self.settings)
                             if (saved or {}).get(k) != self.settings.get(k))
            raise ValueError(f"{self.path} holds results of other settings (differing: {', '.join(changed)}); "
                             f"use another --out, or the same flags as before")

    def _write_line(self, row: Mapping[str, Any]) -> None:
        line = json.dumps(row, allow_nan=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())  # a finished sample survives a crash of the machine, not only of the process

    def __contains__(self, key: SampleKey) -> bool:
        return key in self._done

    def __len__(self) -> int:
        return len(self._done)

    def get(self, key: SampleKey) -> dict[str, Any] | None:
        return self._done.get(key)

    def add(self, row: Mapping[str, Any]) -> None:
        """Appends one finished sample (a dict with checkpoint, file, record and its scores)."""
        key = sample_key(row["checkpoint"], row["file"], row["record"])
        row = {**row, "file": key[1]}
        self._write_line(row)
        self._done[key] = row

    def rows(self) -> Iterator[dict[str, Any]]:
        return iter(self._done.values())
