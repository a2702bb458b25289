"""RULER rows as RULER's own generator writes them (tests/fixtures/ruler, made by scripts/make_ruler_samples.sh):
question, answers and the document boundary of each task, its chat-template variants, and what is refused."""

from __future__ import annotations

import json
import pathlib

import pytest

from memagent_jax.data.records import RULER_MODEL_TEMPLATES, BadRecord, parse_record

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "ruler"
BASE = FIXTURES / "base" / "1024"
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"


def _rows(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _row(task: str, i: int = 0, root: pathlib.Path = BASE) -> dict:
    return _rows(root / task / "validation.jsonl")[i]


def test_niah_question_is_the_last_line_and_the_instruction_stays_in_the_document() -> None:
    row = _row("niah_single_1")
    sample = parse_record(row, 0)
    assert sample.question == "What is the special magic number for diligent-joke mentioned in the provided text?"
    assert sample.answers == ("8090293",) and sample.answer_mode == "all"
    context = sample.document.text()
    assert context.startswith("A special magic number is hidden within the following text. Make sure to memorize "
                              "it. I will quiz you about the number afterwards.\n" + NOISE)
    assert context.endswith(NOISE) and context + sample.question == row["input"]
    assert "One of the special magic numbers for diligent-joke is: 8090293.\n" in context
    assert sample.meta == {"format": "ruler", "index": 0, "length": 1022}


def test_niah_index_is_the_row_position_not_rulers_answer_offset() -> None:
    # RULER's niah.py writes the answer's character offset as `index`; the second row must be 1, not 594.
    row = _row("niah_multikey_2", 1)
    assert row["index"] == row["input"].find(row["outputs"][0]) == 594
    sample = parse_record(row, 1)
    assert sample.meta["index"] == 1
    assert sample.question == "What is the special magic number for kaput-eyeliner mentioned in the provided text?"
    assert sample.answers == ("9546409",)


def test_multiquery_and_multivalue_questions_and_all_their_answers() -> None:
    query = parse_record(_row("niah_multiquery"), 0)
    assert query.question == ("What are all the special magic numbers for mammoth-floozie, deafening-radish, "
                              "fair-yogurt, and silky-mapping mentioned in the provided text?")
    assert query.answers == ("8698256", "5443951", "9375710", "6279418")
    assert query.document.text().startswith("Some special magic numbers are hidden within the following text.")
    value = parse_record(_row("niah_multivalue", 1), 1)
    assert value.question == "What are all the special magic numbers for knowledgeable-hometown mentioned in the " \
                             "provided text?"
    assert value.answers == ("4514944", "5479144", "2197935", "3871230")
    # Every answer is in the document (a needle), so the whole set is findable.
    assert all(f"knowledgeable-hometown is: {a}." in value.document.text() for a in value.answers)


def test_vt_one_shot_example_stays_in_the_document() -> None:
    row = _row("vt")
    sample = parse_record(row, 0)
    assert sample.question == "Find all variables that are assigned the value 47194 in the text above."
    assert sample.answers == ("PDDIX", "UWXFG", "CUWKQ", "EYWZV", "WATIY")
    context = sample.document.text()
    assert context + "Question: " + sample.question == row["input"]
    # The one-shot example comes first, with its own question and answer; then the real task's instruction.
    example = ("Question: Find all variables that are assigned the value 97498 in the text above. Answer: According "
               "to the chain(s) of variable assignment in the text above, 5 variables are assigned the value 97498, "
               "they are:  UCW WFV LHU FAF IWZ\n\nMemorize and track the chain(s) of variable assignment hidden in "
               "the following text.\n\n" + NOISE)
    assert context.startswith("Memorize and track the chain(s) of variable assignment hidden in the following "
                              "text.\n\nVAR UCW = 97498\n")
    assert example in context and context.count("Memorize and track") == 2


@pytest.mark.parametrize("folder", sorted(p.name for p in (FIXTURES / "templates").iterdir()))
def test_rulers_chat_templates_are_unwrapped(folder: str) -> None:
    row = _row("niah_single_1", root=FIXTURES / "templates" / folder / "512")
    sample = parse_record(row, 0)
    assert sample.question == "What is the special magic number for spicy-straw mentioned in the provided text?"
    assert sample.answers == ("5667265",)
    # RULER's single-needle niah rewrites "are" to "is" in the template too ("You is a helpful assistant").
    assert sample.document.text().startswith("A special magic number is hidden within the following text.")
    assert sample.document.text().endswith(NOISE)
    assert folder in sample.meta["model_template"].split(", ")
    assert row["input"] != sample.document.text() + sample.question  # there was a wrapper to take off


@pytest.mark.parametrize("template", ["meta-llama3", "Phi3"])
def test_chat_templated_vt_and_multiquery(template: str) -> None:
    root = FIXTURES / "templates" / template / "1024"
    vt = parse_record(_row("vt", root=root), 0)
    assert vt.question == "Find all variables that are assigned the value 47194 in the text above."
    assert vt.document.text().startswith("Memorize and track the chain(s) of variable assignment hidden in the "
                                         "following text.\n\nVAR ")
    assert vt.document.text().count("Memorize and track") == 2 and vt.meta["model_template"] == template
    query = parse_record(_row("niah_multiquery", root=root), 0)
    assert query.question.startswith("What are all the special magic numbers for ")
    assert query.question.endswith(" mentioned in the provided text?") and len(query.answers) == 4
    assert all(f"is: {a}." in query.document.text() for a in query.answers)


def test_known_template_table_is_what_the_fixtures_cover() -> None:
    covered = {name for key in RULER_MODEL_TEMPLATES for name in key.split(", ")}
    assert covered == {p.name for p in (FIXTURES / "templates").iterdir()}


@pytest.mark.parametrize("wrap, message", [
    # A ChatML wrapper (not one of RULER's templates): its assistant header must not become the question.
    (lambda s: f"<|im_start|>user\n{s}<|im_end|>\n<|im_start|>assistant\n", "holds chat-template text '<|im_start|>'"),
    (lambda s: f"{s} [/INST]", "ends with meta-chat's assistant header '[/INST]' but has no user turn"),
    # RULER's --remove_newline_tab puts the whole prompt on one line: no document boundary is left.
    (lambda s: " ".join(s.split()), "is one line, no document before the question"),
])
def test_prompts_that_cannot_be_split_are_refused(wrap, message: str) -> None:
    row = _row("niah_single_1")
    with pytest.raises(BadRecord, match=None) as err:
        parse_record(dict(row, input=wrap(row["input"])), 0)
    assert message in str(err.value)
