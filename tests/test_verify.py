"""Hand-written edge cases for the reward verifier and evaluation metrics (expected values by hand)."""

import random

import numpy as np
import pytest

from memagent_jax.agent.verify import (
    REWARD_WINDOW_CHARS,
    answer_reward,
    best_of,
    boxed_reward,
    boxed_reward_all,
    exact_match,
    extract_answer,
    extract_last_boxed,
    f1_score,
    normalize_answer,
    normalize_math,
    string_match_all,
    string_match_all_single,
    string_match_part,
    string_match_part_single,
    sub_em,
)

# --------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{1} then \boxed{2} finally \boxed{3}", "3"),
        ("no box here", None),
        (r"the answer: \boxed 5 done", "5"),
        (r"$\boxed 5$", "5"),
        (r"\fbox{7}", "7"),
        (r"\boxed{a} and \fbox{b}", "b"),
        (r"\fbox{a} and \boxed{b}", "b"),
        (r"\boxed {5}", "5"),
        (r"\boxed{}", ""),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),
        (r"\boxed{1} then \boxed{2", None),  # last box unbalanced: no fallback to the earlier one
        (r"\boxed{{{", None),
        (r"\boxed{1}}}}", "1"),
        (r"\boxed{4} \boxedfoo", "4"),  # not a box command: skipped
        (r"\boxed{4} \boxed", "4"),  # bare trailing \boxed: skipped
        (r"\boxed{\boxed{9}}", "9"),  # innermost starts last
        ("", None),
        (None, None),
        (42, None),
    ],
)
def test_extract_last_boxed(text, expected):
    assert extract_last_boxed(text) == expected


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("1, 2, 3", "1,2,3"),
        ("a\nb", "ab"),
        (r"\left(1,2\right)", "(1,2)"),
        (r"\dfrac{1}{2}", r"\frac{1}{2}"),
        (r"\tfrac{1}{2}", r"\frac{1}{2}"),
        (r"90^\circ", "90"),
        (r"90^{\circ}", "90"),
        (r"50\%", "50"),
        ("50%", "50"),
        (r"\$5", "5"),
        ("5.", "5"),
        (".5", "0.5"),
        (r"\frac{.5}{2}", r"\frac{0.5}{2}"),
        (r"1\!000", "1000"),
        (r"\text{paris}", r"\text{paris}"),  # \text{} deliberately not unwrapped
        ("Paris", "Paris"),  # case is the caller's job
        ("東京 都", "東京都"),
        ("a\u3000b\tc", "abc"),
        ("", ""),
    ],
)
def test_normalize_math(raw, expected):
    assert normalize_math(raw) == expected


# --------------------------------------------------------------------------- reward


@pytest.mark.parametrize(
    "response, gts, expected",
    [
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}", 1.0),
        (r"\boxed{\frac{1}{2}}", r"\dfrac{1}{2}", 1.0),
        (r"\boxed{\dfrac{1}{2}}", r"\frac12", 0.0),  # no frac brace repair
        (r"\boxed{1} wait, no: \boxed{2}", "2", 1.0),
        (r"\boxed{1} wait, no: \boxed{2}", "1", 0.0),
        ("the answer is 2", "2", 0.0),  # no box, no reward
        (r"\boxed 5", "5", 1.0),
        (r"\boxed 5.", "5", 1.0),
        (r"\fbox{7}", "7", 1.0),
        (r"\boxed{Zürich}", "zürich", 1.0),
        (r"\boxed{zürich}", "Zürich", 1.0),  # ground truth lower-cased too
        (r"\boxed{Zurich}", "zürich", 0.0),  # no accent folding
        (r"\boxed{東京}", "東京", 1.0),
        (r"\boxed{東京}", "京都", 0.0),
        (r"\boxed{Yes}", "yes", 1.0),
        (r"\boxed{no}", "yes", 0.0),
        (r"\boxed{PARIS}", "Paris", 1.0),
        (r"\boxed{1, 2, 3}", "1,2,3", 1.0),
        (r"\boxed{\left(1, 2\right)}", "(1,2)", 1.0),
        (r"\boxed{90^\circ}", "90", 1.0),
        (r"\boxed{90^{\circ}}", r"90^\circ", 1.0),
        (r"\boxed{50\%}", "50%", 1.0),
        (r"\boxed{50\%}", "50", 1.0),
        (r"\boxed{\$5}", "5", 1.0),
        (r"\boxed{Paris.}", "Paris", 1.0),
        (r"\boxed{\text{Paris}}", "Paris", 0.0),  # \text{} is not unwrapped
        (r"\boxed{Paris", "Paris", 0.0),  # unbalanced
        (r"\boxed{}", "x", 0.0),
        (r"\boxed{}", ".", 0.0),  # empty box never scores, even if the truth normalises to ""
        (r"\boxed{the eiffel tower}", "Eiffel Tower", 0.0),  # no article stripping in the reward
        (r"\boxed{Lyon}", ["Paris", "Lyon"], 1.0),
        (r"\boxed{Lyon}", ("Paris", "Marseille"), 0.0),
        (r"\boxed{Lyon}", np.array(["Paris", "lyon"], dtype=object), 1.0),  # Parquet hands back arrays
        ("", "x", 0.0),
        (None, "x", 0.0),
        (123, "x", 0.0),
        (["\\boxed{x}"], "x", 0.0),
    ],
)
def test_boxed_reward(response, gts, expected):
    assert boxed_reward(response, gts) == expected


