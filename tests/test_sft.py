"""Oracle traces: the ideal memory after each chunk and the boxed answer, in the agent's own prompts."""

import pytest

from memagent_jax.agent.chunks import iter_rechunked
from memagent_jax.agent.memory_agent import AgentConfig
from memagent_jax.agent.prompts import AgentPrompts
from memagent_jax.data.pipeline import Tokenize
from memagent_jax.data.tasks import make_task
from memagent_jax.rl.sft import EMPTY_MEMORY, end_of_turn_id, oracle_memories, oracle_sequences
from memagent_jax.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(sp_tokenizer_dir):
    return load_tokenizer(sp_tokenizer_dir)


def test_memories_grow_as_the_evidence_is_read(tokenizer):
    lines = [f"filler line number {i}.\n" for i in range(12)]
    lines[3] = "VAR ABCDE = 12345\n"
    lines[9] = "VAR XYZWV = VAR ABCDE\n"
    tokens = tokenizer.encode("".join(lines))
    chunks = [tokens[i : i + 17] for i in range(0, len(tokens), 17)]
    memories = oracle_memories(chunks, ["VAR ABCDE = 12345", "VAR XYZWV = VAR ABCDE"], tokenizer)
    assert len(memories) == len(chunks)
    first_done = next(i for i, m in enumerate(memories) if m != EMPTY_MEMORY)
    assert memories[first_done] == "VAR ABCDE = 12345"
    assert memories[-1] == "VAR ABCDE = 12345\nVAR XYZWV = VAR ABCDE"
    # A span is counted only in the chunk where its last token arrives.
    text_before = tokenizer.decode([t for c in chunks[:first_done] for t in c])
    assert "VAR ABCDE = 12345" not in text_before


def test_memories_keep_the_notes_of_the_spans_found(tokenizer):
    tokens = tokenizer.encode("filler.\nOne of the special magic numbers for calm-river is: 4821337.\nfiller.\n")
    spans = ["One of the special magic numbers for calm-river is: 4821337."]
    assert oracle_memories([tokens[:3], tokens[3:]], spans, tokenizer, notes=["4821337"]) == [EMPTY_MEMORY, "4821337"]
    with pytest.raises(ValueError, match="1 notes for 2 spans"):
        oracle_memories([tokens], spans + ["other"], tokenizer, notes=["4821337"])


def test_a_span_cut_before_its_final_period_counts_in_the_chunk_of_its_last_word(tokenizer):
    tokens = tokenizer.encode("filler.\nThe code is 4821.\nfiller.\n")
    cut = len(tokenizer.encode("filler.\nThe code is 4821"))
    memories = oracle_memories([tokens[:cut], tokens[cut:]], ["The code is 4821."], tokenizer)
    assert memories == ["The code is 4821.", "The code is 4821."]
    memories = oracle_memories([tokens[:cut - 1], tokens[cut - 1:]], ["The code is 4821."], tokenizer)
    assert memories == [EMPTY_MEMORY, "The code is 4821."]  # the last digit is in the second chunk


@pytest.mark.parametrize("task_name, boundary", [("niah_multikey", "token"), ("vt", "token"), ("toy_code", "token"),
                                                  ("niah_single", "line"), ("vt_plain", "line")])
