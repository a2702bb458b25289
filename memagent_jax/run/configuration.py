"""Run configs: ml_collections ConfigDicts from `configs/*.py`, overridden on the command line.

Every entry point defines `--config` with `define_config_flag` and parses argv with `parse_flags`, so that
`--config.model.num_layers=4` overrides any field, while an unknown key or a value of the wrong type stops
the program with one message naming the key, before anything is built or compiled.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import runpy
from typing import Any, Callable, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags
from ml_collections.config_dict import placeholder

from memagent_jax import command_line
from memagent_jax.model.config import ModelConfig, RopeScaling, get_preset
from memagent_jax.model.sharding import DEFAULT_RULES, MESH_AXES, rules_from_config
from memagent_jax.run.config_error import ConfigError


def model_section(preset: str, **overrides: Any) -> ml_collections.ConfigDict:
    """All ModelConfig fields of a preset as a ConfigDict, so any of them can be overridden by flag.

    `checkpoint`: an HF checkpoint folder; when set, its config.json defines the architecture instead.
    `rope_scaling`: Llama 3's scaling, or placeholders (None: no scaling) that keep each field's type, so
    `--config.model.rope_scaling.factor=8.0` still turns it on.
    """
    fields = dataclasses.asdict(get_preset(preset, **overrides))
    scaling = fields.pop("rope_scaling")
    section = ml_collections.ConfigDict(fields)
    section.checkpoint = ""
    section.rope_scaling = ml_collections.ConfigDict(scaling or {
        "factor": placeholder(float), "low_freq_factor": placeholder(float), "high_freq_factor": placeholder(float),
        "original_max_position_embeddings": placeholder(int)})
    return section


def mesh_section(data: int = 1, fsdp: int = -1, tensor: int = 1) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def sharding_section(rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"rules": tuple(tuple(r) for r in rules)})


def tensor_parallel_rules(rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> tuple[tuple[str, Any], ...]:
    """The rules with the model dimension (`embed`) unsharded: pure tensor parallelism, so a decode step never
    all-gathers FSDP-sharded weights (a rollout layout)."""
    return tuple((name, None if name == "embed" else target) for name, target in rules)


def optimizer_section(learning_rate: float, warmup_steps: int, weight_decay: float = 0.0,
                      grad_clip: float = 1.0, schedule: str = "constant",
                      end_lr_fraction: float = 0.0) -> ml_collections.ConfigDict:
    """Every OptimizerConfig field (rl/optimizer.py): a linear warm-up, then `schedule`; a cosine or linear
    decay spans the phase's steps unless total_steps is set (a placeholder: None); Adam's moments in float32
    (state_dtype)."""
    return ml_collections.ConfigDict({
        "learning_rate": learning_rate, "warmup_steps": warmup_steps, "schedule": schedule,
        "total_steps": placeholder(int),
        "end_lr_fraction": end_lr_fraction, "weight_decay": weight_decay, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
        "grad_clip": grad_clip, "state_dtype": "float32"})


def copy_section(steps: int, batch_size: int = 64, learning_rate: float = 3e-3, digit_fraction: float = 0.0,
                 max_gap_tokens: int = 0, row_len: int = 256) -> ml_collections.ConfigDict:
    """The copy warm-up phase (rl/copy_warmup.py): random strings of 8-64 tokens repeated (a share of them
    digits only, optionally after a gap of filler text), packed into `row_len`-token rows. Models trained
    from scratch need it; pretrained checkpoints already copy (steps=0)."""
    return ml_collections.ConfigDict({
        "steps": steps, "batch_size": batch_size, "min_tokens": 8, "max_tokens": 64,
        "digit_fraction": digit_fraction, "max_gap_tokens": max_gap_tokens, "row_len": row_len,
        "rows_per_micro": 8, "ppo_epochs": 1, "optimizer": optimizer_section(learning_rate, 20)})


def retrieval_section(steps: int, tasks: Sequence[str] = ("niah_single",), lengths: Sequence[int] = (64, 128),
                      batch_size: int = 32, learning_rate: float = 3e-3, row_len: int = 512,
                      boxed_answer: bool = False, answer_prompt_fraction: float = 0.0,
                      question_first: bool = False) -> ml_collections.ConfigDict:
    """The retrieval warm-up phase (rl/retrieval_warmup.py): short documents of the given tasks and lengths,
    each followed by its question and then its evidence lines (and, with `boxed_answer`, the boxed final
    answer; loss on those), packed into `row_len`-token rows; `answer_prompt_fraction` of each batch instead
    in the agent's final-answer prompt (question, the document in the memory's place; then evidence lines and
    boxed answer); `question_first` puts the question before the document, as the agent's memory-update prompt
    does. For models trained from scratch, after the copy warm-up; pretrained checkpoints skip it
    (steps=0)."""
    return ml_collections.ConfigDict({
        "steps": steps, "batch_size": batch_size, "num_samples": 100_000, "tasks": tuple(tasks),
        "lengths": tuple(int(n) for n in lengths), "sources": (), "row_len": row_len, "rows_per_micro": 8,
        "ppo_epochs": 1,
        "boxed_answer": boxed_answer, "answer_prompt_fraction": float(answer_prompt_fraction),
        "question_first": question_first, "optimizer": optimizer_section(learning_rate, 20)})


def output_sections(config: ml_collections.ConfigDict, checkpoint_every: int = 10, keep: int = 3) -> None:
    """Adds the checkpoint and metrics sections every training config has."""
    config.checkpoint = ml_collections.ConfigDict({"every": checkpoint_every, "keep": keep, "async_save": True})
    config.metrics = ml_collections.ConfigDict({"tensorboard": True, "jsonl": True, "progress": True})
    # Per-device memory checked before the run: device_gb unset (None) = the detected device's; enforce=False
    # only prints.
    config.budget = ml_collections.ConfigDict({"device_gb": placeholder(float), "enforce": True})


def build_model_config(section: ml_collections.ConfigDict) -> ModelConfig:
    """ModelConfig from a config's `model` section (every key but `checkpoint` is a ModelConfig field)."""
    values = {key: value for key, value in section.items() if key != "checkpoint"}
    values["rope_scaling"] = _rope_scaling(values["rope_scaling"])
    try:
        return ModelConfig(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config.model: {err}") from err


def _rope_scaling(section: ml_collections.ConfigDict) -> RopeScaling | None:
    """None when the factor is unset; its other fields default to RopeScaling's when unset."""
    given = {key: value for key, value in section.items() if value is not None}
    if "factor" not in given:
        if given:
            raise ConfigError(f"config.model.rope_scaling: {sorted(given)} set but factor is not; set factor to "
                              "scale, or leave them all unset")
        return None
    try:
        return RopeScaling(**given)
    except TypeError as err:
        raise ConfigError(f"config.model.rope_scaling: {err}") from err


def build_rules(section: ml_collections.ConfigDict) -> tuple[tuple[str, Any], ...]:
    try:
        return rules_from_config(section.rules)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config.sharding.rules: {err}") from err


def mesh_shape(section: ml_collections.ConfigDict) -> dict[str, int]:
    unknown = set(section.keys()) - set(MESH_AXES)
    if unknown:
        raise ConfigError(f"config.mesh: unknown axes {sorted(unknown)}; expected {MESH_AXES}")
    return {axis: int(section[axis]) for axis in MESH_AXES}


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """Runs a config file's get_config() and checks its keys (config_keys.py): a key no part of the run reads,
    or one the run needs and the file lacks, is a ConfigError naming it. Every command that takes a config
    loads it here first, before anything is built."""
    from memagent_jax.run.config_keys import check_run_keys  # imports the settings' dataclasses

    # runpy would run a folder's __main__ or fail with ImportError/FileNotFoundError that name no flag.
    if not os.path.isfile(path):
        raise ConfigError(f"--config={path}: no config file there (give a configs/*.py file)")
    try:
        module = runpy.run_path(path)
    except SyntaxError as err:  # e.g. --config=README.md
        raise ConfigError(f"--config={path}: not a Python config file: {err}") from None
    if "get_config" not in module:
        raise ConfigError(f"{path} defines no get_config()")
    config = module["get_config"]()
    check_run_keys(config, where=path)
    return config


def define_config_flag(
    name: str = "config",
    default: str | None = None,
    flag_values: flags.FlagValues = flags.FLAGS,
    sys_argv: list[str] | None = None,
) -> flags.FlagHolder:
    """Defines --config. config_flags finds the override flags in sys.argv unless `sys_argv` is given
    (tests parse their own argv)."""
    # lock_config: overriding a key that the file does not define is an error, never a new field.
    return config_flags.DEFINE_config_file(
        name, default, "Path to a configs/*.py file; override fields with --config.a.b=value.",
        flag_values=flag_values, lock_config=True, sys_argv=sys_argv,
    )


def _config_path(argv: Sequence[str], name: str) -> str | None:
    """The file of --name=FILE or --name FILE (less a `:argument` for get_config)."""
    for index, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1].split(":", 1)[0]
        if arg == f"--{name}" and index + 1 < len(argv):
            return argv[index + 1].split(":", 1)[0]
    return None


