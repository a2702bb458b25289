"""benchmarks/key_matching.py: the notes before the box are what it scores, and it runs on an exported checkpoint."""

from __future__ import annotations

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


def test_probe_runs_on_an_export_and_a_model_that_writes_nothing_scores_zero(tiny_eval_checkpoints):
    export, zero = tiny_eval_checkpoints
    tokenizer = load_tokenizer(export)
    for folder in (export, zero):
        model, _ = load_hf_checkpoint(folder)
        result = key_matching.probe(model, tokenizer, "niah_multikey", 128, samples=2, max_new_tokens=4)
        assert set(result) == {"all", "part"} and 0.0 <= result["all"] <= result["part"] <= 1.0
        if folder == zero:  # greedy picks id 0 at every step: no answer
            assert result == {"all": 0.0, "part": 0.0}
