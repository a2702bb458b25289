"""Export samples (synthetic or read) in MemAgent's training/evaluation formats, for training on own data.

``write_jsonl`` streams each document into its row piece by piece, so a 10M-token context is written
without being built as one string. ``write_parquet`` materialises one row group at a time.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable

from memagent_jax.data.document import Sample
from memagent_jax.data.records import to_memagent_eval, to_memagent_train

__all__ = ["write_jsonl", "write_parquet"]

_ROW = {"memagent_train": to_memagent_train, "memagent_eval": to_memagent_eval}


def _row_without_context(sample: Sample, fmt: str) -> dict:
    if fmt not in _ROW:
        raise ValueError(f"fmt must be one of {sorted(_ROW)}, got {fmt!r}")
    row = _ROW[fmt](sample, context="")
    del row["context"]
    return row


def write_jsonl(samples: Iterable[Sample], path: str | os.PathLike, fmt: str = "memagent_train") -> int:
    """Write one row per sample; returns the number of rows. The file is replaced atomically."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for sample in samples:
            head = json.dumps(_row_without_context(sample, fmt), ensure_ascii=False)
            f.write(head[:-1] + (', "context": "' if len(head) > 2 else '"context": "'))
            for text in sample.document.iter_text():
                f.write(json.dumps(text, ensure_ascii=False)[1:-1])  # escaping is per character
            f.write('"}\n')
            n += 1
    os.replace(tmp, path)
    return n


def write_parquet(
    samples: Iterable[Sample], path: str | os.PathLike, fmt: str = "memagent_train", row_group_rows: int = 64
) -> int:
    """Write rows to Parquet in row groups of ``row_group_rows`` (small groups keep random reads cheap)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt not in _ROW:
        raise ValueError(f"fmt must be one of {sorted(_ROW)}, got {fmt!r}")
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    writer, n, rows = None, 0, []

    def flush() -> None:
        nonlocal writer
        table = pa.Table.from_pylist(rows)
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table.cast(writer.schema), row_group_size=row_group_rows)
        rows.clear()

    try:
        for sample in samples:
            rows.append(_ROW[fmt](sample))
            n += 1
            if len(rows) == row_group_rows:
                flush()
        if rows or writer is None:
            if rows:
                flush()
            else:  # no samples: an empty file with no schema is not readable, so refuse
                raise ValueError("write_parquet needs at least one sample")
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, path)
    return n
