"""Runs benchmark sections under one time budget, each guarded, and writes the report as JSON and markdown.

A section is a function returning a JSON-able dict (scalars, and optionally "rows": a list of dicts shown as a
table). A section that raises, or outlives what is left of the budget, is recorded as such and the next one
runs. The report is rewritten after every section, so a run killed from outside keeps what it measured.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import signal
import time
import traceback
from typing import Any, Callable


class SectionTimeout(Exception):
    """Raised inside a section when the run's budget is spent."""


@dataclasses.dataclass(frozen=True)
class Section:
    name: str
    run: Callable[[], dict[str, Any]]
    min_seconds: float  # not started with less budget left than this


class Report:
    """The sections' outcomes, written to {out}/device_check.json and {out}/device_check.md."""

    def __init__(self, out: pathlib.Path, header: dict[str, Any]):
        self.out, self.header = out, header
        self.sections: dict[str, dict[str, Any]] = {}
        out.mkdir(parents=True, exist_ok=True)

    @property
    def json_path(self) -> pathlib.Path:
        return self.out / "device_check.json"

    @property
    def markdown_path(self) -> pathlib.Path:
        return self.out / "device_check.md"

    def record(self, name: str, outcome: dict[str, Any]) -> None:
        self.sections[name] = outcome
        self.write()

    def write(self) -> None:
        self.json_path.write_text(json.dumps({**self.header, "sections": self.sections}, indent=1,
                                             default=str) + "\n")
        self.markdown_path.write_text(to_markdown(self.header, self.sections))


def _alarm(signum: int, frame: Any) -> None:
    raise SectionTimeout("the run's time budget ran out during this section")


def run_sections(sections: list[Section], report: Report, budget_s: float) -> None:
    """Runs each section while budget remains; SIGALRM interrupts one that overruns (Python code only: a
    compilation in progress ends first)."""
    deadline = time.monotonic() + budget_s
    use_alarm = hasattr(signal, "SIGALRM")
    previous = signal.signal(signal.SIGALRM, _alarm) if use_alarm else None
    try:
        for section in sections:
            left = deadline - time.monotonic()
            if left < section.min_seconds:
                report.record(section.name, {"status": "skipped", "seconds": 0.0,
                                             "error": f"{left:.0f} s of budget left, needs {section.min_seconds:.0f}"})
                continue
            if use_alarm:
                signal.alarm(max(1, math.ceil(left)))
            start = time.monotonic()
            try:
                outcome = {"status": "ok", "result": section.run()}
            except Exception as err:  # noqa: BLE001 - one failing section must not stop the others
                outcome = {"status": "timeout" if isinstance(err, SectionTimeout) else "error",
                           "error": f"{type(err).__name__}: {err}",
                           "traceback": traceback.format_exc(limit=8)[-4000:]}
            finally:
                if use_alarm:
                    signal.alarm(0)
            outcome["seconds"] = round(time.monotonic() - start, 2)
            report.record(section.name, outcome)
    finally:
        if use_alarm:
            signal.signal(signal.SIGALRM, previous)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return lines


def to_markdown(header: dict[str, Any], sections: dict[str, dict[str, Any]]) -> str:
    lines = ["# Device check", ""]
    lines += [f"- {key}: {_cell(value)}" for key, value in header.items()]
    for name, outcome in sections.items():
        lines += ["", f"## {name}: {outcome['status']} ({outcome.get('seconds', 0):.1f} s)", ""]
        if outcome["status"] != "ok":
            lines.append(f"    {outcome.get('error', '')}")
            continue
        result = dict(outcome["result"])
        rows = result.pop("rows", None)
        lines += [f"- {key}: {_cell(value)}" for key, value in result.items()]
        if rows:
            lines += [""] + _table(rows)
    return "\n".join(lines) + "\n"
