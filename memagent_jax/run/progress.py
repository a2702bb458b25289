"""Console progress bars (tqdm) that stay quiet where they should and readable in log files.

`progress_bar` returns a plain `tqdm` bar with the project's defaults:

* silent on every JAX process but 0 (one bar per run, not one per host), and when `enabled` is False;
* on a terminal, redrawn in place as tqdm does;
* elsewhere (a log file, CI), one full line every `log_interval_s` seconds and a last line at `close()`,
  instead of tqdm's carriage-return redraws, which a log file keeps as one ever-growing line.
"""

from __future__ import annotations

import io
import sys
from typing import IO, Any

import jax
from tqdm import tqdm

__all__ = ["LOG_INTERVAL_S", "progress_bar"]

LOG_INTERVAL_S = 30.0


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


class _Lines:
    """A stream for tqdm that turns each in-place redraw ("\\r" + line + padding) into one logged line."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line and line != self._last:  # close() redraws the last state; an unchanged line is not repeated
            self._stream.write(line + "\n")
            self._last = line

    def flush(self) -> None:
        self._stream.flush()


def progress_bar(total: float | None, description: str = "", *, unit: str = "it", initial: int = 0,
                 enabled: bool = True, stream: IO[str] | None = None, log_interval_s: float = LOG_INTERVAL_S,
                 **tqdm_options: Any) -> tqdm:
    """A tqdm bar on `stream` (default: stderr at call time) counting `unit`s up to `total` (None: unknown).

    Advance it with `update(n)`; `set_postfix(..., refresh=False)` before an update adds values such as
    the loss to the line. `tqdm_options` go to tqdm as they are (e.g. `bar_format`).
    """
    stream = sys.stderr if stream is None else stream
    quiet = not enabled or jax.process_index() != 0
    if _isatty(stream):
        return tqdm(total=total, desc=description, unit=unit, initial=initial, file=stream, disable=quiet,
                    dynamic_ncols=True, **tqdm_options)
    # maxinterval too: tqdm's monitor thread would otherwise force a redraw every 10 s.
    return tqdm(total=total, desc=description, unit=unit, initial=initial, file=_Lines(stream), disable=quiet,
                mininterval=log_interval_s, maxinterval=log_interval_s, **tqdm_options)
