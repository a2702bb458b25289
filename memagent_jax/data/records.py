"""Record formats: MemAgent training rows, MemAgent evaluation rows and RULER rows, to and from Sample.

MemAgent training (Parquet or JSONL)::

    {"data_source": str, "prompt": [{"role": "user", "content": question}], "context": str,
     "reward_model": {"style": "rule", "ground_truth": [answer, ...]},
     "extra_info": {"index": int, "question": str, "num_docs": int}}

(``extra_info.supporting_facts`` [{title, sentence, text, document}, ...], as the HotpotQA training builder
writes it, becomes the sample's evidence spans, meta ``evidence``: what SFT's oracle memories are made of.)

MemAgent evaluation (JSON/JSONL): ``{"context", "input" (the question), "answers": [...], "num_docs",
"index"}``. RULER (JSONL): ``{"index", "input", "outputs": [...], "length", ...}`` where ``input`` is
the whole prompt: the question is its last non-empty line (a leading ``Question:`` label is dropped)
and the document is everything before it (RULER's task instruction, and for vt its one-shot example,
stay in the document); rows that carry separate ``context`` and ``query`` (or ``question``) fields use
those instead. A prompt wrapped in one of RULER's chat templates (``--model_template_type`` other than
``base``) is unwrapped first; one whose question line still holds chat-template text is refused.

Answers: HotpotQA-style ground truths are alternatives (answer_mode "any"); RULER's outputs must all
be found (string_match_all, answer_mode "all"; pass "any" for RULER's QA tasks). Rows we write add
``extra_info.answers`` and ``extra_info.answer_mode`` (training) or ``answer_mode`` (evaluation) so
they read back exactly; for "all" samples ``ground_truth`` is the answers comma-joined (``Sample.ground_truth``),
one string as the reference's verifier expects, while our reward takes them in any order (verify.answer_reward).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from memagent_jax.data.document import AnswerMode, Sample, TextDocument

__all__ = ["FORMATS", "RULER_MODEL_TEMPLATES", "BadRecord", "detect_format", "parse_record", "to_memagent_eval",
           "to_memagent_train"]

FORMATS = ("memagent_train", "memagent_eval", "ruler")


class BadRecord(ValueError):
    """A record's content is wrong; readers add the file and line."""


def detect_format(record: Mapping[str, Any]) -> str:
    if "reward_model" in record or "prompt" in record:
        return "memagent_train"
    if "answers" in record and "input" in record:
        return "memagent_eval"
    if "outputs" in record and "input" in record:
        return "ruler"
    raise BadRecord(f"unrecognised record: keys {sorted(record)[:8]} match no format of {FORMATS}")


