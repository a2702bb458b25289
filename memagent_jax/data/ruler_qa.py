"""RULER's QA tasks at any length, in RULER's format: qa_1 (SQuAD) and qa_2 (HotpotQA).

    python -m memagent_jax.data.ruler_qa --task qa_2 --data "$(scripts/fetch_hotpotqa.sh)" \\
        --tokenizer PATH --target_tokens 4096,8192,131072 --num_samples 500 --out_dir ruler_qa

The task as RULER defines it (scripts/data/synthetic/qa.py, its ``qa`` template and answer prefix):

* documents: the question's gold documents (SQuAD: its paragraph; HotpotQA: all its own paragraphs),
  then distractors from the same dataset -- for SQuAD first the other paragraphs of the same article,
  then random paragraphs of the whole pool; from the pool size on, the whole pool repeated. They are
  shuffled by one permutation per document count (RULER seeds its shuffle with the seed alone, so every
  sample with the same number of documents has its gold documents at the same positions) and written
  ``Document {k}:\\n{document}`` joined by blank lines;
* input: ``Answer the question based on the given documents. Only give me the answer and do not output
  any other words.\\n\\nThe following are given documents.\\n\\n{context}\\n\\nAnswer the question based on
  the given documents. Only give me the answer and do not output any other words.\\n\\nQuestion: {query}``;
  the answer prefix `` Answer:`` is stored apart, in ``answer_prefix``;
* length: tokens of input + answer prefix, plus 32 tokens to generate, at most the target;
* rows (JSONL): ``{"index", "input", "outputs" (all answer texts), "length", "length_w_model_temp"
  (= length: no chat template is counted), "answer_prefix"}``.

How many documents: RULER finds the largest count that fits for question 0 by a binary search and drops
10 documents at a time from any sample that does not fit (with fresh random distractors at each count),
so its lengths fall up to 10 documents short of the target -- half the documents at 4K. Here each
question draws one sequence of distractors, and a context of n documents takes its first n - gold: the
length grows with n, and each sample gets the most documents that fit, within one document of the
target. A question whose own documents alone exceed the target (RULER would loop forever) is skipped,
counted, and the next question taken.

Tokens are counted with the project's tokenizer interface, per piece: the prompt head, each document
``Document {k}:\\n...\\n\\n`` and the question tail are counted apart and summed -- exact for tokenizers
whose tokens never span "newline | non-space" (see document.py). Random choices are numpy streams keyed
by (seed, task, question) and (seed, task, number of documents), not RULER's Python ``random`` stream,
so the files follow RULER's definition but are not byte-identical to RULER's own output; they are
deterministic in the seed. Each row is streamed to disk piece by piece (bounded memory at any length),
and every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from absl import flags

from memagent_jax.command_line import parse_command
from memagent_jax.data.document import TextTokenizer
from memagent_jax.data.errors import OnError, one_line_errors
from memagent_jax.data.haystack import doc_header
from memagent_jax.data.hotpotqa import load_hotpotqa
from memagent_jax.data.pool import numbered_pieces
from memagent_jax.data.squad import load_squad
from memagent_jax.data.synthetic import stable_id
from memagent_jax.data.writers import write_jsonl_rows

__all__ = ["ANSWER_PREFIX", "DATASETS", "TOKENS_TO_GENERATE", "RulerQA", "TooLong", "write_ruler_qa"]

log = logging.getLogger("memagent_jax.data")
DATASETS = {"qa_1": "squad", "qa_2": "hotpotqa"}
_INSTRUCTION = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other words."
)
HEAD = f"{_INSTRUCTION}\n\nThe following are given documents.\n\n"
QUESTION = f"{_INSTRUCTION}\n\nQuestion: {{query}}"  # follows the context's last blank line
ANSWER_PREFIX = " Answer:"
TOKENS_TO_GENERATE = 32


class TooLong(ValueError):
    """A question whose own documents and prompt exceed the target length."""


@dataclasses.dataclass(frozen=True)
class _Question:
    query: str
    outputs: tuple[str, ...]
    gold: tuple[int, ...]  # pool indices, in every context
    more: tuple[int, ...]  # the first distractors (SQuAD: the same article's other paragraphs)


def _dataset(task: str, path: str | os.PathLike, on_error: OnError) -> tuple[list[str], list[_Question]]:
    if task not in DATASETS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(DATASETS)}")
    if DATASETS[task] == "squad":
        squad = load_squad(path, on_error)
        return squad.pool, [_Question(q.question, q.answers, (q.doc,), q.article_docs) for q in squad.questions]
    hotpot = load_hotpotqa(path, on_error)
    return hotpot.pool, [_Question(q.question, (q.answer,), q.docs, ()) for q in hotpot.questions]


class RulerQA:
    """The rows of one RULER QA task at one target length (``target_tokens`` = RULER's max_seq_length)."""

    def __init__(
        self,
        task: str,
        data: str | os.PathLike,
        tokenizer: TextTokenizer,
        target_tokens: int,
        *,
        seed: int = 42,
        on_error: OnError = "raise",
    ):
        self.task, self.seed, self.target_tokens = task, int(seed), int(target_tokens)
        self.pool, self.questions = _dataset(task, data, on_error)
        if not self.questions:
            raise ValueError(f"{data} holds no answerable question for {task}")
        self._task_id = stable_id(f"ruler/{task}")
        self._tokenizer = tokenizer
        self._doc_tokens = np.full(len(self.pool), -1, np.int64)  # tokens of "{document}\n\n", filled lazily
        self._headers = np.zeros(1, np.int64)  # [k]: tokens of the headers "Document 1:\n" .. "Document k:\n"
        self._head_tokens = self._count(HEAD)

    def _count(self, text: str) -> int:
        return len(self._tokenizer.encode(text))

    # -- documents
    def sequence(self, question: int) -> np.ndarray:
        """Pool indices in the order a context of ``question`` takes them: gold, then its preferred
        distractors in random order, then the rest of the pool in random order."""
        q = self.questions[question]
        rng = np.random.default_rng([self.seed, self._task_id, question])
        own = np.asarray([*q.gold, *q.more], np.int64)
        rest = np.setdiff1d(np.arange(len(self.pool)), own)
        more = rng.permutation(np.asarray(q.more, np.int64))
        return np.concatenate([np.asarray(q.gold, np.int64), more, rng.permutation(rest)])

    def documents(self, question: int, num_docs: int) -> np.ndarray:
        """The pool indices of a context of ``num_docs`` documents, before the shuffle."""
        if num_docs >= len(self.pool):  # RULER: the whole pool, repeated as needed
            return np.resize(np.arange(len(self.pool), dtype=np.int64), num_docs)
        return self.sequence(question)[:num_docs]

    def shuffled(self, docs: np.ndarray) -> np.ndarray:
        """RULER's shuffle: one permutation per document count."""
        return docs[np.random.default_rng([self.seed, self._task_id, len(docs)]).permutation(len(docs))]

    # -- lengths
    def _fixed_tokens(self, question: int) -> int:
        tail = self._count(QUESTION.format(query=self.questions[question].query) + ANSWER_PREFIX)
        return self._head_tokens + tail + TOKENS_TO_GENERATE

    def _prefix_lengths(self, question: int, docs: np.ndarray) -> np.ndarray:
        """[n-1]: RULER's length of the context made of ``docs[:n]`` (the order does not change it)."""
        for d in np.unique(docs[self._doc_tokens[docs] < 0]):
            self._doc_tokens[d] = self._count(self.pool[d] + "\n\n")
        if len(docs) >= len(self._headers):
            more = [self._count(doc_header(k)) for k in range(len(self._headers), len(docs) + 1)]
            self._headers = np.concatenate([self._headers, self._headers[-1] + np.cumsum(more, dtype=np.int64)])
        return self._fixed_tokens(question) + np.cumsum(self._doc_tokens[docs]) + self._headers[1 : len(docs) + 1]

    def length(self, question: int, docs: np.ndarray) -> int:
        """RULER's ``length`` of a context: tokens of input and answer prefix, plus the tokens to generate."""
        return int(self._prefix_lengths(question, docs)[-1])

    def fit(self, question: int) -> tuple[np.ndarray, int]:
        """(context order, length) with the most documents whose length is at most the target."""
        gold = len(self.questions[question].gold)
        n = self._most_that_fit(question, self.sequence(question), gold)
        if n == len(self.pool):  # the whole pool fits: the repeated-pool regime
            n = self._most_that_fit(question, None, len(self.pool))
        docs = self.documents(question, n)
        return self.shuffled(docs), self.length(question, docs)

    def _most_that_fit(self, question: int, sequence: np.ndarray | None, least: int) -> int:
        """The largest n >= ``least`` whose first n documents fit (``sequence`` None: the pool repeated);
        lengths are computed over a prefix that doubles until it passes the target."""
        m = max(least, 1)
        while True:
            docs = np.resize(np.arange(len(self.pool), dtype=np.int64), m) if sequence is None else sequence[:m]
            lengths = self._prefix_lengths(question, docs)
            n = int(np.searchsorted(lengths, self.target_tokens, side="right"))
            if n < max(least, 1):
                raise TooLong(
                    f"{self.task} question {question}: its own {least} document(s) and the prompt exceed "
                    f"target_tokens={self.target_tokens}"
                )
            if n < m or (sequence is not None and m == len(sequence)):
                return n
            m = 2 * m if sequence is None else min(2 * m, len(sequence))

    # -- rows
    def row(self, question: int) -> dict[str, Any]:
        """RULER's row for ``question``; ``input`` is an iterator of text pieces (see writers.write_json_line)."""
        if not 0 <= question < len(self.questions):
            raise IndexError(f"question {question} out of range [0, {len(self.questions)}) of {self.task}")
        order, length = self.fit(question)
        q = self.questions[question]
        return {
            "index": question,
            "input": self._input(order, q.query),
            "outputs": list(q.outputs),
            "length": length,
            "length_w_model_temp": length,
            "answer_prefix": ANSWER_PREFIX,
        }

    def _input(self, order: np.ndarray, query: str) -> Iterator[str]:
        yield HEAD
        yield from numbered_pieces(self.pool, order)
        yield "\n\n" + QUESTION.format(query=query)


def _rows(qa: RulerQA, offset: int, num_samples: int, too_long: list[int]) -> Iterator[dict[str, Any]]:
    """Up to ``num_samples`` rows from question ``offset`` on; appends to ``too_long`` the questions skipped
    because their own documents exceed the target."""
    made = 0
    for q in range(offset, len(qa.questions)):
        if made == num_samples:
            return
        try:
            row = qa.row(q)
        except TooLong as err:
            too_long.append(q)
            log.warning("skipping %s", err)
            continue
        made += 1
        yield row


def write_ruler_qa(
    task: str,
    data: str | os.PathLike,
    tokenizer: TextTokenizer,
    target_tokens: Sequence[int],
    out_dir: str | os.PathLike,
    *,
    num_samples: int = 500,
    offset: int = 0,
    seed: int = 42,
    on_error: OnError = "raise",
) -> list[dict[str, Any]]:
    """Write ``{task}_{target}.jsonl`` in ``out_dir`` for each target length: ``num_samples`` rows from
    question ``offset`` on (fewer if the dataset runs out). Returns, per file, its path, its rows and
    the questions skipped because their own documents exceed the target."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for target in target_tokens:
        qa = RulerQA(task, data, tokenizer, target, seed=seed, on_error=on_error)
        too_long: list[int] = []
        path = out / f"{task}_{target}.jsonl"
        n = write_jsonl_rows(_rows(qa, offset, num_samples, too_long), path)
        written.append({"path": str(path), "rows": n, "skipped_too_long": too_long})
    return written


PROG = "python -m memagent_jax.data.ruler_qa"
DESCRIPTION = (
    "Write RULER's QA task (qa_1: SQuAD, qa_2: HotpotQA) in RULER's JSONL format to OUT_DIR/{task}_{target}.jsonl "
    "for each target length: one row per question {index, input, outputs, length, length_w_model_temp, "
    "answer_prefix}, gold documents plus distractors up to the target in tokens of --tokenizer. Prints one line "
    "per file: path, rows, questions skipped as too long. (Also installed as memagent-build-ruler-qa.)")


def _define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_enum("task", None, sorted(DATASETS), "RULER's QA task", flag_values=flag_values)
    flags.DEFINE_string("data", None, "squad.json for qa_1, hotpotqa.json for qa_2 (scripts/fetch_eval_data.sh)",
                        flag_values=flag_values)
    flags.DEFINE_string("tokenizer", None, "tokenizer folder or .model file (lengths in its tokens)",
                        flag_values=flag_values)
    flags.DEFINE_string("target_tokens", None, "comma-separated lengths (RULER's max_seq_length)",
                        flag_values=flag_values)
    flags.DEFINE_string("out_dir", None, "folder of the {task}_{target}.jsonl files", flag_values=flag_values)
    flags.DEFINE_integer("num_samples", 500, "questions per file", flag_values=flag_values)
    flags.DEFINE_integer("offset", 0, "first question (for disjoint splits)", flag_values=flag_values)
    flags.DEFINE_integer("seed", 42, "distractor draw and order", flag_values=flag_values)
    flags.DEFINE_enum("on_error", "raise", ["raise", "skip"], "malformed questions: stop, or skip and count",
                      flag_values=flag_values)
    flags.mark_flags_as_required(["task", "data", "tokenizer", "target_tokens", "out_dir"], flag_values=flag_values)


def main(argv: Sequence[str] | None = None) -> None:
    """The command line (`argv`: the arguments after the program name; default sys.argv's)."""
    args = parse_command(sys.argv[1:] if argv is None else argv, _define_flags, prog=PROG, doc=DESCRIPTION)
    with one_line_errors(PROG):
        from memagent_jax.tokenizer import load_tokenizer

        targets = [int(x) for x in args.target_tokens.split(",") if x]
        files = write_ruler_qa(
            args.task, args.data, load_tokenizer(args.tokenizer), targets, args.out_dir,
            num_samples=args.num_samples, offset=args.offset, seed=args.seed, on_error=args.on_error,
        )
    for f in files:
        print(json.dumps(f))


if __name__ == "__main__":
    main()