def test_oracle_sequences_use_the_agent_prompts_and_end_the_turn(tokenizer, task_name, boundary):
    # vt_plain in line mode: lines of RULER's worked example are longer than these 64-token chunks.
    agent = AgentConfig(chunk_size=64, max_memory_tokens=96, max_answer_tokens=48, max_question_tokens=64,
                        chunk_boundary=boundary)
    prompts = AgentPrompts.build(tokenizer)
    item = Tokenize(tokenizer, agent.chunk_size, 10_000).map(make_task(task_name, tokenizer, 300).sample(3))
    sequences = oracle_sequences(item, tokenizer, prompts, agent)
    # The chunks the agent reads (its ChunkCache re-cuts the pipeline's chunks under the same policy).
    chunks = list(iter_rechunked((list(c) for c in item.iter_chunks(tokenizer)), 64, agent.line_ends(tokenizer)))
    if boundary == "line":
        assert all(tokenizer.decode(c).endswith("\n") for c in chunks[:-1])
        assert len(chunks) > len(list(item.iter_chunks(tokenizer)))
    assert len(sequences) == len(chunks) + 1
    end = end_of_turn_id(tokenizer)
    memory = list(prompts.initial_memory)
    for seq, chunk in zip(sequences, chunks):
        prompt = prompts.memory_update.assemble({"prompt": list(item.question_ids), "memory": memory, "chunk": chunk})
        assert list(seq.tokens[: seq.prompt_len]) == prompt
        assert seq.tokens[-1] == end
        memory = list(seq.tokens[seq.prompt_len : -1])
    final = sequences[-1]
    assert tokenizer.decode(final.tokens[final.prompt_len : -1]) == "\\boxed{" + item.sample.reward_answer + "}"
    # The last memory holds every answer-bearing line of the document.
    for span in item.sample.document.spans:
        assert span.memory_text in tokenizer.decode(memory)


def test_quiet_updates_keep_every_evidence_update_and_the_answer(tokenizer):
    agent = AgentConfig(chunk_size=64, max_memory_tokens=128, max_answer_tokens=64, max_question_tokens=64)
    prompts = AgentPrompts.build(tokenizer)
    item = Tokenize(tokenizer, 64, 10_000).map(make_task("niah_multivalue", tokenizer, 3000).sample(2))
    every = oracle_sequences(item, tokenizer, prompts, agent)
    kept = oracle_sequences(item, tokenizer, prompts, agent, quiet_updates=3)
    assert kept == oracle_sequences(item, tokenizer, prompts, agent, quiet_updates=3)  # fixed per sample

    def memory_in(seq):  # the memory a conversation reads and the one it writes
        text = tokenizer.decode(seq.tokens[: seq.prompt_len])
        return text[text.index("<memory>"):text.index("</memory>")], tokenizer.decode(seq.tokens[seq.prompt_len:-1])

    changes = [s for s in every[:-1] if memory_in(s)[1] not in memory_in(s)[0] and memory_in(s)[1] != EMPTY_MEMORY]
    assert len(changes) == 4  # the four needles, each found in its own chunk of this document
    assert len(kept) == len(changes) + 3 + 1 < len(every)
    assert all(s in kept for s in changes) and kept[-1] == every[-1]
    assert [every.index(s) for s in kept] == sorted(every.index(s) for s in kept)  # reading order
    assert oracle_sequences(item, tokenizer, prompts, agent, quiet_updates=100) == every
    evidence_only = oracle_sequences(item, tokenizer, prompts, agent, quiet_updates=0)
    assert evidence_only == changes + [every[-1]]  # 0 is a count, not a sentinel for "every update"
    # The memory lists the four values as found; the answer copies it (any order scores under string_match_all).
    last_memory = memory_in(every[-2])[1]
    assert sorted(last_memory.split(", ")) == sorted(item.sample.answers)
    assert tokenizer.decode(every[-1].tokens[every[-1].prompt_len:-1]) == "\\boxed{" + last_memory + "}"


def test_end_of_turn_is_the_chat_marker(tokenizer):
    assert tokenizer.decode([end_of_turn_id(tokenizer)], skip_special=False) == "<|im_end|>"


def test_samples_without_evidence_or_with_long_memories_are_refused(tokenizer):
    prompts = AgentPrompts.build(tokenizer)
    item = Tokenize(tokenizer, 64, 10_000).map(make_task("vt", tokenizer, 300).sample(0))
    with pytest.raises(ValueError, match="max_memory_tokens"):
        oracle_sequences(item, tokenizer, prompts, AgentConfig(chunk_size=64, max_memory_tokens=4))
    import dataclasses

    from memagent_jax.data.document import TextDocument

    bare = dataclasses.replace(item, sample=dataclasses.replace(item.sample, document=TextDocument("plain text\n")))
    with pytest.raises(ValueError, match="no answer spans"):
        oracle_sequences(bare, tokenizer, prompts, AgentConfig(chunk_size=64))
