"""Fuzzed tokenizer input: any text encodes (or is refused with ValueError), encode/decode round-trips, and any
id sequence decodes (or is refused with ValueError naming the id)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixture_data import tiny_bpe_tokenizer, tiny_sp_tokenizer
from memagent_jax.tokenizer import DEFAULT_CHAT_TEMPLATE, Tokenizer, load_tokenizer


@pytest.fixture(scope="module", params=["sentencepiece", "bpe"])
def tokenizer(request, tmp_path_factory) -> Tokenizer:
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "sentencepiece":
        return tiny_sp_tokenizer(folder)
    tiny_bpe_tokenizer(folder)
    # The tiny BPE has no chat template; ChatML (its markers are its special tokens) lets encode_chat run.
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config_path.write_text(json.dumps({**config, "chat_template": DEFAULT_CHAT_TEMPLATE}), encoding="utf-8")
    return load_tokenizer(folder)


# Text without lone surrogates (which are not valid Unicode text), with the markers data may contain.
valid_text = st.text(st.characters(exclude_categories=["Cs"])) | st.lists(
    st.sampled_from(["<|im_end|>", "<|im_start|>", "<s>", "</s>", "\n", " ", "42", "东京", "\x00", "\ue000"])
    | st.text(max_size=5), max_size=8).map("".join)
any_text = st.text()  # lone surrogates included


@given(text=valid_text)
def test_encode_then_decode_gives_the_text_back(tokenizer: Tokenizer, count_case, text: str) -> None:
    count_case()
    ids = tokenizer.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tokenizer.vocab_size for i in ids)
    # encode() turns special-token strings into plain text pieces, so the round trip is exact.
    assert tokenizer.decode(ids) == text


@given(text=any_text)
def test_any_text_encodes_or_is_refused_clearly(tokenizer: Tokenizer, count_case, text: str) -> None:
    count_case()
    has_surrogate = any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    try:
        ids = tokenizer.encode(text, add_bos=True)
        chat = tokenizer.encode_chat([{"role": "user", "content": text}])
    except ValueError as err:
        assert has_surrogate and "surrogate" in str(err)
        return
    assert not has_surrogate
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    assert ids == bos + tokenizer.encode(text)
    assert len(chat) > len(tokenizer.encode(text)) // 4  # the turn's markers around the content, at least


@given(ids=st.lists(st.integers(min_value=-(2**70), max_value=2**70)
                    | st.integers(min_value=-2, max_value=1200), max_size=30),
       skip_special=st.booleans())
def test_any_ids_decode_or_are_refused_clearly(tokenizer: Tokenizer, count_case, ids: list[int],
                                               skip_special: bool) -> None:
    count_case()
    try:
        text = tokenizer.decode(ids, skip_special=skip_special)
    except ValueError as err:
        assert any(i < 0 for i in ids) and "out of range" in str(err)
        return
    assert isinstance(text, str)
    assert all(i >= 0 for i in ids)
    # Ids past the vocabulary (a model's padded embedding rows) carry no text.
    in_vocab = [i for i in ids if i < tokenizer.vocab_size]
    assert text == tokenizer.decode(in_vocab, skip_special=skip_special)


def test_lone_surrogate_is_refused_naming_the_position(tokenizer: Tokenizer) -> None:
    with pytest.raises(ValueError, match=r"surrogate U\+D800 at position 1"):
        tokenizer.encode("a\ud800b")


def test_negative_id_is_refused_and_ids_past_the_vocabulary_decode_to_nothing(tokenizer: Tokenizer) -> None:
    with pytest.raises(ValueError, match="token id -1 out of range"):
        tokenizer.decode([5, -1])
    assert tokenizer.decode([tokenizer.vocab_size, 2**40]) == ""
