"""Retrieval warm-up data: a short document, its question, then its evidence lines (the only loss)."""

import dataclasses

import pytest

from memagent_jax.agent.prompts import AgentPrompts
from memagent_jax.data.mixture import MixtureSource
from memagent_jax.data.pipeline import make_pipeline
from memagent_jax.data.synthetic import SyntheticSource
from memagent_jax.data.tasks import make_task
from memagent_jax.rl.retrieval_warmup import retrieval_batch, retrieval_sequence
from memagent_jax.rl.sft import end_of_turn_id
from memagent_jax.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(sp_tokenizer_dir):
    return load_tokenizer(sp_tokenizer_dir)


def _samples(tokenizer, task, length, count=4):
    source = SyntheticSource(make_task(task, tokenizer, length, seed=5), 64)
    batches = make_pipeline(MixtureSource([source]), count, tokenizer=tokenizer, chunk_tokens=32, seed=5, num_epochs=1)
    return next(iter(batches))


@pytest.mark.parametrize("task", ["niah_single", "vt"])
def test_sequence_is_document_question_then_evidence_notes(tokenizer, task):
    end = end_of_turn_id(tokenizer)
    newline = tokenizer.encode("\n")
    for item in _samples(tokenizer, task, 96):
        seq = retrieval_sequence(item, tokenizer, end, row_len=512)
        tokens = list(seq.tokens)
        document = [int(t) for chunk in item.iter_chunks(tokenizer) for t in chunk]
        assert len(document) > 32  # several chunks, joined back in order
        question = [int(t) for t in item.question_ids]
        assert tokens[:seq.prompt_len] == document + newline + question + newline
        assert tokens[-1] == end
        target = tokenizer.decode(tokens[seq.prompt_len:-1])
        # The evidence notes (a needle's value, an assigned name), joined as the answer joins them.
        assert target == item.sample.reward_answer
        assert all(note in tokenizer.decode(document) for note in target.split(", "))
        assert item.sample.reward_answer.split(",")[0].strip() in tokenizer.decode(tokens[seq.prompt_len:])


@pytest.mark.parametrize("task", ["niah_single", "vt"])
def test_boxed_answer_follows_the_evidence_lines_when_asked(tokenizer, task):
    end = end_of_turn_id(tokenizer)
    for item in _samples(tokenizer, task, 96):
        plain = retrieval_sequence(item, tokenizer, end, row_len=512)
        boxed = retrieval_sequence(item, tokenizer, end, row_len=512, boxed_answer=True)
        assert boxed.prompt_len == plain.prompt_len
        assert list(boxed.tokens[:boxed.prompt_len]) == list(plain.tokens[:plain.prompt_len])
        lines = tokenizer.decode(boxed.tokens[boxed.prompt_len:-1]).split("\n")
        assert lines[:-1] == tokenizer.decode(plain.tokens[plain.prompt_len:-1]).split("\n")
        assert lines[-1] == "\\boxed{" + item.sample.reward_answer + "}" and boxed.tokens[-1] == end


def test_question_first_puts_the_question_before_the_document_and_keeps_the_target(tokenizer):
    end = end_of_turn_id(tokenizer)
    newline = tokenizer.encode("\n")
    items = _samples(tokenizer, "niah_multikey", 96)
    for item in items:
        plain = retrieval_sequence(item, tokenizer, end, row_len=512, boxed_answer=True)
        first = retrieval_sequence(item, tokenizer, end, row_len=512, boxed_answer=True, question_first=True)
        document = [int(t) for chunk in item.iter_chunks(tokenizer) for t in chunk]
        question = [int(t) for t in item.question_ids]
        assert list(first.tokens[:first.prompt_len]) == question + newline + document + newline
        assert list(first.tokens[first.prompt_len:]) == list(plain.tokens[plain.prompt_len:])
    batch = retrieval_batch(items, tokenizer, end, 512, boxed_answer=True, question_first=True)
    assert [list(seq.tokens[:len(item.question_ids)]) for seq, item in zip(batch, items, strict=True)] == [
        [int(t) for t in item.question_ids] for item in items]


def test_too_long_for_the_row_and_no_evidence_are_errors(tokenizer):
    end = end_of_turn_id(tokenizer)
    items = _samples(tokenizer, "niah_single", 96)
    longest = max(len(retrieval_sequence(item, tokenizer, end, 512).tokens) for item in items)
    assert len(retrieval_batch(items, tokenizer, end, row_len=longest - 1)) == len(items)  # inputs = tokens - 1
    with pytest.raises(ValueError, match="config.retrieval.row_len"):
        retrieval_batch(items, tokenizer, end, row_len=longest - 2)
    item = items[0]
    bare = dataclasses.replace(item, sample=dataclasses.replace(
        item.sample, document=_NoSpans(item.sample.document)))
    with pytest.raises(ValueError, match="no evidence spans"):
        retrieval_sequence(bare, tokenizer, end, 512)


class _NoSpans:
    """A document whose evidence was not marked (as a plain text file's)."""

    def __init__(self, document):
        self._document = document
        self.spans = ()

    def __getattr__(self, name):
        return getattr(self._document, name)


@pytest.mark.parametrize("task", ["niah_single", "vt"])
def test_answer_prompt_holds_question_and_document_then_the_boxed_target(tokenizer, task):
    """In the agent's final-answer prompt: the question in its problem slot, the document where the memory goes;
    the target is the boxed answer alone. No memory-update prompt anywhere."""
    end = end_of_turn_id(tokenizer)
    prompts = AgentPrompts.build(tokenizer)
    for item in _samples(tokenizer, task, 96):
        plain = retrieval_sequence(item, tokenizer, end, row_len=512, boxed_answer=True)
        answer = retrieval_sequence(item, tokenizer, end, row_len=512, answer_prompt=prompts.final_answer)
        document = [int(t) for chunk in item.iter_chunks(tokenizer) for t in chunk]
        question = [int(t) for t in item.question_ids]
        assert list(answer.tokens[:answer.prompt_len]) == prompts.final_answer.assemble(
            {"prompt": question, "memory": document})
        # The boxed answer alone (the box the plain target ends with), even without boxed_answer.
        boxed_line = tokenizer.decode(plain.tokens[plain.prompt_len:-1]).split("\n")[-1]
        assert tokenizer.decode(answer.tokens[answer.prompt_len:-1]) == boxed_line
        assert boxed_line == "\\boxed{" + item.sample.reward_answer + "}" and answer.tokens[-1] == end
        update_head = prompts.memory_update.pieces[0]
        assert list(answer.tokens[:len(update_head)]) != list(update_head)


def test_answer_prompt_fraction_renders_that_share_of_the_batch(tokenizer):
    end = end_of_turn_id(tokenizer)
    prompts = AgentPrompts.build(tokenizer)
    items = _samples(tokenizer, "niah_single", 96)
    head = list(prompts.final_answer.pieces[0])
    for fraction, expected in ((0.0, 0), (0.5, 2), (1.0, 4)):
        batch = retrieval_batch(items, tokenizer, end, 512, True, prompts.final_answer, fraction)
        in_prompt = [list(seq.tokens[:len(head)]) == head for seq in batch]
        assert sum(in_prompt) == expected and in_prompt == [True] * expected + [False] * (4 - expected)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        retrieval_batch(items, tokenizer, end, 512, True, prompts.final_answer, 1.5)
    with pytest.raises(ValueError, match="needs an answer_prompt"):
        retrieval_batch(items, tokenizer, end, 512, True, None, 0.5)
