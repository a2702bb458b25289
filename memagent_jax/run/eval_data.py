"""The evaluation files of `memagent_jax.evaluate --data`: found, read, checked and labelled before any model loads.

Each --data value is a file or a glob. Every file is opened with the project's readers (MemAgent evaluation
JSON/JSONL, MemAgent training JSONL/Parquet, RULER JSONL) and every record is read once here, so a bad
input is one clear line before hours of compute: a missing file, a glob that matches nothing, a glob whose
files mix formats, a malformed record, a record with an empty context, question or answer. Under
``on_bad_record="skip"`` such records are left out and counted per file and reason (the reader's SkipLog),
and the counts reach results.json and table.md: nothing is dropped silently.

Each file gets its headline metric (as in MemAgent, arXiv:2507.02259): sub_em for QA whose answers are
alternatives (RULER-HQA), string_match_part for RULER's QA tasks (qa_1, qa_2; as RULER scores them) and
string_match_all for RULER's synthetic tasks (every reference must be found). A sample's length bucket is
its record's ``num_docs`` (MemAgent evaluation rows) or ``length`` (RULER rows). Files in RULER's layout,
``{length}/{task}/validation.jsonl`` (what RULER's prepare.py writes to a save_dir per length, e.g.
scripts/make_ruler_samples.sh) or ``{length}/data/{task}/validation.jsonl`` (RULER's run.sh), are named by
their task folder, and their rows are bucketed by the length folder: RULER's ``length`` is each prompt's own
token count, a little under the ``max_seq_length`` the file was made for.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Sequence

from memagent_jax.data.document import Sample, TextTokenizer
from memagent_jax.data.errors import OnError, RecordError, check_on_error
from memagent_jax.data.readers import open_source
from memagent_jax.data.record_source import RecordSource
from memagent_jax.data.ruler_qa import HEAD as RULER_QA_HEAD
from memagent_jax.data.sources import data_files

__all__ = ["METRICS", "EvalFile", "Bucket", "bucket_label", "check_questions", "open_eval_files", "ruler_layout"]

METRICS = ("sub_em", "string_match_all", "string_match_part")
Bucket = tuple[str, int]  # ("num_docs", 50), ("length", 8192), or ("none", 0) when the record has neither
_RULER_QA_DIR = re.compile(r"^qa_\d+")  # RULER writes {task}/validation.jsonl; our builder {task}_{length}.jsonl
_RULER_SUBSETS = ("validation.jsonl", "test.jsonl")  # the file names RULER's prepare.py writes (--subset)


@dataclasses.dataclass
class EvalFile:
    """One data file: its reader, the records that pass the checks, and what they are scored with."""

    path: pathlib.Path
    task: str | None  # RULER's task folder (niah_single_1, vt, ...) for RULER files in its layout, else None
    fmt: str  # memagent_eval | memagent_train | ruler
    metric: str  # the headline metric, one of METRICS
    source: RecordSource
    keep: list[int]  # reader indices of the records to evaluate
    chars: list[int]  # context characters of each kept record (for the ETA)
    buckets: list[Bucket]  # length bucket of each kept record
    questions: list[str]  # of each kept record: their token counts are checked before a model loads

    @property
    def skipped(self) -> dict[str, int]:
        """Records left out, by reason: malformed (reader) and empty content (here)."""
        return self.source.skipped

    def sample(self, position: int) -> Sample:
        """Kept record number `position`."""
        return self.source[self.keep[position]]


def bucket_label(bucket: Bucket) -> str:
    kind, value = bucket
    return {"num_docs": f"{value} docs", "length": f"{value} tok"}.get(kind, "–")


def _bucket(sample: Sample) -> Bucket:
    # Our writers store num_docs 0 when the count is unknown: that is no bucket, not a bucket of 0.
    for kind in ("num_docs", "length"):
        value = sample.meta.get(kind)
        if isinstance(value, int) and value > 0:
            return kind, value
    return "none", 0


def ruler_layout(path: pathlib.Path) -> tuple[str | None, int | None]:
    """(task, max_seq_length) of a file in RULER's layout, from its folders; (None, None) for other files."""
    path = path.resolve()
    if path.name not in _RULER_SUBSETS:
        return None, None
    above = path.parent.parents  # {length}/{task}/validation.jsonl or {length}/data/{task}/validation.jsonl
    if not above:  # a file at the file system's root has no task folder
        return None, None
    for folder in [above[0], *(above[1:2] if above[0].name == "data" else [])]:
        if folder.name.isdigit() and int(folder.name) > 0:
            return path.parent.name, int(folder.name)
    return path.parent.name, None


