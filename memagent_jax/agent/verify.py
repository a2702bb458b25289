"""Rule-based reward and evaluation metrics for MemAgent (pure Python, no jax).

Training reward (MemAgent's rule-based verifier: Yu et al., 2025, arXiv:2507.02259, and its reference
implementation): look only at the last 300 characters of the final answer, lower-case them, take the last
``\\boxed{...}`` (or ``\\boxed token`` / ``\\fbox{...}``), normalise both sides MATH-style and compare with
each ground truth; binary, max over ground truths. Questions with several required answers (answer_mode "all")
score 1 when the box lists exactly those answers, comma-separated, in any order (``boxed_reward_all``).

Evaluation: HotpotQA/SQuAD-normalised exact match, F1 and sub_em, plus RULER's string_match_all/part.

Decisions on points the reference leaves open (see also the docstrings):
- The 300-character window is cut *before* extraction, as the reference does: a box whose opening
  ``\\boxed{`` lies before the window is lost, and a cut box gives 0.
- The ground truths are lower-cased too: the response window is lower-cased, so without this a
  capitalised answer ("Paris") could never match.
- ``\\text{...}`` is NOT unwrapped (the reference list does not do it): ``\\boxed{\\text{paris}}`` does not
  match ``paris``. The trained prompt asks for a plain boxed answer.
- ``\\fbox{...}`` is read like ``\\boxed{...}`` (the reference finds it but then fails to strip it, which
  scores 0; the brief asks for it to count).
- The last box is the one whose ``\\boxed``/``\\fbox`` starts last; if that one has unbalanced braces the
  answer is None (reward 0) rather than falling back to an earlier box, as in the reference.
- An empty box never earns reward, whatever the ground truth normalises to.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

__all__ = [
    "REWARD_WINDOW_CHARS",
    "answer_reward",
    "best_of",
    "boxed_reward",
    "boxed_reward_all",
    "exact_match",
    "extract_answer",
    "extract_last_boxed",
    "f1_score",
    "normalize_answer",
    "normalize_math",
    "string_match_all",
    "string_match_all_single",
    "string_match_part",
    "string_match_part_single",
    "sub_em",
]

# The verifier only reads the tail of the final answer, so long rambles cannot hide boxes early on.
REWARD_WINDOW_CHARS = 300

# ---------------------------------------------------------------------------------------------------
# Training reward
# ---------------------------------------------------------------------------------------------------

_BOX_START = re.compile(r"\\(boxed|fbox)")
_NOT_A_BOX = object()  # sentinel: the command name matched but is not followed by a box argument


def _parse_box(text: str, pos: int, kind: str) -> object:
    """Read the argument of a box command whose name ends at ``pos``.

    Returns the content (str), None for an unbalanced ``{``, or _NOT_A_BOX when the name is not used as
    a box here (e.g. ``\\boxedfoo`` or a bare ``\\boxed`` at the end)."""
    j = pos
    while j < len(text) and text[j] in " \t":
        j += 1
    if j < len(text) and text[j] == "{":
        depth = 0
        for k in range(j, len(text)):
            c = text[k]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[j + 1 : k]
        return None  # opened but never closed: the reference gives no answer
    # "\boxed 5": a single token up to whitespace or "$" (only \boxed has this short form).
    if kind == "boxed" and j > pos and j < len(text) and text[j] != "$":
        k = j
        while k < len(text) and not text[k].isspace() and text[k] != "$":
            k += 1
        return text[j:k]
    return _NOT_A_BOX


def extract_last_boxed(text: str | None) -> str | None:
    """Content of the last ``\\boxed{...}``, ``\\boxed token`` or ``\\fbox{...}`` in ``text``.

    Braces are matched with a depth counter, so nested groups (``\\boxed{\\frac{1}{2}}``) are kept whole.
    Returns None when there is no box, when the last box is unbalanced, or for non-string input."""
    if not isinstance(text, str):
        return None
    for m in reversed(list(_BOX_START.finditer(text))):
        content = _parse_box(text, m.end(), m.group(1))
        if content is _NOT_A_BOX:
            continue
        return content  # type: ignore[return-value]
    return None


def normalize_math(text: str) -> str:
    """MATH-style answer normalisation (case is left alone; the reward lower-cases before calling).

    The list of MemAgent's verifier (arXiv:2507.02259) plus the small MATH steps it implies: ``\\!``
    removal, ``\\\\`` -> ``\\``, a leading zero for bare decimals (``.5`` -> ``0.5``) and trailing periods
    dropped. Not done: ``\\text{}`` unwrapping, frac/sqrt brace repair, ``x =`` stripping, unit removal."""
    s = text.replace("\n", "").replace("\r", "")
    s = s.replace("\\!", "")
    s = s.replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    # Braced form first, otherwise "^{\circ}" would leave "^{}" behind.
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    s = s.replace("\\%", "").replace("%", "")
    # Bare decimals get a leading zero so ".5" and "0.5" compare equal.
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    # All whitespace, not only ASCII spaces: "1, 2, 3" == "1,2,3" and CJK full-width spaces go too.
    s = "".join(s.split())
    s = s.rstrip(".")
    return s


def _ground_truth_list(ground_truths: object) -> list[str]:
    """Validate ground truths: a non-empty string or a non-empty collection of non-empty strings.

    Bad ground truths are a data bug, so they raise instead of silently scoring 0. Any iterable is
    accepted (Parquet readers hand back numpy arrays rather than lists)."""
    if isinstance(ground_truths, str):
        items: list[object] = [ground_truths]
    elif isinstance(ground_truths, (bytes, bytearray, Mapping)) or not isinstance(ground_truths, Iterable):
        raise ValueError(
            f"ground_truths must be a string or a sequence of strings, got {type(ground_truths).__name__}"
        )
    else:
        items = list(ground_truths)
    if not items:
        raise ValueError("ground_truths is empty: every sample needs at least one answer")
    for i, g in enumerate(items):
        if not isinstance(g, str):
            raise ValueError(f"ground_truths[{i}] is {type(g).__name__}, expected str")
        if not g.strip():
            raise ValueError(f"ground_truths[{i}] is an empty string")
    return items  # type: ignore[return-value]


def _boxed_in_window(response: object) -> str | None:
    """The last box of the response's last 300 characters, lower-cased (None: no string, no box, unbalanced)."""
    if not isinstance(response, str):
        return None
    # Window first, then lower-case, then extract: a box opening before the window is lost.
    return extract_last_boxed(response[-REWARD_WINDOW_CHARS:].lower())


def boxed_reward(response: object, ground_truths: str | Sequence[str]) -> float:
    """Binary training reward: 1.0 if the last box in the last 300 characters matches any ground truth.

    Never raises on the response (None / non-string / no box / unbalanced -> 0.0); raises ValueError on
    empty or non-string ground truths."""
    golds = _ground_truth_list(ground_truths)
    boxed = _boxed_in_window(response)
    if boxed is None:
        return 0.0
    pred = normalize_math(boxed)
    if not pred:
        return 0.0
    return 1.0 if any(pred == normalize_math(g.lower()) for g in golds) else 0.0


def boxed_reward_all(response: object, answers: str | Sequence[str]) -> float:
    """Binary reward for questions with several required answers (RULER's multi-value and multi-query needles,
    variable tracking): 1.0 if the last box (same window as boxed_reward) lists exactly these answers,
    comma-separated, in any order. The question asks for all of them and RULER scores them order-free
    (string_match_all); a canonical order would fail an agent that lists them as it read them. A missing,
    extra or repeated item scores 0. Answers holding a comma cannot be told apart when split, so then the box
    must equal them joined in the given order. Raises ValueError on empty or non-string answers."""
    golds = _ground_truth_list(answers)
    boxed = _boxed_in_window(response)
    if boxed is None:
        return 0.0
    wanted = [normalize_math(g.lower()) for g in golds]
    if any("," in g for g in wanted):
        return 1.0 if normalize_math(boxed) == ",".join(wanted) else 0.0
    listed = [normalize_math(item) for item in boxed.split(",")]
    return 1.0 if all(listed) and sorted(listed) == sorted(wanted) else 0.0


def answer_reward(response: object, answers: str | Sequence[str], answer_mode: str = "any") -> float:
    """The training reward of a sample by how its answers combine: "any" (alternatives; boxed_reward) or
    "all" (every one, any order; boxed_reward_all)."""
    if answer_mode == "any":
        return boxed_reward(response, answers)
    if answer_mode == "all":
        return boxed_reward_all(response, answers)
    raise ValueError(f"answer_mode must be 'all' or 'any', got {answer_mode!r}")


# ---------------------------------------------------------------------------------------------------
# Evaluation metrics (HotpotQA / SQuAD)
# ---------------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_YES_NO = ("yes", "no", "noanswer")


def normalize_answer(text: object) -> str:
    """SQuAD/HotpotQA normalisation: lower-case, drop ASCII punctuation, drop articles, collapse spaces.

    Non-string input (e.g. None) normalises to the empty string."""
    if not isinstance(text, str):
        return ""
    s = text.lower()
    s = "".join(c for c in s if c not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(pred: object, gold: str) -> float:
    """1.0 if the normalised prediction equals the normalised gold."""
    return float(normalize_answer(pred) == normalize_answer(gold))


def f1_score(pred: object, gold: str) -> float:
    """Token-level F1 of the normalised strings, HotpotQA style.

    A yes/no/noanswer on either side only scores when both sides are equal, so "no" does not get partial
    credit against "no, it was not"."""
    p, g = normalize_answer(pred), normalize_answer(gold)
    if (p in _YES_NO or g in _YES_NO) and p != g:
        return 0.0
    p_tokens, g_tokens = p.split(), g.split()
    common = Counter(p_tokens) & Counter(g_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(p_tokens)
    recall = num_same / len(g_tokens)
    return 2 * precision * recall / (precision + recall)


def sub_em(pred: object, gold: str) -> float:
    """1.0 if the normalised gold is contained in the normalised prediction or vice versa.

    An empty side scores 0: the empty string is a substring of everything, which would reward an
    empty answer."""
    p, g = normalize_answer(pred), normalize_answer(gold)
    if not p or not g:
        return 0.0
    return float(g in p or p in g)


def best_of(metric: Callable[[object, str], float], pred: object, golds: str | Sequence[str]) -> float:
    """Max of ``metric(pred, gold)`` over the gold answers (a string counts as one gold)."""
    return max(metric(pred, g) for g in _ground_truth_list(golds))


# ---------------------------------------------------------------------------------------------------
# RULER synthetic-task metrics
# ---------------------------------------------------------------------------------------------------


def _ref_list(refs: object) -> list[str]:
    # A bare string is one reference, not a sequence of one-character references.
    return _ground_truth_list(refs)


def string_match_all_single(pred: object, refs: str | Sequence[str]) -> float:
    """Fraction of the references found (case-insensitive substring) in the prediction."""
    refs_l = _ref_list(refs)
    p = pred.lower() if isinstance(pred, str) else ""
    return sum(1.0 for r in refs_l if r.lower() in p) / len(refs_l)


def string_match_part_single(pred: object, refs: str | Sequence[str]) -> float:
    """1.0 if any reference is found (case-insensitive substring) in the prediction."""
    refs_l = _ref_list(refs)
    p = pred.lower() if isinstance(pred, str) else ""
    return 1.0 if any(r.lower() in p for r in refs_l) else 0.0


def _mean_over_samples(
    fn: Callable[[object, str | Sequence[str]], float],
    preds: Sequence[object],
    refs: Sequence[str | Sequence[str]],
) -> float:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} reference lists")
    if not preds:
        raise ValueError("no samples to score")
    return sum(fn(p, r) for p, r in zip(preds, refs)) / len(preds)


def string_match_all(preds: Sequence[object], refs: Sequence[str | Sequence[str]]) -> float:
    """RULER string_match_all as a fraction in [0, 1] (RULER prints it times 100)."""
    return _mean_over_samples(string_match_all_single, preds, refs)


def string_match_part(preds: Sequence[object], refs: Sequence[str | Sequence[str]]) -> float:
    """RULER string_match_part as a fraction in [0, 1] (RULER prints it times 100)."""
    return _mean_over_samples(string_match_part_single, preds, refs)


# ---------------------------------------------------------------------------------------------------
# Answer extraction for evaluation
# ---------------------------------------------------------------------------------------------------

_ANSWER_IS = re.compile(r"the answer is", re.IGNORECASE)


def extract_answer(response: object) -> str:
    """Answer text for evaluation: last box content, else text after the last "the answer is", else all.

    Unlike the reward this reads the whole response and keeps case (SQuAD normalisation lower-cases
    later). "the answer is" is matched case-insensitively; if nothing follows it the answer is "" rather
    than the whole response, so a response cannot collect sub_em credit from its own reasoning."""
    if not isinstance(response, str):
        return ""
    boxed = extract_last_boxed(response)
    if boxed is not None:
        return boxed.strip()
    # Regex rather than lower().rfind: lower() can change string length, shifting the index.
    matches = list(_ANSWER_IS.finditer(response))
    if matches:
        return response[matches[-1].end() :].strip()
    return response.strip()
