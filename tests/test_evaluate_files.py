"""`memagent_jax.evaluate --data` end to end on files written here in RULER's and MemAgent's own formats (not
by the project's writers): scores by file and length, a run killed mid-way and resumed to the same table,
and bad input stopped with one line before any model loads."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fixture_data import tokenizer_corpus
from memagent_jax.agent.memory_agent import Conversation, Trajectory
from memagent_jax.agent.prompts import AgentPrompts
from memagent_jax.data.records import parse_record
from memagent_jax.data.ruler_qa import HEAD as RULER_QA_HEAD
from memagent_jax.run.eval_data import open_eval_files
from memagent_jax.run.eval_files import FileEvalConfig, Progress, evaluate_files, score_sample
from memagent_jax.run.eval_report import summarize
from memagent_jax.run.eval_store import ResultStore
from memagent_jax.tokenizer import load_tokenizer

SMALL = ["--chunk_size=64", "--max_memory_tokens=8", "--max_answer_tokens=8", "--max_question_tokens=64",
         "--batch=2"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
ENV.pop("XLA_FLAGS", None)  # one CPU device: the test session's 8 fake devices only slow a subprocess down


def _filler(seed: int, lines: int) -> list[str]:
    return [f"{line}\n" for line in tokenizer_corpus(lines, seed=seed)]


def _ruler_rows(length: int, n: int) -> list[dict]:
    """RULER niah rows as RULER writes them: the whole prompt in `input`, the question on its last line."""
    rows = []
    for i in range(n):
        lines = _filler(100 + i, length // 24)
        lines.insert(len(lines) // 2, f"One of the special magic numbers for key-{i} is: {4_000_000 + i}.\n")
        rows.append({"index": i, "input": "Some special magic numbers are hidden in the text.\n" + "".join(lines)
                     + f"What is the special magic number for key-{i} mentioned in the provided text?",
                     "outputs": [str(4_000_000 + i)], "length": length, "length_w_model_temp": length + 20})
    return rows


def _memagent_rows(num_docs: int, n: int, first: int = 0) -> list[dict]:
    """MemAgent evaluation rows (its RULER-HQA JSON): context of `Document {k}:` paragraphs, question, answers."""
    rows = []
    for i in range(first, first + n):
        docs = ["".join(_filler(1000 * num_docs + 10 * i + k, 3)) for k in range(num_docs)]
        docs[num_docs // 2] += f"The capital of land {i} is City {i}.\n"
        context = "\n\n".join(f"Document {k + 1}:\n{d}" for k, d in enumerate(docs))
        rows.append({"context": context, "input": f"What is the capital of land {i}?",
                     "answers": [f"City {i}", f"city{i}"], "num_docs": num_docs, "index": i})
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "ruler" / "niah_single").mkdir(parents=True)
    with open(root / "ruler" / "niah_single" / "validation.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in _ruler_rows(256, 3))
    # One JSON array with two lengths, and one bad record of each kind that skip mode must count.
    rows = _memagent_rows(4, 2) + _memagent_rows(8, 2, first=2)
    rows.insert(1, {**rows[0], "context": "  \n", "index": 90})
    rows.insert(3, {**rows[0], "answers": [], "index": 91})
    (root / "hqa.json").write_text(json.dumps(rows))
    return root


def _evaluate(checkpoint, out, *args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "memagent_jax.evaluate", f"--checkpoint=A={checkpoint}",
                             f"--out={out}", *SMALL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, **kwargs)


def _finish(process, timeout=300):
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr
    return stdout, stderr


def _data_args(data):
    return [f"--data={data / 'ruler' / '*' / 'validation.jsonl'}", f"--data={data / 'hqa.json'}",
            "--on_bad_record=skip"]


@pytest.fixture(scope="module")
def straight_run(tiny_eval_checkpoints, data, tmp_path_factory):
    """One uninterrupted run over both files."""
    out = tmp_path_factory.mktemp("straight")
    stdout, stderr = _finish(_evaluate(tiny_eval_checkpoints[0], out, *_data_args(data)))
    return out, stdout, stderr


def test_scores_by_file_and_length_with_the_papers_metrics(straight_run):
    out, stdout, stderr = straight_run
    results = json.loads((out / "results.json").read_text())
    ruler, hqa = results["files"]
    assert (ruler["format"], ruler["metric"], ruler["kept"], ruler["skipped"]) == \
        ("ruler", "string_match_all", 3, {})
    assert (hqa["format"], hqa["metric"], hqa["records"], hqa["kept"]) == ("memagent_eval", "sub_em", 6, 4)
    # The two bad records are counted by reason (the reader's and the content check), not dropped silently.
    assert hqa["skipped"] == {"empty context": 1, "field 'answers' should be a non-empty list of strings": 1}
    cells = results["checkpoints"]["A"]
    assert [(c["metric"], c["bucket"], c["samples"]) for c in cells["by_length"]] == \
        [("string_match_all", ["length", 256], 3), ("sub_em", ["num_docs", 4], 2), ("sub_em", ["num_docs", 8], 2)]
    for cell in cells["by_file"]:
        assert cell["pending"] == 0 and cell["errors"] == 0 and cell["document_tokens"] > 0
        assert all(0.0 <= cell[s] <= 1.0 for s in ("sub_em", "exact_match", "f1", "string_match_all", "boxed"))
    assert results["run"]["samples"] == 7 and results["run"]["tokens_per_s"] > 0
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 7 and "settings" in json.loads(lines[0])
    table = (out / "table.md").read_text()
    assert "| string_match_all | 256 tok | 3 |" in table and "| sub_em | 8 docs | 2 |" in table
    assert "| hqa.json | 6 | 4 | 2 | empty context: 1, field 'answers'" in table
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "tok/s" in stderr and "ETA" in stderr and "7/7 samples" in stderr  # the progress line


def test_rerun_of_a_finished_run_loads_no_model(tiny_eval_checkpoints, data, straight_run):
    out, _, _ = straight_run
    table = (out / "table.md").read_text()
    stdout, _ = _finish(_evaluate(tiny_eval_checkpoints[0], out, *_data_args(data)))
    assert "7 samples already" in stdout and "this run:" not in stdout
    assert (out / "table.md").read_text() == table


def test_killed_run_resumes_to_the_same_table(tiny_eval_checkpoints, data, straight_run, tmp_path):
    out = tmp_path / "resumed"
    process = _evaluate(tiny_eval_checkpoints[0], out, *_data_args(data), "--batch=1")
    samples = out / "samples.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if samples.is_file() and len(samples.read_text().splitlines()) >= 3:  # settings + 2 samples
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    done = len(samples.read_text().splitlines()) - 1
    assert 2 <= done < 7, "the run was not stopped mid-way"
    stdout, _ = _finish(_evaluate(tiny_eval_checkpoints[0], out, *_data_args(data), "--batch=1"))
    assert f"{done} samples already" in stdout and "this run: " + str(7 - done) + " samples" in stdout
    assert (out / "table.md").read_text() == (straight_run[0] / "table.md").read_text()
    keys = [(row["file"], row["record"]) for row in map(json.loads, samples.read_text().splitlines()[1:])]
    assert len(keys) == len(set(keys)) == 7  # nothing ran twice


def _trajectory(answer, error=None, rollout=0):
    return Trajectory("s", rollout, [Conversation("final", [], [], [], "stop")], answer=answer, error=error)


def test_scores_are_the_papers_metrics_averaged_over_rollouts():
    qa = parse_record({"context": "x\n", "input": "q?", "answers": ["The Eiffel Tower", "Eiffel"]}, 0)
    right = score_sample(qa, [_trajectory("Therefore, the answer is eiffel tower.")])
    assert (right["sub_em"], right["exact_match"], right["boxed"]) == (1.0, 1.0, 0.0)
    boxed = score_sample(qa, [_trajectory("\\boxed{Eiffel}"), _trajectory("Paris", rollout=1),
                              _trajectory("\\boxed{Eiffel}", error="oom", rollout=2),
                              _trajectory("the Eiffel tower in Paris", rollout=3)])
    assert boxed["sub_em"] == 0.5 and boxed["exact_match"] == 0.25 and boxed["boxed"] == 0.25
    assert 0.25 < boxed["f1"] < 0.5
    ruler = parse_record({"input": "text\nWhich numbers?", "outputs": ["123", "456"]}, 0)
    half = score_sample(ruler, [_trajectory("\\boxed{123}")])
    assert (half["string_match_all"], half["string_match_part"], half["boxed"]) == (0.5, 1.0, 0.0)
    assert score_sample(ruler, [_trajectory("\\boxed{123, 456}")])["boxed"] == 1.0
    assert score_sample(ruler, [_trajectory("\\boxed{456, 123}")])["boxed"] == 1.0  # RULER's outputs: any order


def test_store_drops_an_unfinished_line_and_refuses_other_settings(tmp_path):
    path = tmp_path / "samples.jsonl"
    store = ResultStore(path, {"temperature": 0.0})
    store.add({"checkpoint": "A", "file": "f.jsonl", "record": 0, "scores": {}})
    with open(path, "a") as f:
        f.write('{"checkpoint": "A", "file": "f.jsonl", "rec')  # what a kill mid-write leaves
    again = ResultStore(path, {"temperature": 0.0})
    assert again.dropped_partial and len(again) == 1 and ("A", str(tmp_path / "f.jsonl"), 0) not in again
    assert path.read_text().endswith("}\n")
    with pytest.raises(ValueError, match="other settings .differing: temperature"):
        ResultStore(path, {"temperature": 1.0})


@pytest.mark.parametrize("make, message", [
    (lambda d: [f"--data={d / 'nope.jsonl'}"], "no such data file: "),
    (lambda d: [f"--data={d / 'none' / '*.jsonl'}"], "matches no file"),
    (lambda d: [f"--data={d / 'mixed' / '[ab].jsonl'}"], "mixes formats (a.jsonl is memagent_eval, b.jsonl is ruler)"),
    # The first bad record of the file stops it (element 3 has no answer).
    (lambda d: [f"--data={d / 'hqa.json'}"], "(element 1): empty context (--on_bad_record=skip"),
    (lambda d: [f"--data={d / 'mixed' / 'empty.jsonl'}"], "empty.jsonl:1: empty context (--on_bad_record=skip"),
    (lambda d: [f"--data={d / 'mixed' / 'b.jsonl'}", "--tasks=vt"], "--tasks choose synthetic tasks"),
    (lambda d: [f"--data={d / 'mixed' / 'a.jsonl'}", "--max_question_tokens=3"], "a.jsonl:1: the question has"),
])
def test_bad_input_is_one_line_before_any_model(tiny_eval_checkpoints, data, tmp_path, make, message):
    mixed = data / "mixed"
    mixed.mkdir(exist_ok=True)
    (mixed / "a.jsonl").write_text(json.dumps(_memagent_rows(2, 1)[0]) + "\n")
    (mixed / "b.jsonl").write_text(json.dumps(_ruler_rows(64, 1)[0]) + "\n")
    (mixed / "empty.jsonl").write_text(json.dumps({**_memagent_rows(2, 1)[0], "context": ""}) + "\n")
    process = _evaluate(tiny_eval_checkpoints[0], tmp_path / "out", *make(data))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], stderr
    assert not (tmp_path / "out").exists()  # stopped before the results store, let alone the model


def test_each_file_gets_its_papers_headline_metric(tmp_path):
    rows = {"qa_2/validation.jsonl": [{"input": "Document 1:\nx\n\nQuestion: q?", "outputs": ["a", "b"]}],
            "qa_by_content.jsonl": [{"input": RULER_QA_HEAD + "Document 1:\nx\n\nQuestion: q?", "outputs": ["a"]}],
            "vt/validation.jsonl": [{"input": "VAR A = 1\nWhich?", "outputs": ["A", "B"], "length": 128}],
            "hqa.jsonl": [{"context": "x\n", "input": "q?", "answers": ["a"], "num_docs": 50}],
            "needles.jsonl": [{"context": "x\n", "input": "q?", "answers": ["1", "2"], "answer_mode": "all"}]}
    for name, records in rows.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    files = open_eval_files([str(tmp_path / name) for name in rows])
    assert [(f.fmt, f.metric, f.buckets) for f in files] == [
        ("ruler", "string_match_part", [("none", 0)]), ("ruler", "string_match_part", [("none", 0)]),
        ("ruler", "string_match_all", [("length", 128)]), ("memagent_eval", "sub_em", [("num_docs", 50)]),
        ("memagent_eval", "string_match_all", [("none", 0)])]
    assert [f.metric for f in open_eval_files([str(tmp_path / "hqa.jsonl")], metric="string_match_part")] == \
        ["string_match_part"]


def test_a_checkpoint_written_by_transformers_with_its_own_chat_template(tmp_path):
    """Any HF folder: weights saved by transformers, a byte-level BPE tokenizer.json and a chat template with a
    system turn (in chat_template.jinja, where transformers 5 saves it); the prompts go through that template."""
    from fixture_data import tiny_bpe_tokenizer
    from reference_libraries import torch_and_transformers

    torch, transformers = torch_and_transformers()

    folder = tmp_path / "hf"
    tokenizer = tiny_bpe_tokenizer(folder)
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=640, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                      tie_word_embeddings=True)
    transformers.Qwen2ForCausalLM(config).save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(
        "<|im_start|>system\nYou are a careful reader.<|im_end|>\n{% for m in messages %}<|im_start|>{{ m['role'] }}"
        "\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _ruler_rows(128, 2)))
    files = open_eval_files([str(tmp_path / "r.jsonl")])
    cfg = FileEvalConfig.with_sampling("paper", {"chunk_size": 64, "max_memory_tokens": 8, "max_answer_tokens": 8,
                                                 "max_question_tokens": 64}, seed=0, batch=2)
    store = ResultStore(tmp_path / "out" / "samples.jsonl", cfg.settings())
    run = evaluate_files({"hf": folder}, files, cfg, store, Progress(io.StringIO()))
    assert run["samples"] == 2 and len(store) == 2
    rows = list(store.rows())
    assert all(len(r["predictions"]) == 4 and r["errors"] == 0 and r["chunks"] >= 2 for r in rows)
    summary = summarize({"hf": folder}, files, store)
    assert summary["checkpoints"]["hf"]["by_file"][0]["samples"] == 2
    prompt = AgentPrompts.build(load_tokenizer(folder)).final_answer.assemble({"prompt": [], "memory": []})
    assert tokenizer.decode(prompt).startswith("system\nYou are a careful reader.")
