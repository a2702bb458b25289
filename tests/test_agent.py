"""The memory agent's workflow, prompts and document streaming."""

import numpy as np
import pytest
from flax import nnx

from fixture_data import tokenizer_corpus
from memagent_jax.agent.chunks import ChunkCache, iter_rechunked, iter_text_file, iter_token_pieces
from memagent_jax.agent.memory_agent import AgentConfig, AgentTask, MemoryAgent
from memagent_jax.agent.prompts import FINAL_ANSWER_TEMPLATE, MEMORY_UPDATE_TEMPLATE, AgentPrompts
from memagent_jax.engine.engine import Engine
from memagent_jax.engine.requests import EngineConfig
from memagent_jax.model.config import ModelConfig
from memagent_jax.model.greedy import greedy_generate
from memagent_jax.model.transformer import Transformer
from memagent_jax.tokenizer import load_tokenizer, train_sentencepiece

AGENT = AgentConfig(chunk_size=48, max_memory_tokens=10, max_answer_tokens=6, max_question_tokens=40,
                    temperature=0.0)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sp")
    train_sentencepiece(tokenizer_corpus(1500), folder, vocab_size=512)
    return load_tokenizer(folder)


@pytest.fixture(scope="module")
def model(tokenizer):
    cfg = ModelConfig(family="qwen2", vocab_size=512, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, qkv_bias=True, tie_word_embeddings=True,
                      rope_theta=10000.0, max_position_embeddings=1024, initializer_range=0.3)
    return Transformer(cfg, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def engine(model):
    return Engine(model, EngineConfig(page_size=16, num_pages=256, max_slots=6, max_seq_len=512,
                                      max_prompt_len=480, prefill_chunk=128, prefill_batch=4, decode_steps=4))


def _document(tokenizer, lines):
    text = "".join(f"{line}\n" for line in tokenizer_corpus(lines, seed=lines))
    return text, tokenizer.encode(text)


def _task(tokenizer, sample_id, lines, question="What is the special magic number for calm-river?"):
    _, ids = _document(tokenizer, lines)
    return AgentTask(sample_id, question, lambda: iter([ids[i:i + 7] for i in range(0, len(ids), 7)]))


def test_templates_are_exact():
    assert "<problem> \n{prompt}\n</problem>" in MEMORY_UPDATE_TEMPLATE
    assert MEMORY_UPDATE_TEMPLATE.endswith("\n\nUpdated memory:\n")
    assert "put the answer in \\boxed{{}}." in FINAL_ANSWER_TEMPLATE
    assert FINAL_ANSWER_TEMPLATE.endswith("</memory>\n\nYour answer:\n")


def test_slot_prompt_equals_rendering_the_chat_template(tokenizer):
    prompts = AgentPrompts.build(tokenizer)
    question, memory, chunk = (tokenizer.encode(t) for t in ("Find the key?", "Memory line", "Document 1"))
    expected = tokenizer.encode_chat_with_slots(
        [{"role": "user", "content": MEMORY_UPDATE_TEMPLATE}], {"prompt": question, "memory": memory, "chunk": chunk})
    assert prompts.memory_update.assemble({"prompt": question, "memory": memory, "chunk": chunk}) == expected
    final = prompts.final_answer.assemble({"prompt": question, "memory": memory})
    assert "put the answer in \\boxed{}." in tokenizer.decode(final)
    assert tokenizer.decode(final).startswith("<|im_start|>user\n") or "user" in tokenizer.decode(final, False)
    assert prompts.initial_memory == tuple(tokenizer.encode("No previous memory"))
    with pytest.raises(ValueError, match="missing slot values"):
        prompts.final_answer.assemble({"prompt": question})


def _naive_trajectory(model, tokenizer, prompts, question_ids, chunks):
    """The workflow written as a plain loop over greedy full-recompute generation: the reference."""
    memory = list(prompts.initial_memory)
    conversations = []
    for chunk in chunks:
        prompt = prompts.memory_update.assemble({"prompt": question_ids, "memory": memory, "chunk": chunk})
        response = greedy_generate(model, [prompt], AGENT.max_memory_tokens, tokenizer.stop_ids)[0]
        conversations.append((prompt, response))
        memory = [t for t in response if t not in tokenizer.stop_ids]
    prompt = prompts.final_answer.assemble({"prompt": question_ids, "memory": memory})
    conversations.append((prompt, greedy_generate(model, [prompt], AGENT.max_answer_tokens, tokenizer.stop_ids)[0]))
    return conversations


def test_greedy_agent_equals_the_naive_loop_for_mixed_document_lengths(engine, model, tokenizer):
    agent = MemoryAgent(engine, tokenizer, AGENT)
    tasks = [_task(tokenizer, "long", 12), _task(tokenizer, "short", 2), _task(tokenizer, "empty", 0)]
    trajectories = agent.run(tasks)
    for task, trajectory in zip(tasks, trajectories):
        ids = [t for piece in task.document_tokens() for t in piece]
        chunks = [ids[i:i + AGENT.chunk_size] for i in range(0, len(ids), AGENT.chunk_size)]
        expected = _naive_trajectory(model, tokenizer, agent.prompts, tokenizer.encode(task.question), chunks)
        assert trajectory.error is None
        assert [(c.prompt, c.response) for c in trajectory.conversations] == expected
        assert trajectory.num_chunks == len(chunks) and len(trajectory.memories) == len(chunks)
        assert [c.kind for c in trajectory.conversations] == ["memory"] * len(chunks) + ["final"]
    assert trajectories[0].num_chunks > 3 and trajectories[2].num_chunks == 0
    # The empty document is answered from the initial memory.
    assert "No previous memory" in tokenizer.decode(trajectories[2].conversations[0].prompt)


def test_group_rollouts_share_the_first_prompt_and_differ_by_seed(engine, tokenizer):
    agent = MemoryAgent(engine, tokenizer, AgentConfig(chunk_size=48, max_memory_tokens=10, max_answer_tokens=6,
                                                       max_question_tokens=40, temperature=1.0, seed=5))
    cached_before = engine.stats.cached_tokens
    trajectories = agent.run([_task(tokenizer, "g", 6)], group_size=4)
    assert len(trajectories) == 4 and [t.rollout for t in trajectories] == [0, 1, 2, 3]
    assert len({tuple(t.conversations[0].prompt) for t in trajectories}) == 1
    prompt_pages = len(trajectories[0].conversations[0].prompt) // 16
    assert engine.stats.cached_tokens - cached_before >= 3 * 16 * (prompt_pages - 1)
    assert len({tuple(t.conversations[0].response) for t in trajectories}) > 1
    again = agent.run([_task(tokenizer, "g", 6)], group_size=4)
    assert [[c.response for c in t.conversations] for t in again] == \
           [[c.response for c in t.conversations] for t in trajectories]  # seeded: reproducible
    for t in trajectories:
        for c in t.conversations:
            assert len(c.logprobs) == len(c.response) and all(lp <= 0 for lp in c.logprobs)


def test_bad_inputs(engine, tokenizer):
    agent = MemoryAgent(engine, tokenizer, AGENT)
    with pytest.raises(ValueError, match="question has .* tokens, more than max_question_tokens=40"):
        agent.run([_task(tokenizer, "q", 1, question="a very long question " * 20)])
    with pytest.raises(ValueError, match="engine's max_prompt_len is 480"):
        MemoryAgent(engine, tokenizer, AgentConfig(chunk_size=400, max_memory_tokens=64))
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        AgentConfig(chunk_size=0)


def test_rechunking_and_chunk_cache_memory_bound():
    pieces = [[1, 2, 3], [4], [], [5, 6, 7, 8, 9, 10, 11]]
    assert list(iter_rechunked(pieces, 4)) == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11]]
    cache = ChunkCache(([i] * 5 for i in range(1000)), chunk_size=5, readers=2)
    for index in range(1000):
        assert cache.get(index) == [index] * 5
        cache.advance(index)  # reader 0
        if index >= 3:
            cache.advance(index - 3)  # reader 1 trails by 3 chunks
        assert cache.num_kept <= 4
    assert cache.get(1000) is None
    cache.finish_reader(997)  # reader 1 stops: what only it still needed is dropped
    assert cache.num_kept == 0


