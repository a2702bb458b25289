"""RULER's QA tasks (qa_1 SQuAD, qa_2 HotpotQA): RULER's format and document choice, lengths at the target
(exact token counts), same seed same bytes, read back as RULER rows, clear errors; and the SQuAD loader."""

from __future__ import annotations

import json
import pathlib

import pytest

from fixture_data import hotpotqa_questions, squad_dataset, tiny_sp_tokenizer
from memagent_jax.data.errors import RecordError
from memagent_jax.data.readers import open_source
from memagent_jax.data.ruler_qa import ANSWER_PREFIX, HEAD, RulerQA, main, write_ruler_qa
from memagent_jax.data.squad import load_squad

FIELDS = ["index", "input", "outputs", "length", "length_w_model_temp", "answer_prefix"]
INSTRUCTION = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other words."
)


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):
    return tiny_sp_tokenizer(tmp_path_factory.mktemp("sp"))


@pytest.fixture()
def squad(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad_dataset(articles=20, paragraphs=6, questions=3)), encoding="utf-8")
    return path


@pytest.fixture()
def hotpot(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "hotpotqa.json"
    path.write_text(json.dumps(hotpotqa_questions(40)), encoding="utf-8")
    return path


def _documents(row: dict) -> list[str]:
    """The document bodies of a RULER QA input (a string or the builder's iterator); checks the prompt around them."""
    text = row["input"] if isinstance(row["input"], str) else "".join(row["input"])
    assert text.startswith(HEAD) and row["answer_prefix"] == ANSWER_PREFIX
    context, tail = text[len(HEAD) :].rsplit("\n\n" + INSTRUCTION + "\n\nQuestion: ", 1)
    assert "\n" not in tail  # the question is the last line
    docs = context.split("\n\n")
    assert [d.split("\n", 1)[0] for d in docs] == [f"Document {k}:" for k in range(1, len(docs) + 1)]
    return [d.split("\n", 1)[1] for d in docs]


def test_squad_loader(squad: pathlib.Path) -> None:
    data = load_squad(squad)
    raw = json.loads(squad.read_text())
    contexts = [p["context"] for a in raw["data"] for p in a["paragraphs"]]
    assert data.pool == sorted(set(contexts)) and len(data.pool) == 120
    assert len(data.questions) == 120 * 2 and data.unanswerable == 120 and data.skip_log.total == 0
    q = data.questions[0]
    assert q.question == "Which part is 0-0 close to (0)?" and q.answers == ("part 0-0", "part 0-0")
    article = {data.pool.index(c) for c in contexts[:6]}
    assert data.pool[q.doc] == contexts[0] and set(q.article_docs) == article - {q.doc}


@pytest.mark.parametrize("task", ["qa_1", "qa_2"])
@pytest.mark.parametrize("target", [8192, 16384])
def test_lengths_at_the_target_and_exact(task: str, target: int, squad, hotpot, tok, tmp_path: pathlib.Path) -> None:
    data = squad if task == "qa_1" else hotpot
    [info] = write_ruler_qa(task, data, tok, [target], tmp_path, num_samples=6)
    rows = [json.loads(line) for line in pathlib.Path(info["path"]).read_text().splitlines()]
    assert info["rows"] == len(rows) == 6 and info["skipped_too_long"] == []
    for row in rows:
        assert list(row) == FIELDS and row["length_w_model_temp"] == row["length"]
        assert row["length"] == len(tok.encode(row["input"] + row["answer_prefix"])) + 32  # counted exactly
        assert 0.96 * target <= row["length"] <= target  # within one document (<= 300 tokens here)


def test_documents_chosen_as_ruler_does(squad, hotpot, tok) -> None:
    squad_data, hotpot_data = load_squad(squad), json.loads(hotpot.read_text())
    # SQuAD, few documents: the gold paragraph and others of its article only.
    small = RulerQA("qa_1", squad, tok, 1200)
    for q in range(4):
        bodies = _documents(small.row(q))
        question = squad_data.questions[q]
        assert squad_data.pool[question.doc] in bodies
        assert set(bodies) <= {squad_data.pool[d] for d in (question.doc, *question.article_docs)}
    # More documents than the article holds: the whole article, then other paragraphs, no repeats.
    big = RulerQA("qa_1", squad, tok, 6000)
    row = big.row(7)
    bodies = _documents(row)
    question = squad_data.questions[7]
    assert {squad_data.pool[d] for d in (question.doc, *question.article_docs)} <= set(bodies)
    assert len(bodies) == len(set(bodies)) > 6
    assert row["outputs"] == ["part 0-3", "part 0-3"] and row["index"] == 7
    # HotpotQA: all the question's own paragraphs.
    qa2 = RulerQA("qa_2", hotpot, tok, 4000)
    row = qa2.row(3)
    assert not isinstance(row["input"], str)  # streamed into the file piece by piece
    own = {f"{t}\n{''.join(s)}" for t, s in hotpot_data[3]["context"]}
    assert own <= set(_documents(row)) and row["outputs"] == ["answer3"]


def test_shuffle_is_one_permutation_per_document_count(squad, tok) -> None:
    # RULER shuffles with the seed alone: equal counts put the gold document at the same position.
    qa = RulerQA("qa_1", squad, tok, 3000)
    positions = {}
    for q in range(12):
        order, _ = qa.fit(q)
        positions.setdefault(len(order), set()).add(int(list(order).index(qa.questions[q].gold[0])))
    assert all(len(p) == 1 for p in positions.values())


def test_beyond_the_pool_the_pool_repeats(squad, tok) -> None:
    qa = RulerQA("qa_1", squad, tok, 60_000)
    order, length = qa.fit(0)
    assert len(order) > len(qa.pool) and set(order.tolist()) == set(range(len(qa.pool)))
    assert 0.99 * 60_000 <= length <= 60_000


def test_same_seed_same_bytes_and_read_back(squad, hotpot, tok, tmp_path: pathlib.Path) -> None:
    seeds = (("a", 1), ("b", 1), ("c", 2))
    runs = [write_ruler_qa("qa_2", hotpot, tok, [3000], tmp_path / n, num_samples=5, seed=seed) for n, seed in seeds]
    a, b, c = (pathlib.Path(run[0]["path"]).read_bytes() for run in runs)
    assert a == b != c
    source = open_source(runs[0][0]["path"], ruler_answer_mode="any")
    assert len(source) == 5 and source[2].question == "What is the answer of question 2?"
    assert source[2].answers == ("answer2",) and source[2].meta["length"] <= 3000
    assert "answer2" in source[2].document.text()


def test_a_question_too_long_for_the_target_is_skipped_and_counted(hotpot, tok, tmp_path: pathlib.Path) -> None:
    questions = json.loads(hotpot.read_text())
    questions[1]["context"][0][1] = ["The long one is close to the river. " * 200]
    hotpot.write_text(json.dumps(questions), encoding="utf-8")
    [info] = write_ruler_qa("qa_2", hotpot, tok, [3000], tmp_path, num_samples=3)
    rows = [json.loads(line) for line in pathlib.Path(info["path"]).read_text().splitlines()]
    assert info["skipped_too_long"] == [1] and [r["index"] for r in rows] == [0, 2, 3]


def test_bad_input_gives_one_clear_line(squad, hotpot, tok, tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="no SQuAD file at .*missing.json .*fetch_squad"):
        RulerQA("qa_1", tmp_path / "missing.json", tok, 4096)
    with pytest.raises(RecordError, match=r'hotpotqa\.json: expected a SQuAD object \{"data": \[articles\]\}'):
        RulerQA("qa_1", hotpot, tok, 4096)  # the wrong dataset for the task
    raw = json.loads(squad.read_text())
    raw["data"][2]["paragraphs"][1]["qas"][0]["answers"][0]["text"] = ""
    squad.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(RecordError, match=r"article 2, paragraph 1, question 0\): every answer should have a non-"):
        RulerQA("qa_1", squad, tok, 4096)
    qa = RulerQA("qa_1", squad, tok, 4096, on_error="skip")
    assert len(qa.questions) == 239 and load_squad(squad, "skip").skip_log.total == 1  # counted
    with pytest.raises(ValueError, match="unknown task 'qa_3'"):
        RulerQA("qa_3", squad, tok, 4096)
    with pytest.raises(SystemExit) as exit_info:
        main(["--task", "qa_1", "--data", str(tmp_path / "missing.json"), "--tokenizer", str(tmp_path),
              "--target_tokens", "4096", "--out_dir", str(tmp_path / "out")])
    assert str(exit_info.value).startswith("python -m memagent_jax.data.ruler_qa: error: ")
    assert "\n" not in str(exit_info.value)