def test_reward_window_boundary():
    assert REWARD_WINDOW_CHARS == 300
    box = r"\boxed{42}"  # 10 characters
    # Box exactly fills the start of the window: 10 + 290 = 300 characters.
    assert boxed_reward(box + "x" * 290, "42") == 1.0
    # One more character: the window starts at "boxed{42}", the backslash is lost.
    assert boxed_reward(box + "x" * 291, "42") == 0.0
    # Window starts inside the box content: "d{42}..." is no box.
    assert boxed_reward(box + "x" * 295, "42") == 0.0
    # Box entirely before the window.
    assert boxed_reward(box + "x" * 300, "42") == 0.0
    # An earlier box outside the window does not matter when a later one is inside.
    assert boxed_reward(r"\boxed{1}" + "x" * 400 + r"\boxed{2}", "2") == 1.0
    assert boxed_reward(r"\boxed{1}" + "x" * 400 + r"\boxed{2}", "1") == 0.0
    # A box that opens before the window and closes inside it is cut: 0, and the window never
    # falls back to reading the full response.
    long_box = r"\boxed{" + "a" * 320 + "}"
    assert boxed_reward(long_box, "a" * 320) == 0.0
    # Box at the very end of a long response.
    assert boxed_reward("y" * 5000 + r" so \boxed{Paris}", "paris") == 1.0


@pytest.mark.parametrize(
    "gts, msg",
    [
        ([], "empty"),
        ("", "empty string"),
        ("   ", "empty string"),
        (["Paris", ""], "empty string"),
        (None, "NoneType"),
        (5, "int"),
        ([5], "int"),
        (["Paris", None], "NoneType"),
        (b"Paris", "bytes"),
        ({"a": "b"}, "dict"),
    ],
)
def test_bad_ground_truths_raise(gts, msg):
    with pytest.raises(ValueError, match=msg):
        boxed_reward(r"\boxed{Paris}", gts)
    # Raised even when the response itself is bad: a data bug must not hide behind a 0 reward.
    with pytest.raises(ValueError):
        boxed_reward(None, gts)


@pytest.mark.parametrize(
    "response, answers, expected",
    [
        ("\\boxed{1, 2, 3}", ["1", "2", "3"], 1.0),
        ("\\boxed{3,2 , 1}", ["1", "2", "3"], 1.0),  # any order, any spacing
        ("memory: ... so \\boxed{ABC DEF, XYZ}", ["xyz", "abc def"], 1.0),  # case-free, inner spaces dropped
        ("\\boxed{1, 2}", ["1", "2", "3"], 0.0),  # one missing
        ("\\boxed{1, 2, 3, 4}", ["1", "2", "3"], 0.0),  # one extra
        ("\\boxed{1, 1, 2}", ["1", "2"], 0.0),  # a repeat is not an answer
        ("\\boxed{1, 2, }", ["1", "2"], 0.0),  # an empty item
        ("\\boxed{1 2 3}", ["1", "2", "3"], 0.0),  # not separated
        ("1, 2, 3", ["1", "2", "3"], 0.0),  # no box
        ("\\boxed{12}", "12", 1.0),  # one answer, a bare string
        ("\\boxed{1,000, 2}", ["1,000", "2"], 1.0),  # answers with commas: the given order
        ("\\boxed{2, 1,000}", ["1,000", "2"], 0.0),
    ],
)
def test_boxed_reward_all_takes_every_answer_in_any_order(response, answers, expected):
    assert boxed_reward_all(response, answers) == expected


def test_answer_reward_follows_the_answer_mode():
    assert answer_reward("\\boxed{b, a}", ["a", "b"], "all") == 1.0
    assert answer_reward("\\boxed{b, a}", ["a, b"], "any") == 0.0  # one alternative, compared whole
    assert answer_reward("\\boxed{a}", ["a", "b"], "any") == 1.0
    assert answer_reward("\\boxed{a}", ["a", "b"], "all") == 0.0
    assert boxed_reward_all("x" * 400 + "\\boxed{a, b}", ["b", "a"]) == 1.0  # the same 300-character window
    assert boxed_reward_all("\\boxed{a, b}" + "x" * 300, ["b", "a"]) == 0.0
    with pytest.raises(ValueError, match="answer_mode"):
        answer_reward("\\boxed{a}", ["a"], "every")
    with pytest.raises(ValueError, match="empty string"):
        boxed_reward_all("\\boxed{a}", ["a", " "])


def test_reward_never_raises_on_random_responses():
    # Deterministic fuzz over the characters that drive the parser.
    rng = random.Random(0)
    alphabet = ["\\boxed", "\\fbox", "{", "}", " ", "$", "a", "1", "\\left", "\\%", "\n", "."]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        r = boxed_reward(text, ["a", "1"])
        assert r in (0.0, 1.0)


