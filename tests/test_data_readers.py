"""Readers and writers for MemAgent (train/eval) and RULER records; malformed input: clear errors or counted skips."""

from __future__ import annotations

import json
import logging
import pathlib
import pickle

import pytest

from fixture_data import tiny_sp_tokenizer
from memagent_jax.data.errors import RecordError
from memagent_jax.data.parquet import ParquetSource
from memagent_jax.data.readers import JsonArraySource, JsonlSource, open_source
from memagent_jax.data.tasks import make_task
from memagent_jax.data.writers import write_jsonl, write_parquet

TRAIN_ROW = {
    "data_source": "hotpotqa",
    "prompt": [{"role": "user", "content": "Who directed Ed Wood?"}],
    "context": "Document 1:\nEd Wood (film)\nEd Wood is a 1994 film directed by Tim Burton.\n\nDocument 2:\nX\nY",
    "reward_model": {"style": "rule", "ground_truth": ["Tim Burton"]},
    "extra_info": {"index": 41, "question": "Who directed Ed Wood?", "num_docs": 2},
}
EVAL_ROW = {"context": "Document 1:\nA\n\"quoted\" [brackets] {braces}", "input": "Q?", "answers": ["A", "a"],
            "num_docs": 1, "index": 7}
RULER_ROW = {
    "index": 3,
    "input": "Some special magic numbers are hidden within the following text. Make sure to memorize it.\n"
    "filler\nOne of the special magic numbers for calm-river is: 1234567.\nfiller\n"
    "What are all the special magic numbers for calm-river mentioned in the provided text?",
    "outputs": ["1234567"],
    "length": 40,
}


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory):
    tok = tiny_sp_tokenizer(tmp_path_factory.mktemp("sp"))
    return [make_task(name, tok, 1500).sample(i) for i, name in enumerate(["niah_multivalue", "multihop_qa", "vt"])]


def _write_lines(path: pathlib.Path, lines: list[str]) -> pathlib.Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _same(a, b) -> None:
    assert (a.question, a.answers, a.answer_mode) == (b.question, b.answers, b.answer_mode)
    assert a.document.text() == b.document.text()


@pytest.mark.parametrize("fmt", ["memagent_train", "memagent_eval"])
@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_written_samples_read_back(tmp_path: pathlib.Path, samples, fmt: str, ext: str) -> None:
    path = tmp_path / f"data.{ext}"
    writer = write_jsonl if ext == "jsonl" else write_parquet
    assert writer(samples, path, fmt) == len(samples)
    source = open_source(path)
    assert len(source) == len(samples) and not source.skipped
    for i in (2, 0, 1):  # random access
        got = source[i]
        _same(got, samples[i])
        assert got.meta["format"] == fmt and got.index == i
        assert all(a in got.document.text() for a in got.answers)
    assert source[0].task == (samples[0].task if fmt == "memagent_train" else "memagent_eval")
    restored = pickle.loads(pickle.dumps(source))
    _same(restored[1], samples[1])


