"""RULER-HQA builder on small HotpotQA-shaped files: own paragraphs kept, distractors up to N, seeded shuffle;
files streamed in bounded memory (25,600 documents), byte-identical for a seed, written atomically."""

from __future__ import annotations

import json
import pathlib
import pickle
import re
import tracemalloc

import numpy as np
import pytest

from fixture_data import count_tokens, hotpotqa_questions, tiny_sp_tokenizer
from memagent_jax.data.errors import RecordError
from memagent_jax.data.hotpotqa import RulerHQASource, load_hotpotqa, main, write_ruler_hqa
from memagent_jax.data.pool import draw_distractors
from memagent_jax.data.readers import open_source
from memagent_jax.data.writers import write_jsonl, write_parquet


def _question(q: int) -> dict:
    # Ten paragraphs per question, two of them supporting; question 1 shares a paragraph with question 0.
    context = [[f"Title {q}-{p}", [f"Paragraph {p} of question {q}.", f" It mentions answer-{q}-{p}."]]
               for p in range(10)]
    if q == 1:
        context[9] = ["Title 0-0", ["Paragraph 0 of question 0.", " It mentions answer-0-0."]]
    return {
        "_id": f"id{q}",
        "answer": f"answer-{q}-3",
        "question": f"What does question {q} ask?",
        "supporting_facts": [[f"Title {q}-3", 1], [f"Title {q}-7", 0]],
        "context": context,
        "type": "bridge",
        "level": "hard",
    }