# --------------------------------------------------------------------------- SQuAD / HotpotQA metrics


def test_normalize_answer():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Theatre") == "theatre"  # "the" only as a whole word
    assert normalize_answer(None) == ""


def test_exact_match():
    assert exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert exact_match("Eiffel Tower in Paris", "eiffel tower") == 0.0
    assert exact_match("U.S.A.", "USA") == 1.0
    assert exact_match(None, "x") == 0.0


def test_f1_score():
    # pred tokens: eiffel tower paris; gold tokens: eiffel tower. P = 2/3, R = 1, F1 = 0.8.
    assert f1_score("the Eiffel Tower, Paris", "The Eiffel Tower") == pytest.approx(0.8)
    assert f1_score("Eiffel Tower", "Eiffel Tower") == 1.0
    assert f1_score("London", "Paris") == 0.0
    # Repeated tokens count by multiplicity: pred "x b b", gold "x b": common = {x:1, b:1} -> 2;
    # P = 2/3, R = 1 -> 0.8.
    assert f1_score("x b b", "x b") == pytest.approx(0.8)
    # yes/no/noanswer rule: mismatch scores 0 even with token overlap.
    assert f1_score("yes", "no") == 0.0
    assert f1_score("no", "no it was not") == 0.0
    assert f1_score("no it was not", "no") == 0.0
    assert f1_score("Yes.", "yes") == 1.0
    assert f1_score("noanswer", "noanswer") == 1.0
    assert f1_score("", "paris") == 0.0
    assert f1_score(None, "paris") == 0.0


def test_sub_em():
    assert sub_em("It is the Eiffel Tower in Paris.", "Eiffel Tower") == 1.0  # gold in pred
    assert sub_em("Tower", "The Eiffel Tower") == 1.0  # pred in gold
    assert sub_em("London", "Paris") == 0.0
    assert sub_em("", "Paris") == 0.0  # empty prediction
    assert sub_em("The.", "Paris") == 0.0  # normalises to empty
    assert sub_em(None, "Paris") == 0.0
    assert sub_em("paris", "The") == 0.0  # gold normalises to empty


def test_best_of():
    golds = ["Paris", "City of Paris"]
    assert best_of(exact_match, "paris", golds) == 1.0
    # vs "Paris": P = 1/2, R = 1 -> 2/3; vs "City of Paris": P = 1, R = 2/3 -> 0.8; max = 0.8.
    assert best_of(f1_score, "city paris", golds) == pytest.approx(0.8)
    assert best_of(sub_em, "London", golds) == 0.0
    assert best_of(exact_match, "paris", "Paris") == 1.0  # a bare string is one gold
    with pytest.raises(ValueError):
        best_of(exact_match, "paris", [])


# --------------------------------------------------------------------------- RULER


def test_string_match_single():
    assert string_match_all_single("The values are 123 and 456.", ["123", "456", "789"]) == pytest.approx(2 / 3)
    assert string_match_all_single("JITTERY-HOSPITAL", ["jittery-hospital"]) == 1.0
    assert string_match_all_single("nothing", ["123"]) == 0.0
    assert string_match_part_single("it is 456", ["123", "456"]) == 1.0
    assert string_match_part_single("it is 4 5 6", ["123", "456"]) == 0.0
    assert string_match_part_single("ABC", "abc") == 1.0  # a bare string is one reference
    assert string_match_all_single(None, ["x"]) == 0.0


def test_string_match_means():
    preds = ["VAR ABCDE and var xyzwv", "only 111", "none"]
    refs = [["abcde", "XYZWV"], ["111", "222"], ["333"]]
    # all: (1 + 1/2 + 0) / 3 = 0.5 ; part: (1 + 1 + 0) / 3 = 2/3
    assert string_match_all(preds, refs) == pytest.approx(0.5)
    assert string_match_part(preds, refs) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        string_match_all(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError):
        string_match_part([], [])
    with pytest.raises(ValueError):
        string_match_all(["a"], [[]])


# --------------------------------------------------------------------------- extract_answer


def test_extract_answer():
    assert extract_answer(r"I think \boxed{1} no \boxed{ Paris }. Therefore, the answer is Lyon") == "Paris"
    assert extract_answer("Reasoning... Therefore, the answer is Eiffel Tower.") == "Eiffel Tower."
    assert extract_answer("The answer is A. Wait. THE ANSWER IS B") == "B"  # last one, any case
    assert extract_answer("Therefore, the answer is") == ""
    assert extract_answer("  just Paris \n") == "just Paris"
    assert extract_answer(r"\boxed{Paris. the answer is Lyon") == "Lyon"  # unbalanced box: fall back
    assert extract_answer(None) == ""
    # Case is kept; evaluation normalisation lower-cases later.
    assert extract_answer(r"\boxed{Zürich}") == "Zürich"
    long = r"\boxed{early}" + "x" * 1000
    assert extract_answer(long) == "early"  # no 300-character window at evaluation
    assert best_of(sub_em, extract_answer("so the answer is the Eiffel Tower"), ["Eiffel Tower"]) == 1.0