def test_line_chunks_end_at_line_breaks_and_share_the_tail():
    newline = 0
    line = [1, 2, 3, 4, 5, newline]  # lines of 6 tokens
    stream = line * 9 + [7, 7]  # 56 tokens
    chunks = list(iter_rechunked([stream[:5], stream[5:31], stream[31:]], 16, {newline}))
    # 12 tokens (two whole lines) rather than 16 ending mid-line; the last 20 tokens as 12 + 8, not 16 + 4.
    assert [len(c) for c in chunks] == [12, 12, 12, 12, 8]
    assert all(c[-1] == newline for c in chunks[:-1]) and sum(chunks, []) == stream
    # A line longer than half a chunk is cut at the chunk size; a short document stays one chunk.
    long_line = list(range(1, 30)) + [newline]
    assert [len(c) for c in iter_rechunked([long_line * 2], 16, {newline})] == [16, 14, 16, 14]
    assert list(iter_rechunked([line], 16, {newline})) == [line]


def test_line_chunks_depend_only_on_the_token_stream():
    rng = np.random.default_rng(0)
    for _ in range(300):
        size = int(rng.integers(1, 40))
        stream = [int(t) for t in rng.choice(8, size=int(rng.integers(0, 300)), p=[0.2] + [0.8 / 7] * 7)]
        cuts = sorted(rng.choice(len(stream) + 1, size=min(len(stream) + 1, 6), replace=False).tolist())
        pieces = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
        chunks = list(iter_rechunked(pieces, size, {0}))
        assert sum(chunks, []) == stream and all(0 < len(c) <= size for c in chunks)
        assert chunks == list(iter_rechunked([stream], size, {0}))  # however the stream was split
        assert list(iter_rechunked(chunks, size, {0})) == chunks  # re-cutting changes nothing
        if len(chunks) > 1:
            assert len(chunks[-1]) >= size // 4  # the tail is shared, never a sliver


