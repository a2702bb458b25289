"""Fuzzed data files: records of every format the readers accept (MemAgent train/eval, RULER with and without
chat-template wrappers), damaged or not, as JSONL, JSON arrays and Parquet. Each file either reads back (every
kept record a Sample) or is refused with RecordError naming the file; skip mode counts what it leaves out."""

from __future__ import annotations

import itertools
import json
import pathlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memagent_jax.data.document import Sample
from memagent_jax.data.errors import RecordError
from memagent_jax.data.readers import open_source, read_json
from memagent_jax.data.records import RULER_MODEL_TEMPLATES, BadRecord, parse_record
from memagent_jax.data.sources import FileSource, SourceError, SourceSpec
from memagent_jax.run.eval_data import open_eval_files

# Text that exercises the parsers: newlines (RULER's question line), labels, template markup, JSON syntax.
markup = st.sampled_from(["\n", "\n\n", "Question:", " ", "Document 1:", "[INST]", "[/INST]", "<|im_end|>",
                          "assistant", "USER:", "ASSISTANT:", "{", "]", '"', "\\", "\u2028", "é", "\x00"])
texts = st.lists(markup | st.text(max_size=8), max_size=10).map("".join) | st.text(max_size=30)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=8)
answers = st.lists(texts | st.integers(), min_size=1, max_size=3) | texts | json_values


def _maybe(value: st.SearchStrategy) -> st.SearchStrategy:
    """The field's usual value, usually; sometimes any JSON value in its place."""
    return st.one_of(value, value, value, json_values)


def _row(**fields: st.SearchStrategy) -> st.SearchStrategy:
    """A record whose fields are each present, damaged, or left out."""
    return st.fixed_dictionaries({}, optional={name: _maybe(value) for name, value in fields.items()})


train_rows = _row(
    data_source=texts, context=texts,
    prompt=st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": texts}),
                    max_size=2),
    reward_model=st.fixed_dictionaries({"style": st.just("rule")}, optional={"ground_truth": answers}),
    extra_info=st.fixed_dictionaries({}, optional={
        "index": st.integers(), "num_docs": st.integers(), "question": texts, "answers": answers,
        "answer_mode": st.sampled_from(["all", "any", "some"]),
        "supporting_facts": st.lists(st.fixed_dictionaries({"text": texts, "title": texts}), max_size=3)}),
)
eval_rows = _row(context=texts, input=texts, answers=answers, num_docs=st.integers(), index=st.integers(),
                 answer_mode=st.sampled_from(["all", "any", "none"]))


@st.composite
def ruler_prompts(draw: st.DrawFn) -> str:
    """RULER's whole prompt: instruction and document lines, then the question line, maybe in a chat template."""
    lines = draw(st.lists(texts, max_size=4))
    question = draw(st.sampled_from(["Question: ", "", "What is the special magic number for x? "])) + draw(texts)
    prompt = "\n".join([*lines, question])
    if draw(st.booleans()):
        user, assistant = draw(st.sampled_from(sorted(RULER_MODEL_TEMPLATES.values())))
        prompt = draw(st.sampled_from(["", "<s>", "system prompt "])) + user + prompt + assistant
    return prompt + draw(st.sampled_from(["", " ", "\n"]))


ruler_rows = _row(input=ruler_prompts(), outputs=answers, length=st.integers(), index=st.integers(),
                  token_position_answer=st.integers(), context=texts, query=texts)
records = st.one_of(train_rows, eval_rows, ruler_rows, ruler_rows.map(lambda r: {**r, "outputs": ["1"]}), json_values)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("fuzz_data")


_names = itertools.count()


def _path(folder: pathlib.Path, suffix: str) -> pathlib.Path:
    return folder / f"case{next(_names)}{suffix}"


def _parses(record: Any) -> bool:
    """The oracle: whether a record is valid, from parse_record alone (which may only raise BadRecord)."""
    try:
        sample = parse_record(record, 0)
    except BadRecord as err:
        assert str(err)
        return False
    assert isinstance(sample, Sample) and sample.question.strip() and sample.answers
    return True


def _check_read(path: pathlib.Path, rows: list[Any], on_error: str) -> None:
    valid = [_parses(r) for r in rows]
    try:
        source = open_source(path, on_error=on_error)
    except RecordError as err:
        assert str(path) in str(err)
        assert on_error == "raise" and not all(valid)
        return
    assert len(source) == sum(valid), source
    assert len(source) + sum(source.skipped.values()) == len(rows)
    for index in range(len(source)):
        assert isinstance(source[index], Sample)
    with pytest.raises(IndexError, match="out of range"):
        source[len(source)]


@given(rows=st.lists(records, max_size=4), on_error=st.sampled_from(["raise", "skip"]),
       blank_lines=st.booleans())
