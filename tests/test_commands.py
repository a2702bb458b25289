"""Every command of setup.py: `--help` lists its own flags and exits 0, run as `python -m memagent_jax.X` and
as its console script (the entry-point function called the way setuptools' wrapper calls it)."""

import pathlib
import re
import subprocess
import sys

import pytest

from memagent_jax.command_line import expand_list_flags, parse_command, underscore_flag_names

REPO = pathlib.Path(__file__).resolve().parents[1]

# Each console script with flags that only it defines (absl shows booleans as --[no]name).
OWN_FLAGS = {
    "memagent-train": ("config",),
    "memagent-evaluate": ("checkpoint", "data", "lengths", "sampling", "max_records"),
    "memagent-answer": ("checkpoint", "document", "question", "show_memory"),
    "memagent-check-config": ("config", "devices", "device_gb"),
    "memagent-sweep": ("config", "sweep", "set", "root", "dry_run", "slurm"),
    "memagent-ablation": ("config",),
    "memagent-build-hotpotqa": ("hotpotqa", "out_dir", "num_docs", "num_questions"),
    "memagent-build-hotpotqa-train": ("hotpotqa", "out", "eval_hotpotqa", "on_error"),
    "memagent-build-ruler-qa": ("task", "data", "tokenizer", "target_tokens", "out_dir"),
    "memagent-export-tasks": ("task", "tokenizer", "target_tokens", "out", "key_split"),
}


def _entry_points() -> dict[str, tuple[str, str]]:
    """script -> (module, function), as setup.py declares them."""
    text = (REPO / "setup.py").read_text()
    return {script: (module, function)
            for script, module, function in re.findall(r'"(memagent-[\w-]+)=([\w.]+):(\w+)"', text)}


def test_setup_py_installs_every_command():
    assert set(_entry_points()) == set(OWN_FLAGS)


def _assert_help(done: subprocess.CompletedProcess, script: str) -> None:
    assert done.returncode == 0, done.stderr
    for name in OWN_FLAGS[script]:
        assert re.search(rf"^  --(\[no\])?{name}\b", done.stdout, re.MULTILINE), (name, done.stdout)
    assert "--verbosity" not in done.stdout  # absl's own flags stay under --helpfull


@pytest.mark.parametrize("script", sorted(OWN_FLAGS))
def test_help_lists_the_commands_own_flags_as_module_and_as_console_script(script, tmp_path):
    module, function = _entry_points()[script]
    as_module = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path, capture_output=True,
                               text=True, timeout=300)
    _assert_help(as_module, script)
    # What setuptools' console-script wrapper does: argv[0] is the script, then sys.exit(function()).
    wrapper = (f"import sys; sys.argv[0] = {str(tmp_path / 'bin' / script)!r}; "
               f"from {module} import {function}; sys.exit({function}())")
    as_script = subprocess.run([sys.executable, "-c", wrapper, "--help"], cwd=tmp_path, capture_output=True,
                               text=True, timeout=300)
    _assert_help(as_script, script)


def test_flag_names_read_the_same_with_hyphens():
    assert underscore_flag_names(["--show-memory", "--out-dir=a-b", "-x", "a-b", "--", "--keep-this"]) == \
        ["--show_memory", "--out_dir=a-b", "-x", "a-b", "--", "--keep-this"]


def test_list_flags_take_every_following_value():
    argv = ["--sweep", "a=1,2", "b=3", "--root", "r", "--set=c=4", "d=5", "--dry-run"]
    assert expand_list_flags(argv, ("sweep", "set")) == \
        ["--sweep", "a=1,2", "--sweep=b=3", "--root", "r", "--set=c=4", "--set=d=5", "--dry-run"]


def _define(flag_values):
    from absl import flags

    flags.DEFINE_string("out", None, "output", flag_values=flag_values)
    flags.mark_flag_as_required("out", flag_values=flag_values)


def test_bad_flags_and_stray_arguments_exit_2_with_one_line(capsys):
    assert parse_command(["--out", "x"], _define, prog="prog", doc="").out == "x"
    for argv, message in ((["--ou=x"], "Unknown command line flag 'ou'"), ([], "--out must have a value"),
                          (["--out=x", "stray"], "unexpected arguments: stray")):
        with pytest.raises(SystemExit) as raised:
            parse_command(argv, _define, prog="prog", doc="")
        assert raised.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("prog: error: ") and message in err and err.count("\n") == 1