def test_the_agent_cuts_documents_at_line_breaks_when_asked(engine, tokenizer):
    config = AgentConfig(chunk_size=48, max_memory_tokens=10, max_answer_tokens=6, max_question_tokens=40,
                         temperature=0.0, chunk_boundary="line")
    [trajectory] = MemoryAgent(engine, tokenizer, config).run([_task(tokenizer, "lines", 12)])
    text, ids = _document(tokenizer, 12)
    chunks = list(iter_rechunked([ids], 48, tokenizer.line_end_ids()))
    assert trajectory.num_chunks == len(chunks) > len(ids) // 48
    for chunk, conversation in zip(chunks, trajectory.conversations):
        prompt = conversation.prompt
        assert any(prompt[i:i + len(chunk)] == chunk for i in range(len(prompt) - len(chunk) + 1))
    assert all(tokenizer.decode(chunk).endswith("\n") for chunk in chunks)
    with pytest.raises(ValueError, match="chunk_boundary must be one of"):
        AgentConfig(chunk_boundary="sentence")


def test_text_file_streams_in_pieces_with_invalid_bytes_counted(tmp_path, tokenizer):
    lines = [f"line {i} é 東京" for i in range(3000)]
    raw = ("\n".join(lines) + "\n").encode() + b"bad \xff\xfe bytes\n" + b"x" * 5000
    path = tmp_path / "doc.txt"
    path.write_bytes(raw)
    pieces = list(iter_text_file(path, piece_chars=1024))
    text = "".join(p for p, _ in pieces)
    assert text == raw.decode("utf-8", errors="replace")
    assert sum(n for _, n in pieces) == 2
    assert max(len(p) for p, _ in pieces) <= 2 * 1024 + 8
    # Pieces end at newlines, except inside the final 5000-character line, which is cut to bound memory.
    assert all(p.endswith("\n") or set(p) == {"x"} for p, _ in pieces)
    streamed = [t for ids in iter_token_pieces((p for p, _ in pieces), tokenizer) for t in ids]
    assert streamed == tokenizer.encode(text)  # newline-aligned pieces tokenize as the whole text


def test_runs_samples_from_the_data_pipeline(engine, tokenizer):
    from memagent_jax.data.pipeline import make_pipeline
    from memagent_jax.data.synthetic import SyntheticSource
    from memagent_jax.data.tasks import make_task

    source = SyntheticSource(make_task("niah_single", tokenizer, target_tokens=150), num_samples=2)
    [batch] = list(make_pipeline(source, global_batch_size=2, tokenizer=tokenizer, chunk_tokens=48,
                                 shuffle=False, num_epochs=1, process_index=0, process_count=1))
    tasks = [item.agent_task(tokenizer) for item in batch]
    trajectories = MemoryAgent(engine, tokenizer, AGENT).run(tasks)
    for item, task, trajectory in zip(batch, tasks, trajectories):
        chunks = [list(map(int, c)) for c in item.iter_chunks(tokenizer)]
        assert trajectory.num_chunks == len(chunks) >= 2
        memory_prompts = [c.prompt for c in trajectory.conversations[:-1]]
        for chunk, prompt in zip(chunks, memory_prompts):  # every chunk's ids appear verbatim in its prompt
            assert any(prompt[i:i + len(chunk)] == chunk for i in range(len(prompt) - len(chunk) + 1))
        assert task.answers == tuple(item.sample.ground_truth)


def test_answering_without_keeping_prompts_gives_the_same_trajectory(engine, tokenizer):
    agent = MemoryAgent(engine, tokenizer, AGENT)
    kept = agent.run([_task(tokenizer, "k", 5)])[0]
    light = agent.run([_task(tokenizer, "k", 5)], keep_prompts=False)[0]
    assert [c.response for c in light.conversations] == [c.response for c in kept.conversations]
    assert [c.prompt_len for c in light.conversations] == [len(c.prompt) for c in kept.conversations]
    assert all(c.prompt == [] for c in light.conversations) and light.answer == kept.answer


def test_saved_agent_settings_round_trip_and_are_checked(tmp_path):
    from memagent_jax.agent.memory_agent import AGENT_SIZES_FILE, load_sizes

    AgentConfig(chunk_size=64, max_memory_tokens=12, chunk_boundary="line").save_sizes(tmp_path)
    saved = load_sizes(tmp_path)
    assert saved == {"chunk_size": 64, "max_memory_tokens": 12, "max_answer_tokens": 1024,
                     "max_question_tokens": 1024, "chunk_boundary": "line"}
    assert AgentConfig(**saved).chunk_boundary == "line"
    (tmp_path / AGENT_SIZES_FILE).write_text('{"chunk_size": 64, "chunk_boundary": "paragraph"}')
    with pytest.raises(ValueError, match="chunk_boundary must be one of"):
        load_sizes(tmp_path)
    (tmp_path / AGENT_SIZES_FILE).write_text('{"chunk_size": 64}')  # saved before chunk_boundary existed
    assert load_sizes(tmp_path) == {"chunk_size": 64}