def _field(record: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in record:
        raise BadRecord(f"missing field {name!r}")
    value = record[name]
    if not isinstance(value, kind):
        raise BadRecord(f"field {name!r} should be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def _answers(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise BadRecord(f"field {name!r} should be a non-empty list of strings, got {value!r:.80}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise BadRecord(f"field {name!r} holds a {type(v).__name__}, expected strings")
        if not str(v).strip():
            raise BadRecord(f"empty answer in field {name!r}")
        out.append(str(v))
    return tuple(out)


def _int_or(value: Any, default: int | None) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else default


def parse_record(
    record: Any, position: int, fmt: str = "auto", task: str | None = None, ruler_answer_mode: AnswerMode = "all"
) -> Sample:
    """The Sample of one row; ``position`` is its index among the source's valid rows."""
    if not isinstance(record, Mapping):
        raise BadRecord(f"expected a JSON object, got {type(record).__name__}")
    if fmt == "auto":
        fmt = detect_format(record)
    if fmt == "memagent_train":
        return _from_train(record, position, task)
    if fmt == "memagent_eval":
        return _from_eval(record, position, task)
    if fmt == "ruler":
        return _from_ruler(record, position, task, ruler_answer_mode)
    raise ValueError(f"unknown format {fmt!r}; expected 'auto' or one of {FORMATS}")


def _context(record: Mapping[str, Any]) -> str:
    context = _field(record, "context", str)
    if not context.strip():
        raise BadRecord("empty context")
    return context


def _from_train(record: Mapping[str, Any], position: int, task: str | None) -> Sample:
    context = _context(record)
    extra = record.get("extra_info") or {}
    if not isinstance(extra, Mapping):
        raise BadRecord("field 'extra_info' should be an object")
    prompt = record.get("prompt")
    if prompt is not None:
        if not isinstance(prompt, (list, tuple)) or not prompt:
            raise BadRecord("field 'prompt' should be a non-empty list of messages")
        users = [m for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
        if not users or not isinstance(users[-1].get("content"), str):
            raise BadRecord("field 'prompt' has no user message with string content")
        question = users[-1]["content"]
        if not question.strip():
            raise BadRecord("empty question in field 'prompt'")
    elif isinstance(extra.get("question"), str):
        question = extra["question"]
    else:
        raise BadRecord("missing field 'prompt' (and no extra_info.question)")
    reward = _field(record, "reward_model", Mapping)
    if "ground_truth" not in reward:
        raise BadRecord("missing field 'reward_model.ground_truth'")
    answers = _answers(reward["ground_truth"], "reward_model.ground_truth")
    mode = extra.get("answer_mode", "any")
    if mode not in ("all", "any"):
        raise BadRecord(f"extra_info.answer_mode should be 'all' or 'any', got {mode!r}")
    if mode == "all":
        answers = _answers(extra.get("answers"), "extra_info.answers")
    meta = {"format": "memagent_train", "index": _int_or(extra.get("index"), position)}
    if (n := _int_or(extra.get("num_docs"), None)) is not None:
        meta["num_docs"] = n
    source = record.get("data_source")
    name = task or (source if isinstance(source, str) and source else "memagent")
    evidence = _evidence(extra.get("supporting_facts"))
    if evidence:
        # The supporting sentences are the oracle memory SFT writes (those found in the context).
        document = TextDocument.with_spans_of(context, evidence)
        if document.spans:
            meta["evidence"] = "supporting_facts"
            return Sample(position, name, question, answers, document, mode, meta)
    return Sample(position, name, question, answers, TextDocument.with_answers(context, answers), mode, meta)


def _evidence(facts: Any) -> list[str]:
    """The sentence texts of extra_info.supporting_facts ([{title, sentence, text, document}, ...], as the
    HotpotQA training builder writes them); facts without a text are left out."""
    if facts is None:
        return []
    if not isinstance(facts, (list, tuple)) or not all(isinstance(f, Mapping) for f in facts):
        raise BadRecord("extra_info.supporting_facts should be a list of objects")
    return [f["text"] for f in facts if isinstance(f.get("text"), str) and f["text"].strip()]


def _from_eval(record: Mapping[str, Any], position: int, task: str | None) -> Sample:
    context = _context(record)
    question = _field(record, "input", str)
    if not question.strip():
        raise BadRecord("empty field 'input'")
    answers = _answers(record.get("answers"), "answers")
    meta = {"format": "memagent_eval", "index": _int_or(record.get("index"), position)}
    if (n := _int_or(record.get("num_docs"), None)) is not None:
        meta["num_docs"] = n
    mode = record.get("answer_mode", "any")
    if mode not in ("all", "any"):
        raise BadRecord(f"field 'answer_mode' should be 'all' or 'any', got {mode!r}")
    doc = TextDocument.with_answers(context, answers)
    return Sample(position, task or "memagent_eval", question, answers, doc, mode, meta)


# The chat turns of RULER's model templates (its scripts/data/template.py): (user label, assistant header)
# around the task prompt. RULER cuts its answer prefix off after the assistant header, so `input` ends with
# it, and it would otherwise be read as the question; the template's head ends with the user label. Only
# the two labels are matched: RULER's single-needle niah rewrites words of the whole template ("are" to
# "is"), head included.
RULER_MODEL_TEMPLATES: dict[str, tuple[str, str]] = {
    "meta-chat": ("[INST]", "[/INST]"),
    "vicuna-chat, lwm-chat": ("USER:", "ASSISTANT:"),
    "command-r-chat": ("<|USER_TOKEN|>", "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"),
    "chatglm-chat": ("<|user|>", "<|assistant|>"),
    "RWKV": ("\n\nUser:", "\n\nAssistant:"),
    "Phi3": ("<|user|>", "<|end|>\n<|assistant|>"),
    "meta-llama3": ("user<|end_header_id|>", "<|eot_id|><|start_header_id|>assistant<|end_header_id|>"),
    "jamba": ("<|user|>", "<|eom|><|bom|><|assistant|>"),
    "nemotron5-instruct": ("<SPECIAL_11>User", "<SPECIAL_11>Assistant"),
}
# Chat-template text left on a question line by a template not in the table: special-token markup, or a
# line ending in an assistant turn's label.
_TEMPLATE_TEXT = re.compile(r"<\|[\w.-]+\|>|\[/?INST\]|<SPECIAL_\d+>|<BOS_TOKEN>|</?s>|\bassistant\s*:?\s*$",
                            re.IGNORECASE)


def _unwrap_ruler(prompt: str) -> tuple[str, str | None]:
    """The task prompt inside one of RULER's model templates, and that template's name (None: no wrapper)."""
    text = prompt.rstrip()
    # Longest header first: chatglm's "<|assistant|>" also ends Phi3's and jamba's.
    for name, (user, assistant) in sorted(RULER_MODEL_TEMPLATES.items(), key=lambda item: -len(item[1][1])):
        if text.endswith(assistant):
            head = text.find(user)  # the first one: the head is at the start and ends with the user label
            if head < 0 or head + len(user) > len(text) - len(assistant):
                raise BadRecord(f"field 'input' ends with {name}'s assistant header {assistant!r} but has no "
                                f"user turn ({user!r}) before it")
            return text[head + len(user) : len(text) - len(assistant)].strip(), name
    return text.strip(), None


def _split_ruler_prompt(prompt: str) -> tuple[str, str, str | None]:
    """(context, question, model template) of RULER's whole prompt: the question is its last line."""
    text, template = _unwrap_ruler(prompt)
    cut = text.rfind("\n")
    if cut < 0:
        raise BadRecord("field 'input' is one line, no document before the question (made with RULER's "
                        "--remove_newline_tab?)")
    context, question = text[: cut + 1], text[cut + 1 :].strip()
    if (mark := _TEMPLATE_TEXT.search(question)) is not None:
        raise BadRecord(f"the question line {question[-120:]!r} holds chat-template text {mark.group()!r}: the "
                        f"prompt is wrapped in a model template this reader does not know (it unwraps RULER's "
                        f"{', '.join(RULER_MODEL_TEMPLATES)}); make the rows with --model_template_type base")
    question = question.removeprefix("Question:").strip()
    if not question:
        raise BadRecord("field 'input' has no question line")
    return context, question, template


def _from_ruler(record: Mapping[str, Any], position: int, task: str | None, mode: AnswerMode) -> Sample:
    answers = _answers(record.get("outputs"), "outputs")
    query = record.get("query", record.get("question"))
    template = None
    if isinstance(record.get("context"), str) and isinstance(query, str):
        context, question = _context(record), query
        if not question.strip():
            raise BadRecord(f"empty field {'query' if 'query' in record else 'question'!r}")
    else:
        context, question, template = _split_ruler_prompt(_field(record, "input", str))
    # RULER's niah.py reuses its row counter for the answer's character offset before writing `index` (its
    # rows are those with `token_position_answer`), so the row's position is the index there.
    index = position if "token_position_answer" in record else _int_or(record.get("index"), position)
    meta: dict[str, Any] = {"format": "ruler", "index": index}
    if (n := _int_or(record.get("length"), None)) is not None:
        meta["length"] = n
    if template is not None:
        meta["model_template"] = template
    return Sample(position, task or "ruler", question, answers, TextDocument.with_answers(context, answers), mode, meta)


def _extra(sample: Sample) -> dict[str, Any]:
    extra: dict[str, Any] = {"index": int(sample.meta.get("index", sample.index)), "question": sample.question}
    extra["num_docs"] = int(sample.meta.get("num_docs", 0))
    # Always present (not only for "all"), so every row of a Parquet file has one schema.
    extra["answers"] = list(sample.answers)
    extra["answer_mode"] = sample.answer_mode
    return extra


def to_memagent_train(sample: Sample, data_source: str | None = None, context: str | None = None) -> dict[str, Any]:
    """A MemAgent training row (materialises the context unless ``context`` is given)."""
    return {
        "data_source": data_source or sample.task,
        "prompt": [{"role": "user", "content": sample.question}],
        "context": sample.document.text() if context is None else context,
        "reward_model": {"style": "rule", "ground_truth": sample.ground_truth},
        "extra_info": _extra(sample),
    }


def to_memagent_eval(sample: Sample, context: str | None = None) -> dict[str, Any]:
    """A MemAgent evaluation row plus ``answer_mode`` (how ``answers`` combine)."""
    row = {
        "context": sample.document.text() if context is None else context,
        "input": sample.question,
        "answers": list(sample.answers),
        "num_docs": int(sample.meta.get("num_docs", 0)),
        "index": int(sample.meta.get("index", sample.index)),
        "answer_mode": sample.answer_mode,
    }
    return row
