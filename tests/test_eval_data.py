"""`evaluate --data` on files in RULER's own layout, {length}/{task}/validation.jsonl, made by RULER's generator
(tests/fixtures/ruler): each file is named by its task, scored with string_match_all and bucketed by its length
folder, and the tables say which task and length each row is."""

from __future__ import annotations

import pathlib
import shutil

from memagent_jax.run.eval_data import open_eval_files, ruler_layout
from memagent_jax.run.eval_report import format_file_table, summarize
from memagent_jax.run.eval_store import ResultStore

BASE = pathlib.Path(__file__).parent / "fixtures" / "ruler" / "base"
TASKS = ["niah_multikey_2", "niah_multiquery", "niah_multivalue", "niah_single_1", "vt"]


def _copy(root: pathlib.Path, *folders: str) -> None:
    """The fixture files under root/{folders}/{task}/validation.jsonl (a length folder, maybe with data/)."""
    for task in TASKS:
        target = root.joinpath(*folders, task)
        target.mkdir(parents=True)
        shutil.copy(BASE / "1024" / task / "validation.jsonl", target)


def _table(files, tmp_path: pathlib.Path) -> tuple[dict, str]:
    store = ResultStore(tmp_path / "out" / "samples.jsonl", {})
    summary = summarize({"A": tmp_path}, files, store)
    return summary, format_file_table(summary, "greedy")


def test_ruler_files_are_named_by_task_and_bucketed_by_their_length_folder() -> None:
    files = open_eval_files([str(BASE / "1024" / "*" / "validation.jsonl")])
    assert [f.task for f in files] == TASKS
    assert all(f.fmt == "ruler" and f.metric == "string_match_all" for f in files)
    # The rows' own lengths (987 to 1024) all fall in the folder's bucket.
    assert [f.buckets for f in files] == [[("length", 1024)] * 2] * len(TASKS)
    assert [f.sample(1).task for f in files] == TASKS
    assert files[4].questions == ["Find all variables that are assigned the value 47194 in the text above.",
                                  "Find all variables that are assigned the value 54131 in the text above."]


def test_tables_show_each_task_once_per_length(tmp_path: pathlib.Path) -> None:
    _copy(tmp_path, "1024")
    _copy(tmp_path, "4096", "data")  # RULER's run.sh layout: {length}/data/{task}/validation.jsonl
    files = open_eval_files([str(tmp_path / "1024" / "*" / "validation.jsonl"),
                             str(tmp_path / "4096" / "data" / "*" / "validation.jsonl")])
    summary, table = _table(files, tmp_path)
    cells = summary["checkpoints"]["A"]["by_file"]
    assert [(c["file"], c["bucket"], c["pending"]) for c in cells] == \
        [(task, ["length", n], 2) for n in (1024, 4096) for task in TASKS]
    assert "| niah_single_1 | string_match_all | 1024 tok | 2 | – (0/2) |" in table
    assert "| vt | string_match_all | 4096 tok | 2 | – (0/2) |" in table
    # Files are still listed by path, which tells the two niah_single_1 files apart.
    assert [f["file"] for f in summary["files"]][3::5] == ["1024/niah_single_1/validation.jsonl",
                                                           "4096/data/niah_single_1/validation.jsonl"]


def test_same_task_and_length_from_two_runs_keep_their_paths(tmp_path: pathlib.Path) -> None:
    _copy(tmp_path / "run1", "1024")
    _copy(tmp_path / "run2", "1024")
    files = open_eval_files([str(tmp_path / "run*" / "1024" / "vt" / "validation.jsonl")])
    summary, _ = _table(files, tmp_path)
    assert [c["file"] for c in summary["checkpoints"]["A"]["by_file"]] == \
        ["run1/1024/vt/validation.jsonl", "run2/1024/vt/validation.jsonl"]


def test_a_folder_number_below_the_rows_lengths_is_no_length(tmp_path: pathlib.Path) -> None:
    _copy(tmp_path, "512")  # rows of up to 1024 tokens cannot have been made for 512: bucket by their own length
    files = open_eval_files([str(tmp_path / "512" / "niah_multivalue" / "validation.jsonl")])
    assert files[0].buckets == [("length", 994), ("length", 1024)]
    assert ruler_layout(tmp_path / "512" / "vt" / "validation.jsonl") == ("vt", 512)
    assert ruler_layout(tmp_path / "runs" / "vt" / "validation.jsonl") == ("vt", None)
    assert ruler_layout(tmp_path / "1024" / "vt_1024.jsonl") == (None, None)