def _expand(patterns: Sequence[str]) -> list[tuple[str, list[pathlib.Path]]]:
    """(pattern, files) for each --data value; a missing file, a folder or an empty glob is an error."""
    out = []
    for pattern in patterns:
        try:
            out.append((pattern, data_files(pattern)))
        except FileNotFoundError as err:
            raise FileNotFoundError(f"--data {err}") from None
        except ValueError as err:
            raise ValueError(f"--data {err}") from None
    return out


def _location(source: RecordSource, index: int) -> str:
    line_of = getattr(source, "line_of", None)  # JSONL readers know lines; arrays and Parquet know rows
    return f"{source.path}:{line_of(index)}" if line_of else f"{source.path} record {index}"


def _headline(fmt: str, first: Sample, path: pathlib.Path) -> str:
    if fmt == "ruler" and (any(_RULER_QA_DIR.match(part) for part in path.parts)
                           or first.document.text().startswith(RULER_QA_HEAD)):
        return "string_match_part"
    return "string_match_all" if first.answer_mode == "all" else "sub_em"


def _open(path: pathlib.Path, on_bad_record: OnError, metric: str, max_records: int) -> EvalFile:
    task, max_length = ruler_layout(path)
    try:  # malformed or empty records (data/records.py): an error, or skipped and counted by the reader
        source = open_source(path, on_error=on_bad_record, task=task)
    except RecordError as err:
        raise ValueError(f"{err} (--on_bad_record=skip skips and counts such records)") from None
    keep, chars, buckets, questions = [], [], [], []
    fmt: str | None = None
    first: Sample | None = None
    for index in range(len(source)):
        if max_records and len(keep) == max_records:
            break
        sample = source[index]
        record_fmt = sample.meta["format"]
        if fmt is not None and record_fmt != fmt:
            # One file, one format: a mix means the file is not what the user thinks it is.
            raise ValueError(f"{_location(source, index)}: a {record_fmt} record in a file of {fmt} records")
        fmt, first = record_fmt, first if first is not None else sample
        keep.append(index)
        chars.append(len(sample.document.text()))
        length = sample.meta.get("length")
        # RULER's rows fit their max_seq_length; one over it means the folder's number is something else.
        in_folder = record_fmt == "ruler" and max_length is not None and (not isinstance(length, int)
                                                                          or length <= max_length)
        buckets.append(("length", max_length) if in_folder else _bucket(sample))
        questions.append(sample.question)
    if first is None and not source.skipped:
        raise ValueError(f"{path}: the file holds no records")
    if first is None:  # every record skipped: the file stays, with its skip counts and no samples
        return EvalFile(path, None, "unknown", metric if metric != "auto" else "sub_em", source, [], [], [], [])
    headline = metric if metric != "auto" else _headline(fmt, first, path)
    return EvalFile(path, task if fmt == "ruler" else None, fmt, headline, source, keep, chars, buckets, questions)


def open_eval_files(patterns: Sequence[str], on_bad_record: OnError = "raise", metric: str = "auto",
                    max_records: int = 0) -> list[EvalFile]:
    """Every file of `patterns` (files or globs), opened and checked; a file named twice is read once.

    `metric` "auto" picks each file's headline metric (see the module docstring); `max_records` > 0 keeps
    only the first that many good records of each file (quick looks at a long benchmark)."""
    check_on_error(on_bad_record)
    if metric != "auto" and metric not in METRICS:
        raise ValueError(f"metric must be 'auto' or one of {METRICS}, got {metric!r}")
    if not patterns:
        raise ValueError("give at least one --data FILE_OR_GLOB")
    files: list[EvalFile] = []
    seen: set[pathlib.Path] = set()
    for pattern, paths in _expand(patterns):
        opened = []
        for path in paths:
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            opened.append(_open(path, on_bad_record, metric, max_records))
        formats = {f.fmt for f in opened if f.keep}
        if len(formats) > 1:
            examples = ", ".join(f"{f.path.name} is {f.fmt}" for f in
                                 [next(f for f in opened if f.fmt == fmt) for fmt in sorted(formats)])
            raise ValueError(f"--data {pattern!r} mixes formats ({examples}): give one glob per format")
        files += opened
    return files


def check_questions(files: Sequence[EvalFile], tokenizer: TextTokenizer, max_question_tokens: int) -> None:
    """The agent refuses a question over max_question_tokens mid-run; say so before the model loads instead."""
    for f in files:
        for position, question in enumerate(f.questions):
            n = len(tokenizer.encode(question))
            if n > max_question_tokens:
                raise ValueError(f"{_location(f.source, f.keep[position])}: the question has {n} tokens, more than "
                                 f"--max_question_tokens={max_question_tokens}")
