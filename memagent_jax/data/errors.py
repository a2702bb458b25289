"""Malformed records: a clear error with file and line (or row), or -- in skip mode -- counted and logged.

Nothing is skipped silently: every skipped record is counted per reason in ``SkipLog.counts`` (exposed by
the readers as ``skipped`` and ``metrics()``) and logged (the first ``log_first`` individually, then a
summary line every ``log_every`` skips).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Literal

__all__ = ["OnError", "RecordError", "SkipLog", "check_on_error", "one_line_errors"]

OnError = Literal["raise", "skip"]
log = logging.getLogger("memagent_jax.data")


class RecordError(ValueError):
    """A record that cannot be read. ``location`` is e.g. ``data.jsonl:17`` or ``data.parquet row 3``."""

    def __init__(self, location: str, reason: str):
        super().__init__(f"{location}: {reason}")
        self.location, self.reason = location, reason


def check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


class SkipLog:
    """Counts and logs what a reader skipped."""

    def __init__(self, source: str, log_first: int = 10, log_every: int = 1000):
        self.source = source
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: list[str] = []  # the first few error messages, for reports
        self._log_first, self._log_every = log_first, log_every

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def record(self, err: RecordError) -> None:
        # Count by the reason's first clause ("field 'x' should be str"), without the offending value.
        self.counts[re.split(r":|, got ", err.reason)[0][:80]] += 1
        n = self.total
        if n <= self._log_first:
            self.examples.append(str(err))
            log.warning("skipping malformed record %s", err)
        elif n % self._log_every == 0:
            log.warning("%s: %d malformed records skipped so far", self.source, n)

    def metrics(self, prefix: str = "data/skipped") -> dict[str, int]:
        """Flat counters for a metrics logger: ``{prefix: total, f"{prefix}/{reason}": n, ...}``."""
        out = {prefix: self.total}
        out.update({f"{prefix}/{reason}": n for reason, n in sorted(self.counts.items())})
        return out


@contextlib.contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """For command lines: bad input (a missing file, a malformed record, an impossible option) ends the
    program with one ``prog: error: ...`` line on stderr, not a traceback."""
    try:
        yield
    except (OSError, ValueError, IndexError) as err:
        raise SystemExit(f"{prog}: error: {err}") from None
