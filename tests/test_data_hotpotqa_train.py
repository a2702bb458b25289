"""HotpotQA training builder: MemAgent's Parquet schema, read back by ParquetSource, the held-out evaluation
split (no evaluation question or gold paragraph in the file), evidence kept, deterministic, clear errors."""

from __future__ import annotations

import json
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fixture_data import hotpotqa_questions
from memagent_jax.data.errors import RecordError
from memagent_jax.data.heldout import EVALUATION_QUESTION, HOLDS_EVALUATION_GOLD
from memagent_jax.data.hotpotqa_train import build_training_set, main, read_split, train_schema
from memagent_jax.data.parquet import ParquetSource


def _write(path: pathlib.Path, questions: list) -> pathlib.Path:
    path.write_text(json.dumps(questions), encoding="utf-8")
    return path


def _paragraph(entry: list) -> str:
    return f"{entry[0]}\n{''.join(entry[1])}"


@pytest.fixture()
def dev(tmp_path: pathlib.Path) -> tuple[pathlib.Path, list]:
    """30 questions; questions 10 and 11 hold the gold paragraphs of evaluation questions 0 and 1 (as a
    distractor and as a gold paragraph), question 12 repeats evaluation question 2 under another id."""
    questions = hotpotqa_questions(30)
    questions[10]["context"][0] = questions[0]["context"][3]
    questions[11]["context"][7] = questions[1]["context"][7]
    questions[11]["supporting_facts"][1][0] = questions[1]["context"][7][0]
    questions[12]["question"] = questions[2]["question"]
    return _write(tmp_path / "dev.json", questions), questions


