"""MemAgent's HotpotQA training set: each question's own paragraphs padded with distractors, as Parquet.

    python -m memagent_jax.data.hotpotqa_train --hotpotqa "$(scripts/fetch_hotpotqa.sh)" --out train.parquet

Each row is one question of ``--hotpotqa`` (the dev file by default; any HotpotQA-format file, e.g. the
train split, is read the same way) with its own paragraphs plus distractors drawn from that file's pool
up to ``--num_docs`` documents (200: about 28K tokens), shuffled per question, written ``Document
{k}:\\n{title}\\n{text}`` and joined by blank lines (the RULER-HQA construction of hotpotqa.py, with
its own RNG stream). The first ``--eval_questions`` questions of ``--eval_hotpotqa`` are held out
(heldout.py): they, every question holding one of their gold paragraphs, and those paragraphs as
padding are left out, and the file's metadata says what was excluded and why.

Row schema (``train_schema``): MemAgent's training columns -- data_source, prompt [{role, content}],
context, reward_model {style "rule", ground_truth [answer]}, extra_info {index (the question's index in
the file), question, num_docs} -- plus, in extra_info, answers and answer_mode (as the project's other
writers), the HotpotQA id, type and level, and supporting_facts [{title, sentence, text, document}]:
the evidence sentences and the 1-based document that holds each, from which SFT builds oracle memories
(text or document is null where the source file's fact names a sentence or title its context lacks).

Deterministic in ``--seed``: the same inputs and seed give a byte-identical file. Rows are generated
and written one row group at a time (bounded memory) under a temporary name renamed when complete.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from absl import flags

from memagent_jax.command_line import parse_command
from memagent_jax.data.document import Sample
from memagent_jax.data.errors import OnError, one_line_errors
from memagent_jax.data.heldout import HeldOut
from memagent_jax.data.hotpotqa import HotpotQA, PoolDocument, Question, context_order, gold_spans, load_hotpotqa
from memagent_jax.data.records import to_memagent_train
from memagent_jax.data.synthetic import stable_id
from memagent_jax.data.writers import write_parquet_rows

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["SPLIT_METADATA_KEY", "build_training_set", "read_split", "train_schema"]

SPLIT_METADATA_KEY = b"memagent_split"  # Parquet key-value metadata: what was built and held out


def train_schema(split: dict[str, Any] | None = None) -> pa.Schema:
    """The exact Arrow schema of the rows (with the split description as metadata when given)."""
    import pyarrow as pa

    strings = pa.list_(pa.string())
    fact = pa.struct(
        [("title", pa.string()), ("sentence", pa.int64()), ("text", pa.string()), ("document", pa.int64())]
    )
    extra = pa.struct(
        [
            ("index", pa.int64()),
            ("question", pa.string()),
            ("num_docs", pa.int64()),
            ("answers", strings),
            ("answer_mode", pa.string()),
            ("id", pa.string()),
            ("type", pa.string()),
            ("level", pa.string()),
            ("supporting_facts", pa.list_(fact)),
        ]
    )
    schema = pa.schema(
        [
            ("data_source", pa.string()),
            ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
            ("context", pa.string()),
            ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", strings)])),
            ("extra_info", extra),
        ]
    )
    if split is not None:
        schema = schema.with_metadata({SPLIT_METADATA_KEY: json.dumps(split, sort_keys=True).encode()})
    return schema


def read_split(path: str | os.PathLike) -> dict[str, Any]:
    """The split description stored in a training file written by this module."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    if SPLIT_METADATA_KEY not in metadata:
        raise ValueError(f"{path} has no {SPLIT_METADATA_KEY.decode()} metadata: not written by hotpotqa_train")
    return json.loads(metadata[SPLIT_METADATA_KEY])


def _select(data: HotpotQA, heldout: HeldOut, num_samples: int | None, seed: int) -> tuple[list[int], dict[str, int]]:
    """Indices of the questions to train on (file order) and the count excluded per reason."""
    excluded: collections.Counter[str] = collections.Counter()
    kept = []
    for qi, q in enumerate(data.questions):
        reason = heldout.reason_to_exclude(q, data.pool)
        if reason is None:
            kept.append(qi)
        else:
            excluded[reason] += 1
    if num_samples is not None:
        if not 0 < num_samples <= len(kept):
            raise ValueError(
                f"asked for {num_samples} samples but {len(kept)} questions remain after holding out "
                f"{dict(excluded)} (of {len(data.questions)})"
            )
        # A seeded subset, kept in file order: shuffling is the training pipeline's job.
        rng = np.random.default_rng([seed, stable_id("hotpotqa_train/select")])
        kept = [kept[i] for i in np.sort(rng.choice(len(kept), num_samples, replace=False))]
    return kept, dict(excluded)


def _facts(q: Question, documents: dict[str, int]) -> list[dict[str, Any]]:
    return [{"title": t, "sentence": s, "text": text, "document": documents.get(t)} for t, s, text in q.evidence]


