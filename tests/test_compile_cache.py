"""The persistent compilation cache (memagent_jax/compile_cache.py): where it goes, "off", and that a second
process loads what the first one compiled instead of compiling it again."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from memagent_jax import compile_cache

ROOT = pathlib.Path(__file__).resolve().parent.parent

# One program worth caching (it takes longer than MIN_COMPILE_SECONDS to compile on CPU), run in a fresh
# process; prints the number of cache hits and the XLA compile time JAX reports.
_CHILD = """
import json, sys, time
import jax, jax.numpy as jnp
from memagent_jax import compile_cache
folder = compile_cache.enable()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # kept however fast this machine compiles
hits, compile_seconds = [], []
jax.monitoring.register_event_listener(lambda e, **_: hits.append(e) if e.endswith("/cache_hits") else None)
jax.monitoring.register_event_duration_secs_listener(
    lambda e, s, **_: compile_seconds.append(s) if e.endswith("backend_compile_duration") else None)

@jax.jit
def program(x):
    for i in range(40):  # unrolled: a program that takes ~1 s to compile, cheap to run
        x = jnp.sin(x) * (i + 1) + jnp.cos(x @ x.T)[:, : x.shape[1]]
    return x

program(jnp.ones((8, 8))).block_until_ready()
print(json.dumps({"folder": str(folder), "hits": len(hits), "compile_seconds": sum(compile_seconds)}))
"""


def _child(env):
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def clean_env(monkeypatch):
    for name in (compile_cache.ENV, "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_folder_from_the_environment(clean_env, tmp_path):
    clean_env.setenv("HOME", str(tmp_path))
    assert compile_cache.cache_dir() == tmp_path / ".cache" / "memagent_jax" / "jax"
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.cache_dir() == tmp_path / "xdg" / "memagent_jax" / "jax"
    clean_env.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert compile_cache.cache_dir() == tmp_path / "jax"
    clean_env.setenv(compile_cache.ENV, str(tmp_path / "ours"))
    assert compile_cache.cache_dir() == tmp_path / "ours"
    for off in ("off", "OFF", "0", "none"):
        clean_env.setenv(compile_cache.ENV, off)
        assert compile_cache.cache_dir() is None


def test_enable_sets_jax_config_and_off_clears_it(tmp_path):
    before = jax.config.jax_compilation_cache_dir
    try:
        folder = compile_cache.enable(str(tmp_path / "cache"))
        assert folder == tmp_path / "cache" and folder.is_dir()
        assert jax.config.jax_compilation_cache_dir == str(folder)
        assert jax.config.jax_persistent_cache_min_compile_time_secs == compile_cache.MIN_COMPILE_SECONDS
        assert jax.config.jax_persistent_cache_min_entry_size_bytes == -1
        assert compile_cache.enable("off") is None
        assert jax.config.jax_compilation_cache_dir is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_unwritable_folder_warns_and_leaves_the_cache_off(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="compilation cache off"):
        assert compile_cache.enable(str(blocker / "cache")) is None


def test_a_second_process_loads_the_first_ones_compile(tmp_path):
    env = {**os.environ, compile_cache.ENV: str(tmp_path / "cache"), "PYTHONPATH": str(ROOT),
           "JAX_PLATFORMS": "cpu"}
    first = _child(env)
    entries = [p for p in (tmp_path / "cache").iterdir() if p.name.startswith("jit_program")]
    assert first["hits"] == 0 and entries, "the first process wrote no cache entry"
    second = _child(env)
    assert second["hits"] >= 1
    assert second["compile_seconds"] < first["compile_seconds"] / 2, (first, second)