def test_training_rows_hold_reward_ground_truth(tmp_path: pathlib.Path, samples) -> None:
    path = tmp_path / "t.jsonl"
    write_jsonl(samples, path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row, sample in zip(rows, samples):
        assert row["prompt"] == [{"role": "user", "content": sample.question}]
        assert row["reward_model"] == {"style": "rule", "ground_truth": sample.ground_truth}
        assert row["extra_info"]["question"] == sample.question and row["context"] == sample.document.text()
    assert rows[0]["reward_model"]["ground_truth"] == [", ".join(samples[0].answers)]  # multi-value: all, joined


def test_reference_memagent_rows(tmp_path: pathlib.Path) -> None:
    train = JsonlSource(_write_lines(tmp_path / "train.jsonl", [json.dumps(TRAIN_ROW), "", json.dumps(TRAIN_ROW)]))
    assert len(train) == 2 and train.line_of(1) == 3  # the blank line is not a record
    s = train[0]
    assert s.question == "Who directed Ed Wood?" and s.answers == ("Tim Burton",) and s.answer_mode == "any"
    assert s.task == "hotpotqa" and s.meta["index"] == 41 and s.meta["num_docs"] == 2
    assert s.document.spans and "Tim Burton" in s.document.piece(s.document.spans[0].piece)

    path = tmp_path / "eval.json"
    path.write_text(json.dumps([EVAL_ROW, EVAL_ROW | {"index": 8}], indent=2), encoding="utf-8")
    ev = open_source(path)
    assert isinstance(ev, JsonArraySource) and len(ev) == 2
    assert ev[1].meta["index"] == 8 and ev[0].document.text() == EVAL_ROW["context"] and ev[0].answers == ("A", "a")


def test_ruler_rows(tmp_path: pathlib.Path) -> None:
    split = dict(RULER_ROW, index=4, context="ctx with 42\n", query="What is it?", outputs=["42"])
    src = JsonlSource(_write_lines(tmp_path / "niah.jsonl", [json.dumps(RULER_ROW), json.dumps(split)]), "ruler")
    s = src[0]
    assert s.question == "What are all the special magic numbers for calm-river mentioned in the provided text?"
    assert s.document.text().startswith("Some special magic") and s.document.text().endswith("filler\n")
    assert s.answers == ("1234567",) and s.answer_mode == "all" and s.meta["length"] == 40
    assert (src[1].question, src[1].document.text()) == ("What is it?", "ctx with 42\n")
    qa = JsonlSource(tmp_path / "niah.jsonl", ruler_answer_mode="any", task="qa_1")
    assert qa[0].answer_mode == "any" and qa[0].task == "qa_1"
    labelled = dict(RULER_ROW, input="Docs...\n\nQuestion: Who?")
    assert JsonlSource(_write_lines(tmp_path / "qa.jsonl", [json.dumps(labelled)]))[0].question == "Who?"


BAD_LINES = [
    json.dumps(EVAL_ROW),
    '{"context": "unterminated',
    json.dumps({"input": "Q?", "answers": ["a"]}),
    json.dumps(EVAL_ROW | {"answers": []}),
    json.dumps([1, 2]),
    json.dumps({"something": "else"}),
    json.dumps(EVAL_ROW),
]


def test_malformed_jsonl_raises_with_file_and_line(tmp_path: pathlib.Path) -> None:
    path = _write_lines(tmp_path / "bad.jsonl", BAD_LINES)
    with pytest.raises(RecordError, match=r"bad\.jsonl:2: invalid JSON"):
        JsonlSource(path)
    ok = _write_lines(tmp_path / "bad2.jsonl", [BAD_LINES[0], BAD_LINES[2]])
    with pytest.raises(RecordError, match=r"bad2\.jsonl:2: missing field 'context'"):
        JsonlSource(ok)
    lazy = JsonlSource(ok, validate=False)  # errors surface on access instead, still with the line
    assert len(lazy) == 2 and lazy[0].answers == ("A", "a")
    with pytest.raises(RecordError, match=r"bad2\.jsonl:2: missing field 'context'"):
        lazy[1]


def test_skip_mode_counts_and_logs(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write_lines(tmp_path / "bad.jsonl", BAD_LINES)
    with caplog.at_level(logging.WARNING, logger="memagent_jax.data"):
        src = JsonlSource(path, on_error="skip")
    assert len(src) == 2 and [src.line_of(i) for i in range(2)] == [1, 7]
    assert sum(src.skipped.values()) == 5
    assert src.metrics()["data/skipped"] == 5
    assert src.skipped["invalid JSON"] == 1 and src.skipped["missing field 'context'"] == 1
    assert len([r for r in caplog.records if "skipping malformed record" in r.message]) == 5
    assert "bad.jsonl:4" in caplog.text  # every skip is logged with its location
    with pytest.raises(ValueError, match="needs validate=True"):
        JsonlSource(path, on_error="skip", validate=False)
    with pytest.raises(ValueError, match="on_error"):
        JsonlSource(path, on_error="ignore")  # type: ignore[arg-type]


def test_malformed_json_array_and_parquet(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.json"
    bad = json.dumps({"input": "Q?", "answers": ["x"]})
    path.write_text(f"[\n{json.dumps(EVAL_ROW)},\n  {bad},\n 17,\n{json.dumps(EVAL_ROW)}\n]\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"bad\.json:3 \(element 1\): missing field 'context'"):
        JsonArraySource(path)
    src = JsonArraySource(path, on_error="skip")
    assert len(src) == 2 and src.metrics()["data/skipped"] == 2  # the bare 17 is reported, not dropped
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(RecordError, match="expected a JSON array"):
        JsonArraySource(tmp_path / "obj.json")

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [TRAIN_ROW, TRAIN_ROW | {"context": None}, TRAIN_ROW | {"context": "Document 1:\nRow 2\nText."},
            TRAIN_ROW | {"reward_model": {"style": "rule"}}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet", row_group_size=2)
    with pytest.raises(RecordError, match=r"bad\.parquet row 1: field 'context' should be str"):
        ParquetSource(tmp_path / "bad.parquet")
    src = ParquetSource(tmp_path / "bad.parquet", on_error="skip")
    # Records 0 and 1 are file rows 0 and 2: the bad rows 1 and 3 are skipped.
    assert [src[i].document.text() for i in range(len(src))] == [rows[0]["context"], rows[2]["context"]]
    assert src.skipped == {
        "field 'context' should be str": 1,
        "field 'reward_model.ground_truth' should be a non-empty list of strings": 1,
    }
    assert src[1].answers == ("Tim Burton",)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(RecordError, match="not a readable Parquet file"):
        ParquetSource(tmp_path / "junk.parquet")


def test_open_source_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_source(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="unsupported"):
        open_source(tmp_path / "data.csv")
    _write_lines(tmp_path / "a.jsonl", [json.dumps(EVAL_ROW)])
    with pytest.raises(ValueError, match="unknown format"):
        open_source(tmp_path / "a.jsonl", fmt="alpaca")


def test_export_command_and_streamed_long_context(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    from memagent_jax.data.export import main

    tiny_sp_tokenizer(tmp_path / "sp")
    out = tmp_path / "vt.parquet"
    main(["--task", "vt", "--tokenizer", str(tmp_path / "sp"), "--target_tokens", "3000", "--num_samples", "3",
          "--offset", "5", "--out", str(out)])
    assert "wrote 3 samples" in capsys.readouterr().out
    rows = open_source(out)
    task = make_task("vt", tiny_sp_tokenizer(tmp_path / "sp2"), 3000)
    _same(rows[1], task.sample(6))
    assert rows[1].meta["index"] == 6 and rows[1].answer_mode == "all"
    # Evaluation rows ask for evaluation-split keys unless told otherwise.
    for fmt, split in (("memagent_eval", "eval"), ("memagent_train", "train")):
        main(["--task", "niah_single", "--tokenizer", str(tmp_path / "sp"), "--target_tokens", "1000",
              "--num_samples", "1", "--format", fmt, "--out", str(tmp_path / f"{fmt}.jsonl")])
        expected = make_task("niah_single", tiny_sp_tokenizer(tmp_path / "sp2"), 1000, key_split=split).sample(0)
        assert open_source(tmp_path / f"{fmt}.jsonl")[0].question == expected.question
    # A 200K-token document goes through the streaming JSONL writer and reads back identical.
    big = make_task("niah_multiquery", tiny_sp_tokenizer(tmp_path / "sp3"), 200_000).sample(0)
    write_jsonl([big], tmp_path / "big.jsonl", "memagent_eval")
    _same(open_source(tmp_path / "big.jsonl")[0], big)
