"""Documents stream piece by piece; token chunks concatenate to the whole text's tokens; Sample answers."""

from __future__ import annotations

import pathlib

import pytest

from fixture_data import FILLER, tiny_bpe_tokenizer, tiny_sp_tokenizer
from memagent_jax.data.document import Sample, Span, TextDocument, split_pieces

TEXT = (
    "Document 1:\nAlpha Town\nAlpha Town is a city.  It has 3 parks.\n\n"
    "Document 2:\nBeta\n  indented line stays with its piece\n"
    + (FILLER + "\n") * 30
    + "One of the special magic numbers for calm-river is: 1234567.\nlast line without newline"
)


@pytest.fixture(scope="module", params=["sp", "bpe"])
def tok(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp(request.param)
    return tiny_sp_tokenizer(out) if request.param == "sp" else tiny_bpe_tokenizer(out)


def test_pieces_split_after_newlines_before_text() -> None:
    doc = TextDocument(TEXT)
    pieces = list(doc.iter_pieces())
    assert "".join(pieces) == TEXT
    assert len(pieces) == doc.num_pieces == len(split_pieces(TEXT))
    for a, b in zip(pieces, pieces[1:]):
        assert a.endswith("\n") and not b[0].isspace()
    assert "Beta\n  indented line stays with its piece\n" in pieces
    assert doc.piece(3) == pieces[3]
    with pytest.raises(IndexError):
        doc.piece(doc.num_pieces)


@pytest.mark.parametrize("piece_chars", [1, 50, 300, 10_000])
def test_iter_text_groups_whole_pieces(piece_chars: int) -> None:
    doc = TextDocument(TEXT)
    groups = list(doc.iter_text(piece_chars))
    assert "".join(groups) == TEXT
    starts = set(split_pieces(TEXT))
    pos = 0
    for g in groups:
        assert pos in starts
        assert len(g) <= piece_chars or len(split_pieces(g)) == 1  # only a single long piece may exceed
        pos += len(g)


@pytest.mark.parametrize("chunk_tokens", [1, 7, 64, 100_000])
def test_token_chunks_concatenate_to_whole_text_tokens(tok, chunk_tokens: int) -> None:
    doc = TextDocument(TEXT)
    chunks = list(doc.iter_tokens(tok, chunk_tokens, piece_chars=200))
    assert all(len(c) == chunk_tokens for c in chunks[:-1]) and 0 < len(chunks[-1]) <= chunk_tokens
    assert [i for c in chunks for i in c] == tok.encode(TEXT)


def test_bad_chunk_size(tok) -> None:
    with pytest.raises(ValueError, match="chunk_tokens"):
        next(TextDocument(TEXT).iter_tokens(tok, 0))


def test_with_answers_records_spans() -> None:
    doc = TextDocument.with_answers(TEXT, ["1234567", "Beta", "absent"])
    assert doc.spans == (Span(doc.num_pieces - 2, "1234567"), Span(4, "Beta"))
    for span in doc.spans:
        assert span.text in doc.piece(span.piece)


def test_text_refuses_huge_materialisation() -> None:
    class Big(TextDocument):
        def text(self, max_chars: int = 100) -> str:  # the base-class streaming implementation
            return super(TextDocument, self).text(max_chars)

    assert Big("a\nb\n").text() == "a\nb\n"
    with pytest.raises(ValueError, match="max_chars"):
        Big(TEXT).text(max_chars=100)


def test_sample_answers() -> None:
    doc = TextDocument("x")
    every = Sample(0, "t", "q?", ("b", "a"), doc, answer_mode="all")
    assert every.reward_answer == "b, a" and every.ground_truth == ["b, a"]
    alt = Sample(1, "t", "q?", ("Paris", "paris city"), doc)
    assert alt.reward_answer == "Paris" and alt.ground_truth == ["Paris", "paris city"]
    with pytest.raises(ValueError, match="answer"):
        Sample(2, "t", "q?", (), doc)
    with pytest.raises(ValueError, match="answer_mode"):
        Sample(3, "t", "q?", ("a",), doc, answer_mode="some")  # type: ignore[arg-type]
    assert every == Sample(0, "t", "q?", ("b", "a"), TextDocument("x"), answer_mode="all")


def test_tiny_tokenizers_build(tmp_path: pathlib.Path) -> None:
    assert tiny_sp_tokenizer(tmp_path / "a").encode("VAR ABCDE = 12345")
    assert tiny_bpe_tokenizer(tmp_path / "b").decode(tiny_bpe_tokenizer(tmp_path / "c").encode(TEXT)) == TEXT
