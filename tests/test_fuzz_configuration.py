"""Fuzzed command-line config overrides: any `--config=...` and `--config.a.b=value` either parses (keeping every
overridden field's type) or raises ConfigError."""

from __future__ import annotations

import pathlib

import ml_collections
import pytest
from absl import flags
from hypothesis import given
from hypothesis import strategies as st

from memagent_jax.run import configuration

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs" / "quickstart.py")


def _paths(node: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        out.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            out += _paths(value, f"{prefix}{key}.")
    return out


CONFIG = configuration.load_config_file(QUICKSTART)
KNOWN_KEYS = sorted(_paths(CONFIG))

keys = (st.sampled_from(KNOWN_KEYS)
        | st.builds(lambda k, extra: f"{k}.{extra}", st.sampled_from(KNOWN_KEYS), st.text(max_size=6))
        | st.text(max_size=12))
values = (st.text(max_size=20) | st.integers().map(str) | st.floats().map(repr) | st.sampled_from(
    ["True", "false", "None", "()", "(1,", "[1, 2]", "{'a': 1}", "({'path': 'x', 'weight': 2},)", "1e999", "nan",
     "-0", "0x10", "__import__('os')", "'quoted'", "(" * 50 + ")" * 50, "\x00", "bfloat16", "cosine"]))
override = st.builds(lambda k, v: f"--config.{k}={v}", keys, values) | st.builds(lambda k: f"--config.{k}", keys)
config_arg = st.just(f"--config={QUICKSTART}") | st.sampled_from(
    ["--config=", "--config=/no/such/config.py", f"--config={REPO / 'configs'}", f"--config={QUICKSTART}:arg",
     f"--config={REPO / 'README.md'}"])


def _parse(argv: list[str]) -> ml_collections.ConfigDict:
    flag_values = flags.FlagValues()  # fresh per case: absl flags are defined once per FlagValues
    holder = configuration.define_config_flag(flag_values=flag_values, sys_argv=argv)
    configuration.parse_flags(argv, flag_values=flag_values)
    return holder.value


def _lookup(config: ml_collections.ConfigDict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


@given(config=config_arg, overrides=st.lists(override, max_size=3))
def test_overrides_parse_or_raise_config_error(count_case, config: str, overrides: list[str]) -> None:
    count_case()
    try:
        parsed = _parse(["prog", config, *overrides])
    except configuration.ConfigError as err:
        assert str(err)
        return
    assert config == f"--config={QUICKSTART}"
    for arg in overrides:
        key = arg[len("--config."):].partition("=")[0]
        before, after = _lookup(CONFIG, key), _lookup(parsed, key)
        # Locked, type-safe configs: an override never changes a field's kind (an int may widen to a float).
        assert type(after) is type(before) or (isinstance(before, float) and type(after) is int) or before is None, \
            f"{arg} turned {before!r} into {after!r}"


@pytest.mark.parametrize("path", ["", "/no/such/config.py", str(REPO / "configs")])
def test_a_config_path_that_is_not_a_file_is_a_config_error(path: str) -> None:
    with pytest.raises(configuration.ConfigError, match="no config file"):
        _parse(["prog", f"--config={path}"])


def test_a_config_file_that_is_not_python_is_a_config_error() -> None:
    with pytest.raises(configuration.ConfigError, match="README.md: not a Python config file"):
        _parse(["prog", f"--config={REPO / 'README.md'}"])