def test_jsonl_and_json_files_read_or_name_the_bad_record(data_dir, count_case, rows: list[Any], on_error: str,
                                                           blank_lines: bool) -> None:
    count_case()
    jsonl = _path(data_dir, ".jsonl")
    separator = "\n\n" if blank_lines else "\n"
    jsonl.write_text(separator.join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    _check_read(jsonl, rows, on_error)
    array = _path(data_dir, ".json")
    array.write_text(json.dumps(rows, indent=1 if blank_lines else None), encoding="utf-8")
    _check_read(array, rows, on_error)


@settings(max_examples=max(1, settings.default.max_examples // 2))
@given(rows=st.lists(st.one_of(train_rows, eval_rows, ruler_rows), min_size=1, max_size=4),
       on_error=st.sampled_from(["raise", "skip"]))
def test_parquet_files_read_or_name_the_bad_row(data_dir, count_case, rows: list[dict], on_error: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _path(data_dir, ".parquet")
    try:
        table = pa.Table.from_pylist(rows)
        pq.write_table(table, path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        return  # rows of mixed types (or empty structs) have no Parquet schema: not a file anyone can write
    count_case()
    _check_read(path, table.to_pylist(), on_error)  # Parquet fills missing fields with None


@given(content=st.binary(max_size=64) | st.lists(st.sampled_from(
    [b"[", b"]", b"{", b"}", b'"', b"\\", b",", b":", b"\n", b" ", b"1", b"null", b"\xff", b"\xc3", b"\xef\xbb\xbf",
     b'"input"', b'"outputs"', b'"a\\nb"']), max_size=20).map(b"".join),
       suffix=st.sampled_from([".jsonl", ".json", ".parquet"]), on_error=st.sampled_from(["raise", "skip"]))
def test_any_bytes_read_or_raise_record_error(data_dir, count_case, content: bytes, suffix: str,
                                              on_error: str) -> None:
    count_case()
    path = _path(data_dir, suffix)
    path.write_bytes(content)
    try:
        source = open_source(path, on_error=on_error)
    except RecordError as err:
        assert str(path) in str(err)
        return
    for index in range(len(source)):
        assert isinstance(source[index], Sample)


@settings(max_examples=max(1, settings.default.max_examples // 2))
@given(rows=st.lists(records, max_size=3), on_error=st.sampled_from(["raise", "skip"]),
       ruler_folder=st.booleans())
def test_eval_files_and_training_sources_open_or_refuse_clearly(data_dir, count_case, rows: list[Any],
                                                                 on_error: str, ruler_folder: bool) -> None:
    count_case()
    folder = _path(data_dir, "")
    path = folder / "4096" / "niah_single_1" / "validation.jsonl" if ruler_folder else folder / "rows.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    try:
        files = open_eval_files([str(path)], on_bad_record=on_error)
    except ValueError as err:  # RecordError is one
        assert str(path) in str(err)
    else:
        assert len(files) == 1 and len(files[0].keep) == len(files[0].buckets) == len(files[0].questions)
    try:
        source = FileSource(SourceSpec(1, path=str(path), on_error=on_error), "config.rl.sources[0]")
    except SourceError as err:
        assert str(err).startswith("config.rl.sources[0]: ")
    else:
        assert len(source) > 0 and isinstance(source[len(source) - 1], Sample)


@pytest.mark.parametrize("content", [b"", b"  \n"])
def test_an_empty_json_file_names_the_file(tmp_path: pathlib.Path, content: bytes) -> None:
    path = tmp_path / "rows.json"
    path.write_bytes(content)
    with pytest.raises(RecordError, match=r"rows.json:1: expected a JSON array of records"):
        open_source(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_too_deeply_nested_json_names_the_file(tmp_path: pathlib.Path, suffix: str) -> None:
    path = tmp_path / f"rows{suffix}"
    path.write_bytes(b"[" + b"[" * 100_000 + b"]" * 100_001 + b"\n")
    with pytest.raises(RecordError, match=rf"rows{suffix}:1.*nested too deeply"):
        open_source(path)
    with pytest.raises(RecordError, match="nested too deeply"):
        read_json(path)


@pytest.mark.parametrize("row, message", [
    ({"context": "", "query": "Q?", "outputs": ["1"], "input": "x"}, "empty context"),
    ({"context": "doc", "query": " ", "outputs": ["1"], "input": "x"}, "empty field 'query'"),
    ({"context": "doc", "question": "", "outputs": ["1"], "input": "x"}, "empty field 'question'"),
])
def test_ruler_rows_with_their_own_context_and_query_need_both(row: dict, message: str) -> None:
    with pytest.raises(BadRecord, match=message):
        parse_record(row, 0)
