"""Fuzzed verifier input: any answer text and any ground truths either score in [0, 1] or (bad ground truths
only) raise ValueError; the boxed ground truth itself always scores 1."""

from __future__ import annotations

from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from memagent_jax.agent import verify

# Answer text with the verifier's own syntax mixed in, so boxes, braces and "the answer is" occur often.
syntax = st.sampled_from(["\\boxed{", "\\boxed ", "\\fbox{", "{", "}", "$", "the answer is", "\\!", "\\\\", ".5",
                          "^{\\circ}", "\\%", " ", "\n", "Paris", "yes", "no", "the", "İ", "Σ"])
answer_text = st.text() | st.lists(syntax | st.text(max_size=4), max_size=12).map("".join)
responses = answer_text | st.none() | st.integers() | st.binary(max_size=8)
good_truths = st.text(min_size=1).filter(str.strip)
ground_truths = (good_truths | st.lists(good_truths, min_size=1, max_size=4)
                 | st.lists(st.text() | st.none() | st.integers(), max_size=3) | st.none() | st.binary(max_size=4)
                 | st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2) | st.integers())

SCORERS = {
    "boxed_reward": verify.boxed_reward,
    "boxed_reward_all": verify.boxed_reward_all,
    "sub_em": lambda pred, golds: verify.best_of(verify.sub_em, pred, golds),
    "exact_match": lambda pred, golds: verify.best_of(verify.exact_match, pred, golds),
    "f1": lambda pred, golds: verify.best_of(verify.f1_score, pred, golds),
    "string_match_all": verify.string_match_all_single,
    "string_match_part": verify.string_match_part_single,
}


def _valid(truths: Any) -> bool:
    items = [truths] if isinstance(truths, str) else truths if isinstance(truths, list) else None
    return bool(items) and all(isinstance(t, str) and t.strip() for t in items)


@given(response=responses, truths=ground_truths, scorer=st.sampled_from(sorted(SCORERS)))
def test_any_answer_scores_in_unit_interval_or_bad_truths_raise(count_case, response: Any, truths: Any,
                                                                 scorer: str) -> None:
    count_case()
    try:
        score = SCORERS[scorer](response, truths)
    except ValueError as err:
        assert not _valid(truths), f"{scorer} refused valid ground truths {truths!r}: {err}"
        assert "ground_truths" in str(err)
        return
    assert _valid(truths)
    assert 0.0 <= score <= 1.0
    answer = verify.extract_answer(response)
    assert isinstance(answer, str)


def _boxable(truth: str) -> bool:
    """A truth that can stand inside \\boxed{...}: braces balanced at every prefix, no box command of its own."""
    depth = 0
    for c in truth:
        depth += {"{": 1, "}": -1}.get(c, 0)
        if depth < 0:
            return False
    return depth == 0 and "\\boxed" not in truth.lower() and "\\fbox" not in truth.lower()


@given(truth=good_truths, others=st.lists(good_truths, max_size=3), reasoning=answer_text)
def test_boxed_ground_truth_scores_one(count_case, truth: str, others: list[str], reasoning: str) -> None:
    # The reward reads the last 300 characters; a truth the reward normalises to nothing can never score.
    assume(_boxable(truth) and len(truth) < 250 and verify.normalize_math(truth.lower()))
    count_case()
    response = f"{reasoning}\nSo the final answer is \\boxed{{{truth}}}"
    assert verify.boxed_reward(response, [*others, truth]) == 1.0
    assert verify.extract_answer(response) == truth.strip()
    assert verify.best_of(verify.exact_match, verify.extract_answer(response), [truth, *others]) == 1.0


@given(truths=st.lists(good_truths, min_size=1, max_size=5), order=st.randoms(use_true_random=False),
       reasoning=answer_text)
def test_every_answer_boxed_in_any_order_scores_one(count_case, truths: list[str], order: Any,
                                                     reasoning: str) -> None:
    # Items the list's commas cannot cut, each normalising to something, within the reward's window.
    assume(all(_boxable(t) and "," not in t and verify.normalize_math(t.lower()) for t in truths))
    assume(sum(map(len, truths)) < 200)
    count_case()
    shuffled = list(truths)
    order.shuffle(shuffled)
    response = f"{reasoning}\nSo the final answer is \\boxed{{{', '.join(shuffled)}}}"
    assert verify.boxed_reward_all(response, truths) == 1.0
    assert verify.boxed_reward_all(response, [*truths, "x" + truths[0]]) == 0.0  # one more answer wanted