@pytest.fixture()
def hotpot(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "hotpotqa.json"
    path.write_text(json.dumps([_question(q) for q in range(8)]), encoding="utf-8")
    return path


def test_pool_is_sorted_unique_paragraphs(hotpot: pathlib.Path) -> None:
    data = load_hotpotqa(hotpot)
    assert len(data.pool) == 79 and data.pool == sorted(set(data.pool))
    assert data.pool[0] == "Title 0-0\nParagraph 0 of question 0. It mentions answer-0-0."
    assert len(data.questions) == 8 and len(data.questions[1].docs) == 10


@pytest.mark.parametrize("num_docs", [10, 25, 79])
def test_sample_has_own_paragraphs_plus_distractors(hotpot: pathlib.Path, num_docs: int) -> None:
    source = RulerHQASource(hotpot, num_docs, num_questions=None)
    assert len(source) == 8
    data = load_hotpotqa(hotpot)
    for i in range(len(source)):
        s = source[i]
        text = s.document.text()
        docs = text.split("\n\n")
        assert len(docs) == num_docs == s.document.num_pieces == s.meta["num_docs"]
        bodies = []
        for k, d in enumerate(docs, start=1):
            header, body = d.split("\n", 1)
            assert header == f"Document {k}:"
            bodies.append(body)
        assert len(set(bodies)) == num_docs and set(bodies) <= set(data.pool)
        assert {data.pool[d] for d in data.questions[i].docs} <= set(bodies)  # all own paragraphs
        assert s.answers == (f"answer-{i}-3",) and s.answers[0] in text and s.answer_mode == "any"
        assert sorted(span.text for span in s.document.spans) == [f"Title {i}-3", f"Title {i}-7"]
        for span in s.document.spans:
            assert s.document.piece(span.piece).startswith(f"Document {span.piece + 1}:\n{span.text}\n")


def test_seeded_and_deterministic(hotpot: pathlib.Path) -> None:
    a, b = RulerHQASource(hotpot, 30, seed=1), RulerHQASource(hotpot, 30, seed=1)
    assert [a[i] for i in range(3)] == [b[i] for i in (0, 1, 2)]
    assert RulerHQASource(hotpot, 30, seed=2)[0].document.text() != a[0].document.text()
    assert pickle.loads(pickle.dumps(a[2])) == a[2]
    picked = RulerHQASource(hotpot, 30, seed=1, question_indices=[5, 2])
    assert picked[1].document.text() == a[2].document.text() and picked[1].meta["index"] == 2


def test_approx_tokens(hotpot: pathlib.Path, tmp_path: pathlib.Path) -> None:
    tok = tiny_sp_tokenizer(tmp_path / "sp")
    s = RulerHQASource(hotpot, 60, tokenizer=tok)[0]
    exact = count_tokens(s.document, tok)
    assert abs(s.document.approx_tokens - exact) <= 0.05 * exact
    assert RulerHQASource(hotpot, 60)[0].document.approx_tokens == pytest.approx(len(s.document.text()) / 4, rel=0.1)


def test_bad_inputs(hotpot: pathlib.Path, tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="num_docs"):
        RulerHQASource(hotpot, 80)
    with pytest.raises(FileNotFoundError, match="fetch_hotpotqa"):
        RulerHQASource(tmp_path / "none.json", 10)
    rows = [_question(0), {"question": "q?", "answer": "a", "context": [["t", "not a list"]]}, _question(2), 5]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(RecordError, match=r"bad\.json \(element 1\): context entries"):
        load_hotpotqa(bad)
    source = RulerHQASource(bad, 15, on_error="skip")
    assert len(source) == 2 and source.metrics()["data/skipped"] == 2
    assert source[1].question == "What does question 2 ask?"


def test_written_eval_files(hotpot: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    paths = write_ruler_hqa(hotpot, tmp_path / "out", doc_counts=(20, 40), num_questions=3)
    assert [p.name for p in paths] == ["ruler_hqa_20.jsonl", "ruler_hqa_40.jsonl"]
    rows = [json.loads(line) for line in paths[1].read_text().splitlines()]
    source = RulerHQASource(hotpot, 40, num_questions=3)
    for i, row in enumerate(rows):
        assert row["context"] == source[i].document.text() and row["input"] == source[i].question
        assert row["answers"] == [f"answer-{i}-3"] and row["num_docs"] == 40 and row["index"] == i
    assert open_source(paths[0])[2].document.text().count("Document ") == 20
    main(["--hotpotqa", str(hotpot), "--out_dir", str(tmp_path / "cli"), "--num_docs", "15", "--num_questions", "2"])
    assert re.search(r"ruler_hqa_15\.jsonl", capsys.readouterr().out)


def test_ruler_hqa_25600_documents_streamed_in_bounded_memory(tmp_path: pathlib.Path) -> None:
    # A HotpotQA-format file with 25,600+ unique paragraphs; one question at 25,600 documents.
    big = tmp_path / "big.json"
    big.write_text(json.dumps(hotpotqa_questions(2600)), encoding="utf-8")
    assert len(load_hotpotqa(big).pool) >= 25_600  # parsed before measuring: the pool is the input
    write_ruler_hqa(big, tmp_path / "warm", doc_counts=(50,), num_questions=1)  # lazy imports, cached arrays
    tracemalloc.start()
    try:
        [path] = write_ruler_hqa(big, tmp_path / "out", doc_counts=(25_600,), num_questions=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    row_bytes = path.stat().st_size
    row = json.loads(path.read_text(encoding="utf-8"))
    assert row["num_docs"] == 25_600 and row["context"].count("Document ") == 25_600
    assert row_bytes > 2_000_000 and peak < row_bytes / 4  # never held whole


def test_ruler_hqa_files_same_seed_same_bytes(hotpot: pathlib.Path, tmp_path: pathlib.Path) -> None:
    runs = (("a", 7), ("b", 7), ("c", 8))
    a, b, c = (write_ruler_hqa(hotpot, tmp_path / d, (30, 60), num_questions=4, seed=s) for d, s in runs)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()


def test_writes_are_atomic(hotpot: pathlib.Path, tmp_path: pathlib.Path) -> None:
    source = RulerHQASource(hotpot, 20)
    path = tmp_path / "eval.jsonl"
    write_jsonl([source[0]], path)
    before = path.read_bytes()

    def failing():
        yield source[1]
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_jsonl(failing(), path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["eval.jsonl", "hotpotqa.json"]
    with pytest.raises(RuntimeError, match="interrupted"):
        write_parquet(failing(), tmp_path / "train.parquet")
    assert not (tmp_path / "train.parquet").exists() and len(list(tmp_path.iterdir())) == 2


def test_draw_distractors_avoids_the_excluded() -> None:
    rng = np.random.default_rng(0)
    for pool_size, exclude, k in ((10, [0, 9], 8), (1000, [3, 4, 5, 500, 999], 300), (50, [], 50)):
        picks = draw_distractors(rng, pool_size, exclude, k)
        assert len(picks) == len(set(picks.tolist())) == k and list(picks) == sorted(picks)
        assert not set(picks.tolist()) & set(exclude) and 0 <= picks.min() and picks.max() < pool_size
    with pytest.raises(ValueError, match="cannot draw 9 distractors"):
        draw_distractors(rng, 10, [0, 9], 9)