def _check_override_keys(config: ml_collections.ConfigDict, argv: Sequence[str], name: str) -> None:
    prefix = f"--{name}."
    for arg in argv:
        if not arg.startswith(prefix):
            continue
        key = arg[len(prefix):].split("=", 1)[0]
        node: Any = config
        walked: list[str] = []
        for part in key.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                where = ".".join(walked) or "the top level"
                known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                close = difflib.get_close_matches(part, known, n=1)
                hint = f"did you mean '{'.'.join([*walked, close[0]])}'? " if close else ""
                raise ConfigError(f"unknown config key '{key}': no field '{part}' under {where}; {hint}"
                                  f"known fields there: {known}")
            node = node[part]
            walked.append(part)


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS, name: str = "config") -> list[str]:
    """Parses argv; bad config keys or values raise ConfigError naming the key (absl's messages vary)."""
    path = _config_path(argv[1:], name)
    if path is not None:
        _check_override_keys(load_config_file(path), argv[1:], name)
    try:
        return flag_values(list(argv))
    except flags.Error as err:
        raise ConfigError(f"bad command-line value: {err}") from err
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"bad config override: {err}") from err


def absl_flags_parser(argv: Sequence[str]) -> list[str]:
    """For absl.app.run(main, flags_parser=...): prints one clear line and exits 2 on a config error."""
    try:
        return parse_flags(argv)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None


def run_main(main: Callable[[list[str]], None], module_name: str = "__main__") -> None:
    """absl.app.run with config-aware flag parsing for the command `module_name` (its `__name__`, so that
    --help lists its flags and --config under a console script too); a ConfigError raised while building the
    run (a bad combination of fields) is printed as one line, like a flag error, instead of a traceback."""

    def guarded(argv: list[str]) -> None:
        try:
            main(argv)
        except ConfigError as err:
            raise SystemExit(f"error: {err}") from None

    command_line.run_app(guarded, module_name, flags_parser=absl_flags_parser, key_flags=("config",))
