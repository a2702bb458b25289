"""A toy task for tests of learning: the document repeats one line, "The code is D.", and the question asks
for the digit D. A weak policy that answers in the right format guesses it 10% of the time, so GRPO has a
signal from the start, and a tiny model can learn to carry the digit through its memory in minutes."""

from __future__ import annotations

from typing import Any

from memagent_jax.data.document import Sample, Span, TextDocument, TextTokenizer
from memagent_jax.data.synthetic import SyntheticTask

__all__ = ["CodeTask"]

QUESTION = "What is the code?"


class CodeTask(SyntheticTask):
    """`digits`: the codes drawn from (e.g. "7" for a task whose answer never changes)."""

    answer_mode = "any"

    def __init__(self, tokenizer: TextTokenizer, target_tokens: int, *, digits: str = "0123456789", **kwargs: Any):
        if not digits or not digits.isdigit():
            raise ValueError(f"digits must be a non-empty string of digits, got {digits!r}")
        self.digits = digits
        super().__init__(tokenizer, target_tokens, **kwargs)

    def default_name(self) -> str:
        return "toy_code" if self.digits == "0123456789" else f"toy_code_{self.digits}"

    def sample(self, index: int) -> Sample:
        digit = self.digits[int(self.rng(index).integers(len(self.digits)))]
        line = f"The code is {digit}."
        per_line = max(1, len(self.tokenizer.encode(line + "\n")))
        repeats = max(1, round(self.target_tokens / per_line))
        document = TextDocument("".join(line + "\n" for _ in range(repeats)), [Span(0, line)],
                                approx_tokens=repeats * per_line)
        return Sample(index=index, task=self.name, question=QUESTION, answers=(digit,), document=document,
                      answer_mode="any", meta={"target_tokens": self.target_tokens})
