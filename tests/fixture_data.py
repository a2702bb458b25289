"""Test fixtures for data and tokenizer tests: a small deterministic corpus in the style of the synthetic tasks,
tokenizers trained offline from it in well under a second, small HotpotQA/SQuAD-format records (so builder
tests never need the downloaded data), and a document's exact token count."""

from __future__ import annotations

import json
import pathlib
import random
from typing import Any, Iterator

import numpy as np

from memagent_jax.data.document import Document, TextTokenizer
from memagent_jax.data.haystack import FILLER
from memagent_jax.data.words import key_space
from memagent_jax.tokenizer import Tokenizer, load_tokenizer, train_sentencepiece

_ADJECTIVES = ("jittery", "calm", "bright", "silent", "eager", "brave", "gentle", "rapid", "quiet", "bold")
_NOUNS = ("hospital", "river", "garden", "window", "forest", "station", "mirror", "engine", "harbor", "castle")


def tokenizer_corpus(num_lines: int, seed: int = 0) -> Iterator[str]:
    """Filler lines, needles, questions, variable assignments and boxed answers, deterministic in seed."""
    if num_lines < 0:
        raise ValueError(f"num_lines must be >= 0, got {num_lines}")
    rng = random.Random(seed)
    for i in range(num_lines):
        key = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
        value = rng.randrange(1_000_000, 10_000_000)
        name = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
        kind = i % 5
        if kind == 0:
            yield FILLER
        elif kind == 1:
            yield f"One of the special magic numbers for {key} is: {value}."
        elif kind == 2:
            yield f"What is the special magic number for {key} mentioned in the provided text?"
        elif kind == 3:
            yield f"VAR {name} = {value % 100000:05d} and the answer is \\boxed{{{value}}}"
        else:
            yield f"No previous memory. Updated memory: the number for {key} is {value}."


# The Qwen2 pre-tokenizer split (Llama 3's differs only in grouping up to 3 digits).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _texts(num_lines: int) -> list[str]:
    lines = list(tokenizer_corpus(num_lines))
    # Some multi-line text, so newline handling is learned as in documents.
    return lines + ["\n".join(lines[i : i + 5]) + "\n\n" for i in range(0, len(lines), 5)]


def tiny_sp_tokenizer(out_dir: str | pathlib.Path, vocab_size: int = 1000) -> Tokenizer:
    """Our SentencePiece default trained on ``tokenizer_corpus(2000)``."""
    train_sentencepiece(tokenizer_corpus(2000), out_dir, vocab_size=vocab_size)
    return load_tokenizer(out_dir)


def tiny_bpe_tokenizer(out_dir: str | pathlib.Path, vocab_size: int = 600) -> Tokenizer:
    """A byte-level BPE with Qwen2's pre-tokenizer, loaded through our HFTokenizer."""
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTok

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_texts(1000), trainer)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.save(str(out / "tokenizer.json"))
    config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return load_tokenizer(out)


def count_tokens(document: Document, tokenizer: TextTokenizer) -> int:
    """A document's exact token count, streamed (one tokenization pass): what approx_tokens estimates."""
    return sum(len(chunk) for chunk in document.iter_tokens(tokenizer, chunk_tokens=4096))


def _sentence(rng: np.random.Generator, subject: str) -> str:
    words = key_space("all").keys(rng, int(rng.integers(2, 7)), distinct=False)
    return f"The {subject} is close to the {' and the '.join(words)}."


def hotpotqa_questions(num_questions: int, paragraphs: int = 10, seed: int = 0) -> list[dict[str, Any]]:
    """HotpotQA-format questions (dev/train schema): ``paragraphs`` paragraphs of 1-4 sentences of varying
    length each, titled ``T{q}-{p}``; paragraphs 3 and 7 are supporting (sentence 0 of 3 names the
    answer ``answer{q}``, sentence 1 of 7 may be missing: HotpotQA's files have such facts)."""
    rng = np.random.default_rng(seed)
    questions = []
    for q in range(num_questions):
        context = []
        for p in range(paragraphs):
            sentences = [_sentence(rng, f"T{q}-{p}") for _ in range(int(rng.integers(1, 4)))]
            if p == 3:
                sentences[0] = f"The answer of question {q} is answer{q}."
            context.append([f"T{q}-{p}", [(" " if i else "") + s for i, s in enumerate(sentences)]])
        questions.append(
            {
                "_id": f"id{q}",
                "question": f"What is the answer of question {q}?",
                "answer": f"answer{q}",
                "supporting_facts": [[f"T{q}-3", 0], [f"T{q}-7", 1]],
                "context": context,
                "type": "bridge" if q % 2 else "comparison",
                "level": "medium",
            }
        )
    return questions


def squad_dataset(articles: int, paragraphs: int = 6, questions: int = 3, seed: int = 0) -> dict[str, Any]:
    """A SQuAD v2-format object: ``articles`` articles of ``paragraphs`` paragraphs of varying length, each
    with ``questions`` questions whose last is unanswerable (``is_impossible``)."""
    rng = np.random.default_rng(seed)
    data = []
    for a in range(articles):
        paras = []
        for p in range(paragraphs):
            context = " ".join(_sentence(rng, f"part {a}-{p}") for _ in range(int(rng.integers(1, 5))))
            qas = [
                {
                    "id": f"{a}-{p}-{k}",
                    "question": f"Which part is {a}-{p} close to ({k})?",
                    "answers": [{"text": f"part {a}-{p}", "answer_start": 4}] * 2,
                    "is_impossible": False,
                }
                for k in range(questions - 1)
            ]
            qas.append({"id": f"{a}-{p}-x", "question": "Unanswerable?", "answers": [], "is_impossible": True})
            paras.append({"context": context, "qas": qas})
        data.append({"title": f"Article {a}", "paragraphs": paras})
    return {"version": "v2.0", "data": data}
