"""Grain pipelines: deterministic, shards disjoint and complete for any layout, exact resume from state."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from fixture_data import tiny_sp_tokenizer
from memagent_jax.data.pipeline import AgentSample, make_pipeline
from memagent_jax.data.readers import JsonlSource
from memagent_jax.data.synthetic import SyntheticSource
from memagent_jax.data.tasks import make_task
from memagent_jax.data.writers import write_jsonl


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):
    return tiny_sp_tokenizer(tmp_path_factory.mktemp("sp"))


@pytest.fixture(scope="module")
def source(tok):
    return SyntheticSource(make_task("niah_multikey", tok, 1200, seed=3), num_samples=42)


def _indices(batches) -> list[list[int]]:
    return [[getattr(s, "sample", s).index for s in batch] for batch in batches]


def _run(source, global_batch: int, pc: int = 1, pi: int = 0, **kw) -> list[list[int]]:
    return _indices(make_pipeline(source, global_batch, process_index=pi, process_count=pc, read_threads=0, **kw))


def test_epoch_is_a_permutation_and_deterministic(source) -> None:
    batches = _run(source, 8, seed=5)
    flat = [i for b in batches for i in b]
    assert len(batches) == 5 and all(len(b) == 8 for b in batches)  # 42 -> 40 in whole global batches
    assert len(set(flat)) == 40 and set(flat) <= set(range(42))
    assert _run(source, 8, seed=5) == batches
    assert _run(source, 8, seed=6) != batches
    assert _run(source, 8, shuffle=False)[0] == list(range(8))


@pytest.mark.parametrize("pc", [2, 4])
def test_shards_are_disjoint_and_complete_for_any_layout(source, pc: int) -> None:
    reference = _run(source, 8, seed=1)
    shards = [_run(source, 8, pc=pc, pi=p, seed=1) for p in range(pc)]
    assert all(len(s) == len(reference) for s in shards)  # lock-step: same number of batches each
    for b, ref in enumerate(reference):
        parts = [s[b] for s in shards]
        assert all(len(p) == 8 // pc for p in parts)
        merged = [i for p in parts for i in p]
        assert len(set(merged)) == len(merged) and set(merged) == set(ref)  # global batch b, whatever pc
        assert sorted(merged) == sorted(ref)
    # Without drop_remainder every sample is used exactly once across the processes.
    tails = [i for p in range(pc) for b in _run(source, 8, pc=pc, pi=p, seed=1, drop_remainder=False) for i in b]
    assert sorted(tails) == list(range(42))


def test_same_samples_in_a_fresh_process(source, tok, tmp_path: pathlib.Path) -> None:
    """Another interpreter (other hash seed, as on another host) generates byte-identical samples."""
    model = tmp_path / "sp"
    tiny_sp_tokenizer(model)
    code = (
        "import sys; from memagent_jax.tokenizer import load_tokenizer; from memagent_jax.data.tasks import make_task\n"
        f"t = make_task('niah_multikey', load_tokenizer({str(model)!r}), 1200, seed=3)\n"
        "for i in (0, 17, 41): s = t.sample(i); "
        "print(s.question, s.answers, len(s.document.text()), s.document.text()[-300:].replace('\\n', '|'))"
    )
    env = dict(os.environ, PYTHONHASHSEED="123")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    expected = "".join(
        f"{s.question} {s.answers} {len(s.document.text())} {s.document.text()[-300:].replace(chr(10), '|')}\n"
        for s in (source[0], source[17], source[41])
    )
    assert out == expected


def _resume_check(ds, before: int, after: int) -> None:
    it = iter(ds)
    for _ in range(before):
        next(it)
    state = it.get_state()
    json.dumps(state)  # small and serialisable: goes into the training checkpoint
    expected = _indices(next(it) for _ in range(after))
    fresh = iter(ds)
    fresh.set_state(state)
    assert _indices(next(fresh) for _ in range(after)) == expected


def test_exact_resume(source, tok) -> None:
    _resume_check(make_pipeline(source, 4, process_index=1, process_count=2, seed=2), before=3, after=4)
    # Endless repetition, resumed across an epoch boundary (42 samples = 10 batches of 4 per epoch).
    endless = make_pipeline(source, 4, seed=2, num_epochs=None, process_index=0, process_count=1)
    _resume_check(endless, before=8, after=6)
    # With tokenization and prefetch threads.
    pipeline = make_pipeline(source, 4, tokenizer=tok, chunk_tokens=300, read_threads=2,
                             process_index=0, process_count=1)
    _resume_check(pipeline, 2, 3)


def test_tokenized_agent_samples(tok) -> None:
    src = SyntheticSource(make_task("vt", tok, 3000), num_samples=4)
    batch = next(iter(make_pipeline(src, 2, tokenizer=tok, chunk_tokens=700, pretokenize_max_tokens=2500,
                                    process_index=0, process_count=1)))
    long_batch = next(iter(make_pipeline(src, 2, tokenizer=tok, chunk_tokens=700, process_index=0, process_count=1)))
    for lazy, eager in zip(batch, long_batch):
        assert isinstance(lazy, AgentSample) and lazy.chunks is None  # 3000 > 2500: streamed by the agent
        assert eager.chunks is not None and [len(c) for c in eager.chunks[:-1]] == [700] * (len(eager.chunks) - 1)
        whole = tok.encode(eager.sample.document.text())
        assert [int(i) for c in eager.chunks for i in c] == whole
        assert [int(i) for c in lazy.iter_chunks(tok) for i in c] == whole
        assert list(eager.question_ids) == tok.encode(eager.sample.question)


def test_reader_sources_and_skip_metrics(tmp_path: pathlib.Path, source) -> None:
    path = tmp_path / "train.jsonl"
    write_jsonl([source[i] for i in range(6)], path)
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"broken": \n')
    reader = JsonlSource(path, on_error="skip")
    batches = _run(reader, 3, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert reader.metrics() == {"data/skipped": 1, "data/skipped/invalid JSON": 1}


def test_bad_layouts(source) -> None:
    with pytest.raises(ValueError, match="multiple"):
        make_pipeline(source, 6, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="process_index"):
        make_pipeline(source, 8, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="global batch"):
        make_pipeline(SyntheticSource(source.task, 3), 8, process_index=0, process_count=1)


def test_default_layout_comes_from_jax(source) -> None:
    import jax

    assert (jax.process_index(), jax.process_count()) == (0, 1)
    assert _indices(make_pipeline(source, 8, seed=1, read_threads=0)) == _run(source, 8, seed=1)


def test_multiprocess_prefetch_gives_the_same_batches(source, tok) -> None:
    ds = make_pipeline(source, 4, tokenizer=tok, mp_workers=2, process_index=0, process_count=1)
    it = iter(ds)
    got = _indices(next(it) for _ in range(4))
    state = it.get_state()
    more = _indices(next(it) for _ in range(2))
    it.close()
    assert got == _run(source, 4)[:4]
    again = iter(ds)
    again.set_state(state)
    assert _indices(next(again) for _ in range(2)) == more
    again.close()
