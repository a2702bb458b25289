import re

import numpy as np
import pytest

from fixture_data import tokenizer_corpus
from memagent_jax.agent.prompts import AgentPrompts
from memagent_jax.data.task_corpus import task_corpus
from memagent_jax.data.words import ADJECTIVES, NOUNS, VERBS, key_space, word_split
from memagent_jax.tokenizer import load_tokenizer, train_sentencepiece


def test_deterministic_in_seed_names_every_training_word_and_no_evaluation_word():
    lines = list(task_corpus(600, seed=1))
    assert lines == list(task_corpus(600, seed=1)) and lines != list(task_corpus(600, seed=2))
    words = set(re.findall(r"[a-z]+", "\n".join(lines).lower()))
    listed = [w for w in ADJECTIVES + NOUNS + VERBS if re.fullmatch(r"[a-z]+", w)]
    assert {w for w in listed if word_split(w) == "train"} <= words
    # Evaluation words stay out, but for a few inside templates ("question") or compound nouns ("arm-rest").
    leaked = {w for w in listed if word_split(w) == "eval"} & words
    assert len(leaked) < 0.004 * len(listed), sorted(leaked)
    with pytest.raises(ValueError, match="num_lines"):
        list(task_corpus(-1))


def test_an_unseen_word_is_a_few_pieces_and_templates_stay_short(tmp_path):
    # Against the small fixture corpus (a few task words): unseen keys and the agent's templates shrink.
    sizes = {}
    keys = key_space("eval").keys(np.random.default_rng(0), 500)
    for name, corpus in (("tasks", task_corpus(8000)), ("fixture", tokenizer_corpus(8000))):
        train_sentencepiece(corpus, tmp_path / name, vocab_size=2048, digit_group=2)  # the quickstart's settings
        tokenizer = load_tokenizer(tmp_path / name)
        pieces = [len(tokenizer.encode(" " + k)) for k in keys]
        template = sum(len(p) for p in AgentPrompts.build(tokenizer).memory_update.pieces if isinstance(p, tuple))
        sizes[name] = (float(np.mean(pieces)), template)
    # An unseen key (two unseen words and a hyphen): ~7 pieces against ~11.5 (2,048 pieces each).
    assert sizes["tasks"][0] < 8.0 and sizes["tasks"][0] < 0.7 * sizes["fixture"][0], sizes
    assert sizes["tasks"][1] < 0.6 * sizes["fixture"][1], sizes
