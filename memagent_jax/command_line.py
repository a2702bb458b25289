"""Command lines on absl flags, the same whether run as `python -m memagent_jax.X` or as the console script
setup.py installs (memagent-train, memagent-answer, ...).

`--help` prints the command's description and its own flags, then exits 0. (absl's own --help lists the key
flags of the module named by sys.argv[0], which for a console script is the wrapper setuptools writes, so it
listed none, and it exits 1.) Flag names read the same with hyphens: `--show-memory` is `--show_memory`.

Two kinds of command:
- `run_app`: a module that is only a command (train, evaluate, answer, check_config) defines its flags at
  import on absl's FLAGS and runs under absl.app (logging flags, UsageError).
- `parse_command`: a library module with a command line (the data builders, sweep) defines its flags on a
  fresh FlagValues each call, since those modules import one another and share flag names (--seed, --out_dir).

Every `run_app` command turns on the persistent compilation cache (compile_cache.py) before its main runs.
"""

from __future__ import annotations

import sys
import textwrap
from typing import Any, Callable, Iterable, Sequence

from absl import app, flags

HELP_ARGS = frozenset({"--help", "-help", "-h", "--helpshort", "-?"})


def underscore_flag_names(argv: Sequence[str]) -> list[str]:
    """`--show-memory=x` -> `--show_memory=x` (names only, values untouched), up to a `--` separator."""
    out: list[str] = []
    for index, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[index:])
        if arg.startswith("--"):
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + sep + value
        out.append(arg)
    return out


def expand_list_flags(argv: Sequence[str], names: Iterable[str]) -> list[str]:
    """`--sweep a b --root r` -> `--sweep a --sweep=b --root r`: list flags take every following value, as
    argparse's nargs="+" did, and absl reads each repetition of a multi-string flag as one more value."""
    names = set(names)
    out: list[str] = []
    current, needs_value = None, False
    for arg in argv:
        if arg.startswith("-"):
            name = arg.lstrip("-").partition("=")[0]
            current = name if name in names else None
            needs_value = current is not None and "=" not in arg
            out.append(arg)
        elif needs_value or current is None:
            needs_value = False
            out.append(arg)
        else:
            out.append(f"--{current}={arg}")
    return out


def _help_text(doc: str | None, flag_text: str) -> str:
    # absl heads each module's flags with the module's name or file; one command's flags need no heading.
    lines = [line for line in flag_text.splitlines() if line.startswith(" ")]
    doc = (doc or "").strip()
    if "\n" not in doc:  # a one-line description: wrapped like the flags
        doc = textwrap.fill(doc, 100)
    return f"{doc}\n\nflags:\n" + "\n".join(lines)


def run_app(main: Callable[[list[str]], Any], module_name: str, *,
            flags_parser: Callable[[list[str]], list[str]] | None = None, key_flags: Sequence[str] = ()) -> None:
    """absl.app.run(main) for the module `module_name` (its `__name__`), whose flags are defined on FLAGS.

    `key_flags`: flags defined elsewhere that are this command's own too (train's --config, defined by
    ml_collections on behalf of configuration.py)."""
    # absl files a flag under its defining module, and under sys.argv[0] when that module is __main__.
    owner = sys.argv[0] if module_name == "__main__" else module_name
    doc = sys.modules[module_name].__doc__
    for name in key_flags:
        flags.FLAGS.register_key_flag_for_module(owner, flags.FLAGS[name])
    # absl's usage (printed after a UsageError) lists the key flags of sys.argv[0]: a console script's too.
    for flag in flags.FLAGS.get_key_flags_for_module(owner):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    parse = flags_parser or app.parse_flags_with_usage

    def parse_or_help(argv: list[str]) -> list[str]:
        argv = underscore_flag_names(argv)
        if HELP_ARGS.intersection(argv[1:]):
            print(_help_text(doc, flags.FLAGS.module_help(owner)))
            sys.exit(0)
        return parse(argv)

    def main_with_cache(argv: list[str]) -> Any:
        from memagent_jax import compile_cache  # imports jax: after parsing, so --help stays fast

        compile_cache.enable()
        return main(argv)

    app.run(main_with_cache, flags_parser=parse_or_help)


def parse_command(argv: Sequence[str], define: Callable[[flags.FlagValues], None], *, prog: str, doc: str | None,
                  list_flags: Sequence[str] = ()) -> flags.FlagValues:
    """The flags `define` puts on a fresh FlagValues, parsed from `argv` (the arguments after the program
    name). --help prints them and exits 0; a bad or missing flag, or a stray argument, exits 2 with one
    `prog: error: ...` line, as argparse did."""
    flag_values = flags.FlagValues()
    define(flag_values)
    argv = expand_list_flags(underscore_flag_names(argv), list_flags)
    if HELP_ARGS.intersection(argv):
        print(_help_text(doc, flag_values.get_help(include_special_flags=False)))
        sys.exit(0)
    try:
        rest = flag_values([prog, *argv])
    except flags.Error as err:
        _usage_error(prog, str(err))
    if len(rest) > 1:
        _usage_error(prog, f"unexpected arguments: {' '.join(rest[1:])}")
    return flag_values


def _usage_error(prog: str, message: str) -> None:
    print(f"{prog}: error: {message} (see --help)", file=sys.stderr)
    sys.exit(2)
