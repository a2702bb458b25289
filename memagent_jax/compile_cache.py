"""JAX's persistent compilation cache for every command: compiled programs are kept on disk and a later
process with the same program, shapes, devices, XLA flags and compiler options loads them instead of
compiling again (on CPU the quickstart's engine and update take minutes to compile).

Where: $MEMAGENT_COMPILATION_CACHE, else $JAX_COMPILATION_CACHE_DIR (JAX's own variable), else
$XDG_CACHE_HOME/memagent_jax/jax (~/.cache/memagent_jax/jax). MEMAGENT_COMPILATION_CACHE=off turns it off.

JAX keys each entry on the program and everything that changes its compilation (jax/jaxlib versions,
backend, devices, compiler options, XLA_FLAGS), so a stale entry is never loaded; programs that donate
buffers are cached like any other (the donation is part of the program). With several processes only
process 0 writes entries (JAX's rule); the others read them where the folder is shared.
The folder is trusted: whoever can write to it can run code in processes that read it.
"""

from __future__ import annotations

import os
import pathlib
import warnings

import jax
from absl import logging

ENV = "MEMAGENT_COMPILATION_CACHE"
OFF = frozenset({"off", "0", "false", "no", "none"})
# Programs that compile faster than this are not written: loading an entry back costs tens of milliseconds
# on CPU, about what compiling such a program does. The engine's and the update's take seconds each.
MIN_COMPILE_SECONDS = 0.1


def default_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "memagent_jax" / "jax"


def cache_dir(value: str | None = None) -> pathlib.Path | None:
    """The folder the cache would use (None: off), from `value` or the environment."""
    if value is None:
        value = os.environ.get(ENV, "").strip()
    if value.lower() in OFF:
        return None
    if value:
        return pathlib.Path(value).expanduser()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return pathlib.Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).expanduser()
    return default_dir()


def enable(value: str | None = None) -> pathlib.Path | None:
    """Turns the cache on (before the first compilation); returns its folder, or None when it is off or its
    folder cannot be made (a warning: the run goes on compiling everything)."""
    folder = cache_dir(value)
    if folder is None:
        jax.config.update("jax_compilation_cache_dir", None)
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        warnings.warn(f"compilation cache off: cannot create {folder}: {err}", stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    # No size floor (0 would let JAX pick one for remote filesystems; -1 keeps small local entries too).
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return folder


def disable_for_cpu_processes() -> None:
    """Turns the cache off in a CPU run of several processes (call after jax.distributed.initialize).

    Their programs talk through gloo, and with jax 0.12.1 a program loaded back from the cache did not: a
    two-process CPU run that resumed with a filled cache hung in its first cross-process step (with jax 0.10.2
    it did not). GPU and TPU runs keep the cache."""
    if jax.process_count() > 1 and jax.default_backend() == "cpu":
        jax.config.update("jax_enable_compilation_cache", False)
        logging.info("compilation cache off: a CPU run of %d processes compiles its own programs",
                     jax.process_count())
