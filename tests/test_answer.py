"""memagent-answer end to end on a checkpoint folder written by the project itself."""

import shutil
import subprocess
import sys

import pytest
from flax import nnx

from fixture_data import tokenizer_corpus
from memagent_jax.agent.memory_agent import AgentConfig
from memagent_jax.model.config import ModelConfig
from memagent_jax.model.hf import save_hf_checkpoint
from memagent_jax.model.transformer import Transformer
from memagent_jax.run.answering import answer_document
from memagent_jax.tokenizer import train_sentencepiece


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    tokenizer_dir = tmp_path_factory.mktemp("tok")
    train_sentencepiece(tokenizer_corpus(1500), tokenizer_dir, vocab_size=512)
    cfg = ModelConfig(family="qwen2", vocab_size=512, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, qkv_bias=True, tie_word_embeddings=True,
                      rope_theta=10000.0, max_position_embeddings=2048, initializer_range=0.3)
    save_hf_checkpoint(Transformer(cfg, rngs=nnx.Rngs(0)), folder, overwrite=True)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, folder / name)
    return folder


def _run(*args):
    return subprocess.run([sys.executable, "-m", "memagent_jax.answer", *args], capture_output=True, text=True,
                          timeout=300)


SMALL = ["--chunk_size=64", "--max_memory_tokens=8", "--max_answer_tokens=5", "--max_question_tokens=32"]


def test_answers_a_document_and_shows_memory(checkpoint, tmp_path):
    document = tmp_path / "doc.txt"
    text = "".join(f"{line}\n" for line in tokenizer_corpus(40, seed=3))
    document.write_bytes(text.encode() + b"broken \xff bytes\n")
    done = _run(f"--checkpoint={checkpoint}", f"--document={document}", "--question=Which number?",
                "--show-memory", *SMALL)
    assert done.returncode == 0, done.stderr
    shown = done.stdout.count("--- memory after chunk")
    assert shown >= 5  # 40 lines of ~20 tokens in chunks of 64
    assert "1 bytes of" in done.stderr and "not valid UTF-8" in done.stderr
    assert "chunk" in done.stderr and "%" in done.stderr  # the progress line
    # The printed answer is the agent's own answer for the same inputs.
    config = AgentConfig(chunk_size=64, max_memory_tokens=8, max_answer_tokens=5, max_question_tokens=32,
                         temperature=0.0)
    trajectory = answer_document(checkpoint, document, "Which number?", config)
    assert trajectory.num_chunks == shown
    assert done.stdout.rstrip("\n").endswith(trajectory.answer.rstrip("\n"))


def test_empty_document_is_answered_from_no_memory(checkpoint, tmp_path):
    document = tmp_path / "empty.txt"
    document.write_text("")
    config = AgentConfig(chunk_size=64, max_memory_tokens=8, max_answer_tokens=5, max_question_tokens=32)
    trajectory = answer_document(checkpoint, document, "Anything?", config)
    assert trajectory.num_chunks == 0 and len(trajectory.conversations) == 1


def test_bad_inputs_give_clear_errors(checkpoint, tmp_path):
    document = tmp_path / "doc.txt"
    document.write_text("hello\n")
    missing = _run(f"--checkpoint={tmp_path / 'nope'}", f"--document={document}", "--question=q", *SMALL)
    assert missing.returncode != 0 and "checkpoint folder" in missing.stderr and "does not exist" in missing.stderr
    no_doc = _run(f"--checkpoint={checkpoint}", f"--document={tmp_path / 'gone.txt'}", "--question=q", *SMALL)
    assert no_doc.returncode != 0 and "gone.txt does not exist" in no_doc.stderr
    long_question = _run(f"--checkpoint={checkpoint}", f"--document={document}", "--question=" + "why " * 50,
                         *SMALL)
    assert long_question.returncode != 0 and "more than max_question_tokens=32" in long_question.stderr
    usage = _run(f"--checkpoint={checkpoint}")
    assert usage.returncode != 0 and "--document" in usage.stderr
