"""A phase's sources: weighted mixtures of files and synthetic tasks, globs, evidence, and one clear error
per bad entry."""

import collections
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memagent_jax.data.mixture import MixtureSource, integer_weights
from memagent_jax.data.sources import FileSource, SourceError, build_sources, data_files, parse_sources

FACT = pa.struct([("title", pa.string()), ("sentence", pa.int64()), ("text", pa.string()), ("document", pa.int64())])
# MemAgent's training schema, written directly with pyarrow (not by the project's writer).
TRAIN_SCHEMA = pa.schema([
    ("data_source", pa.string()),
    ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("context", pa.string()),
    ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.list_(pa.string()))])),
    ("extra_info", pa.struct([("index", pa.int64()), ("question", pa.string()), ("num_docs", pa.int64()),
                              ("supporting_facts", pa.list_(FACT))])),
])


def write_train_parquet(path, count: int, evidence: bool = True, start: int = 0) -> None:
    """`count` HotpotQA-like rows in MemAgent's exact training schema; question i's answer is `city{i}`."""
    rows = []
    for i in range(start, start + count):
        fact = f"Item {i} is in city{i}."
        context = f"Document 1:\nFiller\nNothing here.\n\nDocument 2:\nItem {i}\n{fact} It opened late.\n"
        facts = [{"title": f"Item {i}", "sentence": 0, "text": fact, "document": 2}] if evidence else []
        rows.append({"data_source": "hotpotqa", "prompt": [{"role": "user", "content": f"Where is item {i}?"}],
                     "context": context, "reward_model": {"style": "rule", "ground_truth": [f"city{i}"]},
                     "extra_info": {"index": i, "question": f"Where is item {i}?", "num_docs": 2,
                                    "supporting_facts": facts}})
    pq.write_table(pa.Table.from_pylist(rows, schema=TRAIN_SCHEMA), path)


def test_integer_weights_and_mixture_shares():
    assert integer_weights([3, 1]) == [3, 1] and integer_weights([0.75, 0.25]) == [3, 1]
    assert integer_weights([2, 2, 2]) == [1, 1, 1]
    a, b = list(range(100)), list(range(1000, 1010))
    mix = MixtureSource([a, b], [3, 1])
    assert len(mix) == 4 * 34  # the longest source relative to its weight (100 / 3) read once
    draws = [mix[i] for i in range(len(mix))]
    assert collections.Counter(x < 1000 for x in draws) == {True: 102, False: 34}
    assert {x for x in draws if x < 1000} == set(a)  # every record of the long source (0 and 1 twice)
    first = [mix[i] >= 1000 for i in range(8)]
    assert sum(first[:4]) == 1 and sum(first[4:]) == 1  # spread: one of every four
    # Equal weights are round robin, as before weights existed.
    plain = MixtureSource([a[:5], b[:5]])
    assert [plain[i] for i in range(10)] == [0, 1000, 1, 1001, 2, 1002, 3, 1003, 4, 1004]


def test_glob_of_parquet_files_reads_every_record_with_evidence(tmp_path):
    write_train_parquet(tmp_path / "train-0.parquet", 3)
    write_train_parquet(tmp_path / "train-1.parquet", 2, start=3)
    [spec] = parse_sources(({"path": str(tmp_path / "train-*.parquet"), "weight": 2},), "config.rl.sources")
    source = FileSource(spec, "config.rl.sources[0]")
    assert len(source) == 5 and source.format == "memagent_train" and source.has_evidence()
    samples = [source[i] for i in range(5)]
    assert [s.answers for s in samples] == [(f"city{i}",) for i in range(5)]
    assert samples[4].document.spans[0].text == "Item 4 is in city4."
    assert samples[4].meta["evidence"] == "supporting_facts"


def test_files_and_tasks_mix_by_weight(tmp_path, sp_tokenizer_dir):
    from memagent_jax.tokenizer import load_tokenizer

    write_train_parquet(tmp_path / "train.parquet", 6)
    specs = parse_sources(({"path": str(tmp_path / "train.parquet"), "weight": 3},
                           {"task": "toy_code", "lengths": (40, 60), "weight": 1}), "config.rl.sources")
    mixture, files = build_sources(specs, "config.rl.sources", load_tokenizer(sp_tokenizer_dir), seed=0,
                                   num_samples=4)
    assert len(files) == 1 and mixture.counts == [6, 1, 1]  # the task's weight shared by its two lengths
    tasks = collections.Counter(mixture[i].task for i in range(len(mixture)))
    # One pass reaches every synthetic sample (4 per length): the file cycles 4 times, 3:1 as weighted.
    assert tasks["hotpotqa"] == 24 and tasks["toy_code"] == 8


