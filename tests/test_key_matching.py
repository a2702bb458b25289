"""benchmarks/key_matching.py: the notes before the box are what it scores, and it runs on an exported checkpoint."""

from __future__ import annotations

import math
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import key_matching  # noqa: E402
from memagent_jax.model.hf import load_hf_checkpoint  # noqa: E402
from memagent_jax.tokenizer import load_tokenizer  # noqa: E402


def test_only_the_notes_before_the_box_count():
    assert key_matching.score_notes("4217093, 1111111\n\\boxed{4217093, 1111111}", ["1111111", "4217093"]) == (1.0, 1.0)
    assert key_matching.score_notes("4217093\n\\boxed{4217093, 1111111}", ["4217093", "1111111"]) == (0.0, 0.5)
    assert key_matching.score_notes("\\boxed{4217093}", ["4217093"]) == (0.0, 0.0)


def test_needle_choice_tells_a_distractor_and_the_last_needle_apart():
    document = ("One of the special magic numbers for a-b is: 1111111.\n"
                "One of the special magic numbers for c-d is: 2222222.\n"
                "One of the special magic numbers for e-f is: 3333333.\n")
    assert key_matching.needle_choice("2222222\n\\boxed{2222222}", document, ["2222222"]) == (0.0, 0.0)
    assert key_matching.needle_choice("3333333\n\\boxed{3333333}", document, ["2222222"]) == (1.0, 1.0)
    assert key_matching.needle_choice("1111111", document, ["2222222"]) == (1.0, 0.0)
    assert key_matching.needle_choice("3333333", document, ["3333333"]) == (0.0, 1.0)
    assert key_matching.needle_choice("9999999", document, ["2222222"]) == (0.0, 0.0)
    assert all(math.isnan(x) for x in key_matching.needle_choice("1111111", document, ["1111111", "2222222"]))


def test_probe_runs_on_an_export_and_a_model_that_writes_nothing_scores_zero(tiny_eval_checkpoints):
    export, zero = tiny_eval_checkpoints
    tokenizer = load_tokenizer(export)
    for folder in (export, zero):
        model, _ = load_hf_checkpoint(folder)
        result = key_matching.probe(model, tokenizer, "niah_multikey", 128, samples=2, max_new_tokens=4)
        assert set(result) == {"all", "part", "distractor", "last"}
        assert 0.0 <= result["all"] <= result["part"] <= 1.0
        assert 0.0 <= result["distractor"] <= 1.0 - result["all"] and 0.0 <= result["last"] <= 1.0
        if folder == zero:  # greedy picks id 0 at every step: no answer
            assert result == {"all": 0.0, "part": 0.0, "distractor": 0.0, "last": 0.0}
