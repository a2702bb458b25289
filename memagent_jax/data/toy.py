"""A toy task for tests of learning: the document repeats one line, "The code is D.", and the question asks
for the digit D. A weak policy that answers in the right format guesses it 10% of the time, so GRPO has a
signal from the start, and a tiny model can learn to carry the digit through its memory in minutes."""

from __future__ import annotations

from memagent_jax.data.document import Sample, Span, TextDocument
from memagent_jax.data.synthetic import SyntheticTask

__all__ = ["CodeTask"]

QUESTION = "What is the code?"


class CodeTask(SyntheticTask):
    answer_mode = "any"

    def default_name(self) -> str:
        return "toy_code"

    def sample(self, index: int) -> Sample:
        digit = str(int(self.rng(index).integers(10)))
        line = f"The code is {digit}."
        per_line = max(1, len(self.tokenizer.encode(line + "\n")))
        repeats = max(1, round(self.target_tokens / per_line))
        document = TextDocument("".join(line + "\n" for _ in range(repeats)), [Span(0, line)],
                                approx_tokens=repeats * per_line)
        return Sample(index=index, task=self.name, question=QUESTION, answers=(digit,), document=document,
                      answer_mode="any", meta={"target_tokens": self.target_tokens})