@pytest.mark.parametrize("entries, message", [
    (({"path": "/nonexistent/train.parquet"},), r"config.rl.sources\[0\]: no such data file: /nonexistent"),
    (({"path": "/nonexistent/*.parquet"},), r"sources\[0\]: '/nonexistent/\*.parquet' matches no file"),
    (({"path": "x.parquet", "weigth": 2},), r"sources\[0\]: unknown key\(s\) \['weigth'\]"),
    (({"task": "niah_single", "lengths": (1024,), "weight": 0},), r"weight must be a positive number"),
    (({"task": "niah_sngle", "lengths": (1024,)},), r"unknown task 'niah_sngle'"),
    (({"task": "niah_single"},), r"lengths must be a non-empty tuple"),
    (({"path": "x.parquet", "on_error": "ignore"},), r"on_error must be 'raise' or 'skip'"),
    ((), r"expected a non-empty tuple of source dicts"),
    (({"weight": 1},), r"a source needs 'path' \(files\) or 'task'"),
])
def test_bad_entries_name_themselves(entries, message):
    with pytest.raises(SourceError, match=message):
        for i, spec in enumerate(parse_sources(entries, "config.rl.sources")):
            FileSource(spec, f"config.rl.sources[{i}]")


def test_wrong_schema_mixed_formats_and_bad_records(tmp_path):
    # A Parquet file of another schema: the missing field and the file are named.
    pq.write_table(pa.Table.from_pylist([{"question": "q", "context": "c"}]), tmp_path / "other.parquet")
    [spec] = parse_sources(({"path": str(tmp_path / "other.parquet")},), "s")
    with pytest.raises(SourceError, match=r"s\[0\]: .*other.parquet row 0: unrecognised record"):
        FileSource(spec, "s[0]")
    # Two formats behind one glob.
    write_train_parquet(tmp_path / "mix-a.parquet", 1)
    (tmp_path / "mix-b.jsonl").write_text(json.dumps({"context": "c.", "input": "q?", "answers": ["a"]}) + "\n")
    [spec] = parse_sources(({"path": str(tmp_path / "mix-*")},), "s")
    with pytest.raises(SourceError, match=r"mix formats"):
        FileSource(spec, "s[0]")
    # An empty context and a missing answer: an error by default, skipped and counted with on_error='skip'.
    rows = [{"context": "Some text.", "input": "q?", "answers": ["a"]},
            {"context": "  ", "input": "q?", "answers": ["a"]},
            {"context": "Text.", "input": "q?", "answers": []}]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    [spec] = parse_sources(({"path": str(tmp_path / "eval.jsonl")},), "s")
    with pytest.raises(SourceError, match=r"eval.jsonl:2: empty context"):
        FileSource(spec, "s[0]")
    [spec] = parse_sources(({"path": str(tmp_path / "eval.jsonl"), "on_error": "skip"},), "s")
    source = FileSource(spec, "s[0]")
    assert len(source) == 1 and not source.has_evidence()
    assert source.metrics()["data/skipped"] == 2
    mixture = MixtureSource([source, list(range(3))])
    assert mixture.metrics()["data/skipped"] == 2


def test_a_file_mixture_resumes_from_the_iterator_state(tmp_path):
    """The checkpointed Grain state of a pipeline over files continues with exactly the next batches."""
    from memagent_jax.data.pipeline import make_pipeline

    write_train_parquet(tmp_path / "train.parquet", 10)
    [spec] = parse_sources(({"path": str(tmp_path / "train.parquet")},), "s")
    source = MixtureSource([FileSource(spec, "s[0]"), list(range(100, 104))], [1, 1])

    def pipeline():
        return iter(make_pipeline(source, 4, seed=5, num_epochs=None, process_index=0, process_count=1))

    ids = lambda batch: [s.meta["index"] if hasattr(s, "meta") else s for s in batch]  # noqa: E731
    whole = pipeline()
    expected = [ids(next(whole)) for _ in range(7)]
    first = pipeline()
    for _ in range(3):
        next(first)
    resumed = pipeline()
    resumed.set_state(first.get_state())
    assert [ids(next(resumed)) for _ in range(4)] == expected[3:]


def test_a_glob_lists_its_files_in_natural_order(tmp_path):
    for length in ("65536", "1024", "16384", "4096"):
        (tmp_path / length).mkdir()
        (tmp_path / length / "validation.jsonl").write_text("{}\n")
    for name in ("part-10.jsonl", "part-2.jsonl"):
        (tmp_path / name).write_text("{}\n")
    found = [p.relative_to(tmp_path).as_posix() for p in data_files(str(tmp_path / "*" / "validation.jsonl"))]
    assert found == [f"{n}/validation.jsonl" for n in ("1024", "4096", "16384", "65536")]
    assert [p.name for p in data_files(str(tmp_path / "part-*.jsonl"))] == ["part-2.jsonl", "part-10.jsonl"]