def _rows(
    data: HotpotQA, questions: Sequence[int], padding_excluded: Sequence[int], num_docs: int, seed: int,
    data_source: str, on_error: str,
) -> Iterator[dict[str, Any]]:
    stream = stable_id("hotpotqa_train")
    for position, qi in enumerate(questions):
        q = data.questions[qi]
        rng = np.random.default_rng([seed, stream, num_docs, qi])
        order = context_order(len(data.pool), q, num_docs, rng, exclude=padding_excluded)
        spans = gold_spans(data.pool, order, q.supporting)
        document = PoolDocument(str(data.path), on_error, order, spans, tokens=0)
        meta = {"index": qi, "num_docs": num_docs}
        sample = Sample(position, data_source, q.question, (q.answer,), document, "any", meta)
        row = to_memagent_train(sample, data_source)
        row["extra_info"].update(
            id=q.id, type=q.type, level=q.level, supporting_facts=_facts(q, {s.text: s.piece + 1 for s in spans})
        )
        yield row


def build_training_set(
    hotpotqa: str | os.PathLike,
    out: str | os.PathLike,
    *,
    eval_hotpotqa: str | os.PathLike | None = None,
    eval_questions: int = 128,
    num_docs: int = 200,
    num_samples: int | None = None,
    seed: int = 42,
    data_source: str = "hotpotqa",
    row_group_rows: int = 64,
    on_error: OnError = "raise",
) -> dict[str, Any]:
    """Write the training Parquet file ``out``; returns the split description stored in its metadata."""
    if pathlib.Path(out).suffix != ".parquet":
        raise ValueError(f"the training file must end in .parquet, got {out}")
    data = load_hotpotqa(hotpotqa, on_error)
    heldout = HeldOut.first_questions(hotpotqa if eval_hotpotqa is None else eval_hotpotqa, eval_questions, on_error)
    padding_excluded = heldout.pool_indices(data.pool)
    if not 0 < num_docs <= len(data.pool) - len(padding_excluded):
        raise ValueError(
            f"num_docs must be in [1, {len(data.pool) - len(padding_excluded)}] (the pool of {data.path.name} "
            f"less the held-out gold paragraphs), got {num_docs}"
        )
    questions, excluded = _select(data, heldout, num_samples, seed)
    missing = sum(text is None for qi in questions for _, _, text in data.questions[qi].evidence)
    split = {
        "train_file": str(data.path),
        "questions_in_file": len(data.questions),
        "skipped_malformed": data.skip_log.total,
        "excluded": excluded,
        "rows": len(questions),
        "num_docs": num_docs,
        "seed": seed,
        "padding_paragraphs_held_out": len(padding_excluded),
        "supporting_facts_without_sentence": missing,
        **heldout.describe(),
    }
    rows = _rows(data, questions, padding_excluded, num_docs, seed, data_source, on_error)
    write_parquet_rows(rows, out, schema=train_schema(split), row_group_rows=row_group_rows)
    return split


PROG = "python -m memagent_jax.data.hotpotqa_train"
DESCRIPTION = (
    "Write MemAgent's HotpotQA training set (Parquet: data_source, prompt, context, reward_model, extra_info with "
    "the supporting facts) to --out: each question's own paragraphs plus distractors up to --num_docs documents, "
    "the first --eval_questions evaluation questions and their gold paragraphs held out (recorded in the file's "
    "metadata). Prints that record. (Also installed as memagent-build-hotpotqa-train.)")


def _define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_string("hotpotqa", None, "HotpotQA-format JSON to train on (scripts/fetch_hotpotqa.sh, or your own)",
                        flag_values=flag_values)
    flags.DEFINE_string("out", None, "output .parquet (written atomically)", flag_values=flag_values)
    flags.DEFINE_string("eval_hotpotqa", None, "HotpotQA file of the evaluation questions (default: --hotpotqa)",
                        flag_values=flag_values)
    flags.DEFINE_integer("eval_questions", 128, "first N questions held out (RULER-HQA: 128)", flag_values=flag_values)
    flags.DEFINE_integer("num_docs", 200, "documents per context (200: ~28K tokens)", flag_values=flag_values)
    flags.DEFINE_integer("num_samples", None, "a seeded subset of this many questions (default: all)",
                         flag_values=flag_values)
    flags.DEFINE_integer("seed", 42, "subset, distractor draw and order", flag_values=flag_values)
    flags.DEFINE_string("data_source", "hotpotqa", "the rows' data_source", flag_values=flag_values)
    flags.DEFINE_enum("on_error", "raise", ["raise", "skip"], "malformed questions: stop, or skip and count",
                      flag_values=flag_values)
    flags.mark_flags_as_required(["hotpotqa", "out"], flag_values=flag_values)


def main(argv: Sequence[str] | None = None) -> None:
    """The command line (`argv`: the arguments after the program name; default sys.argv's)."""
    args = parse_command(sys.argv[1:] if argv is None else argv, _define_flags, prog=PROG, doc=DESCRIPTION)
    with one_line_errors(PROG):
        split = build_training_set(
            args.hotpotqa, args.out, eval_hotpotqa=args.eval_hotpotqa, eval_questions=args.eval_questions,
            num_docs=args.num_docs, num_samples=args.num_samples, seed=args.seed, data_source=args.data_source,
            on_error=args.on_error,
        )
    print(json.dumps({k: v for k, v in split.items() if k != "eval_ids"}, indent=1))


if __name__ == "__main__":
    main()