def _rows(path: pathlib.Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_schema_and_read_back_by_parquet_source(dev, tmp_path: pathlib.Path) -> None:
    path, questions = dev
    out = tmp_path / "train.parquet"
    split = build_training_set(path, out, eval_questions=4, num_docs=40, row_group_rows=8)
    schema = pq.read_schema(out)
    assert schema.remove_metadata().equals(train_schema().remove_metadata(), check_metadata=False)
    assert schema.names == ["data_source", "prompt", "context", "reward_model", "extra_info"]
    reward = pa.struct([("style", pa.string()), ("ground_truth", pa.list_(pa.string()))])
    assert schema.field("reward_model").type == reward
    assert read_split(out) == split
    kept = [q for q in questions[4:] if q["_id"] not in ("id10", "id11", "id12")]
    assert split["supporting_facts_without_sentence"] == sum(len(q["context"][7][1]) < 2 for q in kept) > 0
    assert pq.ParquetFile(out).metadata.num_row_groups == -(-split["rows"] // 8)  # written group by group

    source = ParquetSource(out)
    rows = _rows(out)
    assert len(source) == len(rows) == split["rows"] == 30 - 4 - 3 and source.skipped == {}
    for i, row in enumerate(rows):
        q = questions[row["extra_info"]["index"]]
        sample = source[i]
        assert sample.question == q["question"] == row["prompt"][0]["content"] and row["prompt"][0]["role"] == "user"
        assert sample.answers == (q["answer"],)
        assert row["reward_model"] == {"style": "rule", "ground_truth": [q["answer"]]}
        assert row["data_source"] == "hotpotqa" and sample.meta["num_docs"] == 40
        docs = row["context"].split("\n\n")
        assert [d.split("\n", 1)[0] for d in docs] == [f"Document {k}:" for k in range(1, 41)]
        bodies = [d.split("\n", 1)[1] for d in docs]
        assert len(set(bodies)) == 40 and {_paragraph(c) for c in q["context"]} <= set(bodies)
        extra = row["extra_info"]
        assert (extra["id"], extra["type"], extra["level"]) == (q["_id"], q["type"], q["level"])
        for fact, (title, sentence) in zip(extra["supporting_facts"], q["supporting_facts"], strict=True):
            assert (fact["title"], fact["sentence"]) == (title, sentence)
            body = bodies[fact["document"] - 1]
            assert body.startswith(title + "\n")
            sentences = dict(q["context"])[title]
            assert fact["text"] == (sentences[sentence] if sentence < len(sentences) else None)
            if fact["text"] is not None:
                assert fact["text"] in body


def test_no_evaluation_question_or_gold_paragraph_in_the_training_file(dev, tmp_path: pathlib.Path) -> None:
    path, questions = dev
    out = tmp_path / "train.parquet"
    split = build_training_set(path, out, eval_questions=4, num_docs=60, seed=3)
    held = questions[:4]
    gold = {_paragraph(c) for q in held for c in q["context"] if c[0] in {t for t, _ in q["supporting_facts"]}}
    assert len(gold) == 8
    assert split["excluded"] == {EVALUATION_QUESTION: 4 + 1, HOLDS_EVALUATION_GOLD: 2}
    assert split["eval_ids"] == ["id0", "id1", "id2", "id3"] and split["eval_gold_paragraphs"] == 8
    rows = _rows(out)
    assert {r["extra_info"]["index"] for r in rows} == set(range(30)) - {0, 1, 2, 3, 10, 11, 12}
    for row in rows:
        assert row["extra_info"]["id"] not in split["eval_ids"]
        assert row["prompt"][0]["content"] not in {q["question"] for q in held}
        bodies = {d.split("\n", 1)[1] for d in row["context"].split("\n\n")}
        assert not bodies & gold  # neither as gold nor as padding


def test_own_train_file_with_a_separate_evaluation_file(tmp_path: pathlib.Path) -> None:
    dev_questions = hotpotqa_questions(6, seed=1)
    train_questions = hotpotqa_questions(12, seed=2)
    for q in train_questions:  # a train split has its own ids and questions
        q["_id"], q["question"] = "train-" + q["_id"], "In training, " + q["question"]
    train_questions[4]["question"] = dev_questions[0]["question"]  # the same question under another id
    train_questions[5]["context"][2] = dev_questions[1]["context"][3]  # an evaluation gold paragraph
    dev, train = _write(tmp_path / "dev.json", dev_questions), _write(tmp_path / "train.json", train_questions)
    out = tmp_path / "train.parquet"
    split = build_training_set(train, out, eval_hotpotqa=dev, eval_questions=2, num_docs=20)
    assert split["excluded"] == {EVALUATION_QUESTION: 1, HOLDS_EVALUATION_GOLD: 1} and split["rows"] == 10
    assert split["train_file"] == str(train.resolve()) and split["eval_file"] == str(dev.resolve())


def test_same_seed_same_bytes_and_a_seeded_subset(dev, tmp_path: pathlib.Path) -> None:
    path, _ = dev
    a, b, c = (tmp_path / f"{n}.parquet" for n in "abc")
    build_training_set(path, a, num_docs=30, eval_questions=4, seed=5)
    build_training_set(path, b, num_docs=30, eval_questions=4, seed=5)
    build_training_set(path, c, num_docs=30, eval_questions=4, seed=6)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    sub = tmp_path / "sub.parquet"
    split = build_training_set(path, sub, num_docs=30, eval_questions=4, num_samples=5, seed=5)
    indices = [r["extra_info"]["index"] for r in _rows(sub)]
    assert split["rows"] == 5 and indices == sorted(indices)
    full = {r["extra_info"]["index"]: r["context"] for r in _rows(a)}
    assert all(full[r["extra_info"]["index"]] == r["context"] for r in _rows(sub))  # same contexts per question


def test_bad_input_gives_one_clear_line(dev, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    path, questions = dev
    out = tmp_path / "train.parquet"
    with pytest.raises(SystemExit) as exit_info:
        main(["--hotpotqa", str(tmp_path / "missing.json"), "--out", str(out)])
    message = str(exit_info.value)
    assert "error: no HotpotQA file at" in message and "missing.json" in message and "\n" not in message

    squad_shaped = _write(tmp_path / "squad.json", {"data": []})  # type: ignore[arg-type]
    with pytest.raises(RecordError, match=r"squad\.json: expected a JSON array of HotpotQA questions"):
        build_training_set(squad_shaped, out)
    questions[5]["answer"] = " "
    empty = _write(tmp_path / "empty_answer.json", questions)
    with pytest.raises(RecordError, match=r"answer\.json \(element 5\): field 'answer' should be a non-empty string"):
        build_training_set(empty, out, eval_questions=2)
    split = build_training_set(empty, out, eval_questions=2, num_docs=20, on_error="skip")
    assert split["skipped_malformed"] == 1 and split["rows"] == 29 - 2 - 2  # counted, not silently dropped
    with pytest.raises(ValueError, match="asked for 100 samples but 23 questions remain"):
        build_training_set(path, out, eval_questions=4, num_samples=100)
    with pytest.raises(ValueError, match="must end in .parquet"):
        build_training_set(path, tmp_path / "train.jsonl")
    with pytest.raises(ValueError, match="num_docs must be in"):
        build_training_set(path, out, eval_questions=4, num_docs=10_000)
    assert not list(tmp_path.glob(".*.tmp"))  # failed writes leave nothing behind

    main(["--hotpotqa", str(path), "--out", str(out), "--eval_questions", "4", "--num_docs", "15"])
    assert json.loads(capsys.readouterr().out)["rows"] == 23
