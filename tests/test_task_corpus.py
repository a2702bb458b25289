import pytest

from memagent_jax.agent.prompts import AgentPrompts
from memagent_jax.data.corpus import tokenizer_corpus
from memagent_jax.data.task_corpus import task_corpus
from memagent_jax.data.words import ADJECTIVES, NOUNS
from memagent_jax.tokenizer import load_tokenizer, train_sentencepiece


def test_deterministic_in_seed_and_covers_every_key_word():
    lines = list(task_corpus(600, seed=1))
    assert lines == list(task_corpus(600, seed=1)) and lines != list(task_corpus(600, seed=2))
    text = "\n".join(lines)
    assert all(f" {a}-" in text for a in ADJECTIVES) and all(f"-{n} " in text for n in NOUNS)
    with pytest.raises(ValueError, match="num_lines"):
        list(task_corpus(-1))


def test_keys_and_templates_take_few_tokens(tmp_path):
    # Against the small fixture corpus: keys drop from ~10 letter pieces to a few tokens, templates shrink.
    sizes = {}
    for name, corpus in (("tasks", task_corpus(8000)), ("fixture", tokenizer_corpus(8000))):
        train_sentencepiece(corpus, tmp_path / name, vocab_size=1536)  # the quickstart's size
        tokenizer = load_tokenizer(tmp_path / name)
        keys = [len(tokenizer.encode(f" {a}-{n}")) for a in ADJECTIVES for n in NOUNS]
        template = sum(len(p) for p in AgentPrompts.build(tokenizer).memory_update.pieces if isinstance(p, tuple))
        sizes[name] = (max(keys), template)
    assert sizes["tasks"][0] == 3, sizes  # " adjective", "-", "noun"
    assert sizes["tasks"][1] < 0.6 * sizes["fixture"][1], sizes
