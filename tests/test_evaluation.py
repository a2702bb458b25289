"""Checkpoint evaluation: a tiny random checkpoint run through every cell, the reports, the CLI's errors,
and the scoring path on hand-written answers (a random model is never right, so correctness is checked
on the scorer the evaluation uses)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from memagent_jax.agent.memory_agent import AgentConfig, Conversation, Trajectory
from memagent_jax.data.tasks import make_task
from memagent_jax.run.evaluation import (
    EvalConfig,
    evaluate_checkpoints,
    format_table,
    length_label,
    parse_checkpoints,
    parse_lengths,
    read_results,
    score_trajectories,
    write_results,
)
from memagent_jax.tokenizer import load_tokenizer

NAMES = ("SFT", "SFT+GRPO")
CFG = EvalConfig(lengths=(256, 512), samples_per_cell=2, chunk_size=64, max_memory_tokens=8, max_answer_tokens=8,
                 max_question_tokens=64, batch=4)


@pytest.fixture(scope="module")
def checkpoints(tiny_eval_checkpoints):
    return tiny_eval_checkpoints


@pytest.fixture(scope="module")
def checkpoint(checkpoints):
    return checkpoints[0]


@pytest.fixture(scope="module")
def evaluated(checkpoints):
    progress = []
    named = {**{name: checkpoints[0] for name in NAMES}, "zero": checkpoints[1]}
    results = evaluate_checkpoints(named, CFG, on_progress=lambda name, cell: progress.append(
        (name, cell["task"], cell["length"])))
    return results, progress


def test_every_cell_is_run_and_reported(evaluated, checkpoint):
    results, progress = evaluated
    cells = [(t, n) for t in CFG.tasks for n in CFG.lengths]
    assert progress == [(name, t, n) for name in (*NAMES, "zero") for t, n in cells]
    assert list(results) == [*NAMES, "zero"]
    for name in NAMES:
        assert results[name]["checkpoint"] == str(checkpoint)
        assert [(c["task"], c["length"]) for c in results[name]["cells"]] == cells
        for cell in results[name]["cells"]:
            assert cell["samples"] == 2 and cell["errors"] == 0
            assert 0.0 <= cell["accuracy"] <= 1.0 and 0.0 <= cell["string_match"] <= 1.0
            assert cell["correct"] == round(cell["accuracy"] * 2)
            # Streamed documents of about the target length, read in chunks of 32-64 tokens that end at lines.
            assert 0.5 * 2 * cell["length"] < cell["document_tokens"] < 1.5 * 2 * cell["length"]
            per_document = cell["document_tokens"] / 2
            assert per_document / 64 < cell["mean_chunks"] <= per_document / 32 + 1
            assert 0 < cell["mean_memory_tokens"] <= CFG.max_memory_tokens
            assert cell["seconds"] > 0 and cell["tokens_per_s"] > 0 and cell["generated_tokens"] > 0
    # Greedy decoding of the same checkpoint: both columns agree on everything but the timings, and the
    # second one ran on the first one's engine without compiling anything.
    timing = {"seconds", "tokens_per_s"}
    strip = lambda cells: [{k: v for k, v in c.items() if k not in timing} for c in cells]  # noqa: E731
    assert strip(results[NAMES[0]]["cells"]) == strip(results[NAMES[1]]["cells"])
    assert results[NAMES[0]]["compilations"] > 0 and results[NAMES[1]]["compilations"] == 0
    # The shared engine really switched weights: the zero model writes max_memory_tokens pad ids every time.
    for cell in results["zero"]["cells"]:
        assert cell["mean_memory_tokens"] == CFG.max_memory_tokens
        assert (cell["accuracy"], cell["boxed"], cell["errors"]) == (0.0, 0, 0)


def test_table_has_a_column_per_checkpoint_and_a_row_per_cell(evaluated):
    results, _ = evaluated
    table = format_table(results, CFG)
    lines = table.strip().splitlines()
    assert lines[0] == "| task | length | SFT | SFT+GRPO | zero |"
    rows = [[part.strip() for part in line.strip("|").split("|")] for line in lines[2:]]
    assert len(rows) == len(CFG.tasks) * (len(CFG.lengths) + 1)
    for task in CFG.tasks:
        for length in CFG.lengths:
            [row] = [r for r in rows if r[:2] == [task, length_label(length)]]
            accuracy = next(c["accuracy"] for c in results["SFT"]["cells"]
                            if (c["task"], c["length"]) == (task, length))
            assert row[2] == row[3] == f"{100 * accuracy:.1f}%" and row[4] == "0.0%"
        assert [r for r in rows if r[:2] == [f"**{task}**", "**mean**"]]


def test_write_results_round_trips(evaluated, tmp_path):
    results, _ = evaluated
    paths = write_results(results, CFG, tmp_path / "eval")
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["plot"].stat().st_size > 1000
    assert paths["table"].read_text() == format_table(results, CFG)
    loaded, cfg = read_results(tmp_path / "eval")
    assert cfg == CFG
    assert loaded == json.loads(json.dumps(results))


def test_scoring_counts_right_answers_as_correct(checkpoint):
    tokenizer = load_tokenizer(checkpoint)
    stop = tokenizer.stop_ids[0]
    samples = [make_task(name, tokenizer, 256, seed=7).sample(0) for name in ("niah_single", "vt")]

    def answered(sample, answer, error=None):
        memory = Conversation("memory", [], [100, 101, 102, stop], [0.0] * 4, "stop")
        return Trajectory(sample.index, 0, [memory, Conversation("final", [], [], [], "stop")],
                          answer=answer, error=error)

    right = [answered(s, f"The value is \\boxed{{{s.reward_answer}}}") for s in samples]
    scores = score_trajectories(right, samples, tokenizer.stop_ids)
    assert scores["accuracy"] == scores["string_match"] == 1.0
    assert (scores["correct"], scores["boxed"], scores["errors"]) == (2, 2, 0)
    assert scores["mean_memory_tokens"] == 3.0 and scores["mean_chunks"] == 1.0
    wrong = [answered(samples[0], "\\boxed{12}"), answered(samples[1], samples[1].reward_answer, error="oom")]
    scores = score_trajectories(wrong, samples)
    assert scores["accuracy"] == scores["string_match"] == 0.0
    assert (scores["correct"], scores["boxed"], scores["errors"]) == (0, 1, 1)
    # Unboxed but literally right: no reward (the trained format), full string match.
    unboxed = score_trajectories([answered(samples[0], f"It is {samples[0].answers[0]}.")], samples[:1])
    assert (unboxed["accuracy"], unboxed["string_match"]) == (0.0, 1.0)
    # Several answers (the variable chain's names) are right in any order, as RULER's string_match_all takes them.
    names = samples[1].answers
    assert len(names) > 1
    reversed_names = score_trajectories([answered(samples[1], f"\\boxed{{{', '.join(reversed(names))}}}")], samples[1:])
    assert reversed_names["accuracy"] == reversed_names["string_match"] == 1.0


def test_config_and_flag_checks(checkpoint):
    with pytest.raises(ValueError, match="not a held-out seed"):
        EvalConfig(seed=1002)
    with pytest.raises(ValueError, match="unknown task"):
        EvalConfig(tasks=("niah_single", "nope"))
    with pytest.raises(ValueError, match="chunk_boundary must be one of"):
        EvalConfig(chunk_boundary="page")
    with pytest.raises(ValueError, match="key_split must be one of"):
        EvalConfig(key_split="test")
    assert parse_lengths("1024, 4K,1024", long=True) == (1024, 4096, 262144, 1048576)
    with pytest.raises(ValueError, match="'abc' is not a positive number"):
        parse_lengths("1024,abc")
    assert parse_checkpoints([str(checkpoint), f"B={checkpoint}"]) == {"export": checkpoint, "B": checkpoint}
    with pytest.raises(ValueError, match="two checkpoints are named"):
        parse_checkpoints([str(checkpoint), str(checkpoint)])


@pytest.mark.parametrize("args, message", [
    (["--checkpoint=A={missing}"], "does not exist"),
    (["--checkpoint={checkpoint}", "--lengths=1024,big"], "'big' is not a positive number"),
    (["--checkpoint={checkpoint}", "--tasks=niah_single,nope"], "unknown task"),
])
def test_cli_errors_are_one_line(checkpoint, tmp_path, args, message):
    args = [a.format(missing=tmp_path / "missing", checkpoint=checkpoint) for a in args]
    done = subprocess.run([sys.executable, "-m", "memagent_jax.evaluate", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert not (checkpoint / "eval").exists()


def test_cli_reads_the_chunk_boundary_saved_with_the_checkpoint(checkpoint, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    AgentConfig(chunk_size=64, max_memory_tokens=8, max_answer_tokens=8, max_question_tokens=64,
                chunk_boundary="token").save_sizes(folder)
    for extra, expected in (([], "token"), (["--chunk_boundary=line"], "line")):
        out = tmp_path / f"eval_{expected}"
        done = subprocess.run([sys.executable, "-m", "memagent_jax.evaluate", f"--checkpoint={folder}",
                               "--tasks=niah_single", "--lengths=256", "--samples=1", "--batch=1", f"--out={out}",
                               *extra], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"})
        assert done.returncode == 0, done.stderr
        results = json.loads((out / "results.json").read_text())
        assert results["config"]["chunk_boundary"] == expected and results["config"]["chunk_size"] == 64
        [cell] = results["checkpoints"][next(iter(results["checkpoints"]))]["cells"]
        if expected == "token":  # plain cuts: every chunk but the last holds exactly 64 tokens
            assert cell["mean_chunks"] == -(-cell["document_tokens"] // 64)
        else:  # line cuts hold 32-64 tokens each
            assert cell["mean_chunks"] > cell["document_tokens"] / 64
