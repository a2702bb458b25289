"""Export samples (synthetic or read) in MemAgent's training/evaluation formats, for training on own data.

``write_jsonl`` streams each document into its row piece by piece, so a 10M-token context is written
without being built as one string. ``write_parquet`` materialises one row group at a time. Every file is
written under a hidden temporary name next to the target and renamed when complete, so a reader (or a
glob) never sees a half-written file; a failed write leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any

from memagent_jax.data.document import Sample
from memagent_jax.data.records import to_memagent_eval, to_memagent_train

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["atomic_path", "write_json_line", "write_jsonl", "write_jsonl_rows", "write_parquet", "write_parquet_rows"]

_ROW = {"memagent_train": to_memagent_train, "memagent_eval": to_memagent_eval}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A temporary path to write instead of ``path``; renamed onto ``path`` only if the block succeeds.

    The name starts with a dot (globs such as ``*.jsonl`` skip it) and holds the process id (two
    writers of one target never share it)."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_line(f: IO[str], row: Mapping[str, Any]) -> None:
    """Write ``row`` as one JSON line, byte-identical to ``json.dumps(row, ensure_ascii=False)``.

    A value that is an iterator of strings is written as one JSON string, piece by piece, so a huge
    text field is never held whole."""
    f.write("{")
    for k, (key, value) in enumerate(row.items()):
        f.write((", " if k else "") + json.dumps(key, ensure_ascii=False) + ": ")
        if isinstance(value, Iterator):
            f.write('"')
            for text in value:
                f.write(json.dumps(text, ensure_ascii=False)[1:-1])  # escaping is per character
            f.write('"')
        else:
            f.write(json.dumps(value, ensure_ascii=False))
    f.write("}\n")


def write_jsonl_rows(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> int:
    """Write one JSON line per row (see ``write_json_line``), atomically; returns the number of rows."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            write_json_line(f, row)
            n += 1
    return n


def _check_fmt(fmt: str) -> None:
    if fmt not in _ROW:
        raise ValueError(f"fmt must be one of {sorted(_ROW)}, got {fmt!r}")


def _streamed_row(sample: Sample, fmt: str) -> dict[str, Any]:
    """The row of ``sample`` with its context as an iterator of text groups (written last, streamed)."""
    row = _ROW[fmt](sample, context="")
    del row["context"]
    row["context"] = sample.document.iter_text()
    return row


def write_jsonl(samples: Iterable[Sample], path: str | os.PathLike, fmt: str = "memagent_train") -> int:
    """Write one row per sample; returns the number of rows. The file is replaced atomically."""
    _check_fmt(fmt)
    return write_jsonl_rows((_streamed_row(s, fmt) for s in samples), path)


def write_parquet_rows(
    rows: Iterable[Mapping[str, Any]],
    path: str | os.PathLike,
    schema: pa.Schema | None = None,
    row_group_rows: int = 64,
) -> int:
    """Write rows to Parquet, ``row_group_rows`` rows in memory at a time, atomically.

    ``schema``: the exact Arrow schema (fields, order, types, metadata); without it the first row group's
    inferred schema is used and later groups are cast to it. At least one row is needed (a Parquet file
    without a schema is unreadable)."""
    if row_group_rows <= 0:
        raise ValueError(f"row_group_rows must be positive, got {row_group_rows}")
    n, batch = 0, []
    with atomic_path(path) as tmp:
        writer = None
        try:
            for row in rows:
                batch.append(row)
                n += 1
                if len(batch) == row_group_rows:
                    writer = _write_group(writer, tmp, batch, schema, row_group_rows)
            if batch:
                writer = _write_group(writer, tmp, batch, schema, row_group_rows)
            if writer is None:
                raise ValueError(f"no rows to write to {path}: a Parquet file needs at least one")
        finally:
            if writer is not None:
                writer.close()
    return n


def _write_group(writer: Any, tmp: pathlib.Path, batch: list, schema: Any, row_group_rows: int) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(batch, schema=schema)
    if writer is None:
        writer = pq.ParquetWriter(tmp, table.schema)
    writer.write_table(table.cast(writer.schema), row_group_size=row_group_rows)
    batch.clear()
    return writer


def write_parquet(
    samples: Iterable[Sample], path: str | os.PathLike, fmt: str = "memagent_train", row_group_rows: int = 64
) -> int:
    """Write rows to Parquet in row groups of ``row_group_rows`` (small groups keep random reads cheap)."""
    _check_fmt(fmt)
    return write_parquet_rows((_ROW[fmt](s) for s in samples), path, row_group_rows=row_group_rows)
