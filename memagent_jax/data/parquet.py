"""Random-access reader (Grain data source) for Parquet files of MemAgent records.

Opening streams the file in small batches to validate every row (bounded memory) and keeps the
numbers of the valid rows. ``source[i]`` reads the row group that holds the row; the last two row
groups read are cached, so sequential and nearby access is cheap. Errors name the file and row.
"""

from __future__ import annotations

import bisect
import collections
import os
import threading
from typing import Any

import numpy as np

from memagent_jax.data.errors import RecordError
from memagent_jax.data.record_source import RecordSource

__all__ = ["ParquetSource"]


class ParquetSource(RecordSource):
    def __init__(self, path: str | os.PathLike, fmt: str = "auto", *, batch_rows: int = 64, **kwargs: Any):
        super().__init__(path, fmt, **kwargs)
        import pyarrow.parquet as pq

        try:
            meta = pq.ParquetFile(self.path).metadata
        except Exception as err:  # pyarrow raises its own error types for corrupt files
            raise RecordError(str(self.path), f"not a readable Parquet file: {err}") from None
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self._group_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        if self.validate:
            rows = []
            for row, record in enumerate(self._iter_rows(batch_rows)):
                location = f"{self.path} row {row}"
                try:
                    self._parse(record, len(rows), location)
                except RecordError as err:
                    self._check(err)
                    continue
                rows.append(row)
            self._rows = np.asarray(rows, np.int64)
        else:
            self._rows = np.arange(int(self._group_starts[-1]), dtype=np.int64)
        self._init_cache()

    def _init_cache(self) -> None:
        self._lock = threading.Lock()
        self._groups: collections.OrderedDict[int, list[dict[str, Any]]] = collections.OrderedDict()
        self._pf = None

    def _iter_rows(self, batch_rows: int):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=batch_rows):
            yield from batch.to_pylist()

    def _group(self, g: int) -> list[dict[str, Any]]:
        with self._lock:
            if g in self._groups:
                self._groups.move_to_end(g)
                return self._groups[g]
            if self._pf is None:
                import pyarrow.parquet as pq

                self._pf = pq.ParquetFile(self.path)
            rows = self._pf.read_row_group(g).to_pylist()
            self._groups[g] = rows
            if len(self._groups) > 2:
                self._groups.popitem(last=False)
            return rows

    def __len__(self) -> int:
        return len(self._rows)

    def _raw(self, index: int) -> tuple[Any, str]:
        row = int(self._rows[index])
        g = bisect.bisect_right(self._group_starts, row) - 1
        return self._group(g)[row - int(self._group_starts[g])], f"{self.path} row {row}"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for key in ("_lock", "_groups", "_pf"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_cache()
