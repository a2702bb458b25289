"""The evaluation questions a training set must never contain, and the reason a training question goes.

RULER-HQA evaluates on the first ``num_questions`` (128 by default, see hotpotqa.py) valid questions of
the HotpotQA dev file. A training question is excluded when it *is* one of them (same id or same
question text) or when any of its own paragraphs is one of their gold (supporting) paragraphs; the
distractor padding never draws those paragraphs either. So no evaluation question, and no evaluation
gold paragraph in any role, is in a training file -- a stronger rule than "not as a gold paragraph",
and one a test can check by searching the file's contexts.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from memagent_jax.data.errors import OnError
from memagent_jax.data.hotpotqa import Question, load_hotpotqa

__all__ = ["EVALUATION_QUESTION", "HOLDS_EVALUATION_GOLD", "HeldOut"]

EVALUATION_QUESTION = "is an evaluation question"
HOLDS_EVALUATION_GOLD = "holds an evaluation gold paragraph"


@dataclasses.dataclass(frozen=True)
class HeldOut:
    eval_path: str
    num_questions: int
    ids: frozenset[str]
    questions: frozenset[str]  # the same question may come back under another id in another file
    gold_paragraphs: frozenset[str]  # "title\ntext", as in the pool

    @classmethod
    def first_questions(
        cls, eval_path: str | os.PathLike, num_questions: int = 128, on_error: OnError = "raise"
    ) -> "HeldOut":
        """The first ``num_questions`` valid questions of ``eval_path`` (RULER-HQA's evaluation set)."""
        if num_questions < 0:
            raise ValueError(f"the number of evaluation questions must be >= 0, got {num_questions}")
        data = load_hotpotqa(eval_path, on_error)
        if num_questions > len(data.questions):
            raise ValueError(
                f"{eval_path} has {len(data.questions)} questions, fewer than the {num_questions} held out"
            )
        held = data.questions[:num_questions]
        return cls(
            eval_path=str(data.path),
            num_questions=num_questions,
            ids=frozenset(q.id for q in held),
            questions=frozenset(q.question for q in held),
            gold_paragraphs=frozenset(data.pool[d] for q in held for d in q.supporting),
        )

    def reason_to_exclude(self, question: Question, pool: Sequence[str]) -> str | None:
        """Why ``question`` (with paragraphs in ``pool``) may not be trained on, or None."""
        if question.id in self.ids or question.question in self.questions:
            return EVALUATION_QUESTION
        if any(pool[d] in self.gold_paragraphs for d in question.docs):
            return HOLDS_EVALUATION_GOLD
        return None

    def pool_indices(self, pool: Sequence[str]) -> list[int]:
        """Indices of the gold paragraphs in a sorted ``pool`` (those it holds): never drawn as padding."""
        found = []
        for text in sorted(self.gold_paragraphs):
            k = bisect.bisect_left(pool, text)
            if k < len(pool) and pool[k] == text:
                found.append(k)
        return found

    def describe(self) -> dict[str, Any]:
        """What was held out, for the training file's metadata."""
        return {
            "eval_file": self.eval_path,
            "eval_questions": self.num_questions,
            "eval_ids": sorted(self.ids),
            "eval_gold_paragraphs": len(self.gold_paragraphs),
        }

