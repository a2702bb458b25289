"""Config sections of a training run -> the typed settings of each part, with plain-words errors.

Everything here runs before any model is built or compiled, so a wrong value stops the run at once with
a message naming the config key.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, TypeVar

import ml_collections

from memagent_jax.agent.memory_agent import AgentConfig
from memagent_jax.data.tasks import TASKS
from memagent_jax.engine.requests import EngineConfig
from memagent_jax.rl.copy_warmup import CopyTaskConfig
from memagent_jax.rl.experience import ExperienceConfig
from memagent_jax.rl.grpo import LossConfig
from memagent_jax.rl.optimizer import OptimizerConfig
from memagent_jax.rl.policy import BatchShape
from memagent_jax.rl.precision import precision_problems
from memagent_jax.rl.trainer import RLConfig
from memagent_jax.rl.update import UpdateConfig
from memagent_jax.run.config_error import ConfigError
from memagent_jax.run.config_keys import check_run_keys

T = TypeVar("T")


def _build(cls: Callable[..., T], section: ml_collections.ConfigDict | dict, name: str, **extra: Any) -> T:
    """`cls` from the keys of `section` that are its fields: a section may feed two dataclasses (train: the
    rows and the update), and config_keys.py has already refused any key that no part reads."""
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in dict(section).items() if k in fields}
    try:
        return cls(**values, **extra)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config.{name}: {err}") from err


def agent_config(config: ml_collections.ConfigDict) -> AgentConfig:
    return _build(AgentConfig, config.agent, "agent", seed=config.seed)


def engine_config(config: ml_collections.ConfigDict) -> EngineConfig:
    return _build(EngineConfig, config.engine, "engine")


def batch_shape(config: ml_collections.ConfigDict) -> BatchShape:
    return _build(BatchShape, config.train, "train")


def optimizer_config(phase: ml_collections.ConfigDict, name: str) -> OptimizerConfig:
    """The phase's optimizer; a decaying schedule with total_steps unset (None) decays over the phase's own
    steps (so `--config.sft.steps=N` alone rescales it)."""
    settings = dict(phase.optimizer)
    if settings["total_steps"] is None:
        if settings["schedule"] == "constant":
            del settings["total_steps"]  # no decay: the horizon is never read
        else:
            settings["total_steps"] = max(int(phase.steps), int(settings["warmup_steps"]) + 1)
    return _build(OptimizerConfig, settings, f"{name}.optimizer")


def loss_config(rl: ml_collections.ConfigDict) -> LossConfig:
    """dual_clip and tis_cap unset (None, e.g. ml_collections' placeholder(float)) turn them off."""
    return _build(LossConfig, rl.loss, "rl.loss")


def update_config(config: ml_collections.ConfigDict, objective: str) -> UpdateConfig:
    loss = loss_config(config.rl) if objective == "grpo" else LossConfig()
    return _build(UpdateConfig, config.train, "train", objective=objective, loss=loss,
                  temperature=config.agent.temperature if objective == "grpo" else 1.0)


def rl_config(config: ml_collections.ConfigDict) -> RLConfig:
    experience = _build(ExperienceConfig, config.rl, "rl")
    return _build(RLConfig, config.rl, "rl", experience=experience)


def copy_settings(config: ml_collections.ConfigDict) -> tuple[CopyTaskConfig, BatchShape]:
    """The copy warm-up's string lengths and its own (short) packed rows."""
    section = config.copy
    if section.steps < 0:
        raise ConfigError(f"config.copy.steps must be >= 0, got {section.steps}")
    if section.batch_size < 1:
        raise ConfigError(f"config.copy.batch_size must be >= 1, got {section.batch_size}")
    task = _build(CopyTaskConfig, section, "copy")
    shape = _build(BatchShape, section, "copy")
    # String, gap, separator (a few tokens), the string again, end token: must fit one row.
    if task.max_sequence_tokens + 16 > shape.row_len:
        raise ConfigError(f"config.copy.row_len={shape.row_len} cannot hold a copy of max_tokens={task.max_tokens} "
                          f"with a gap of max_gap_tokens={task.max_gap_tokens} (needs 2 * max_tokens + "
                          f"max_gap_tokens + 16)")
    return task, shape


def retrieval_settings(config: ml_collections.ConfigDict) -> tuple[BatchShape, OptimizerConfig]:
    """The retrieval warm-up's packed rows and optimizer; its tasks and lengths checked like SFT's."""
    check_phase_data(config.retrieval, "retrieval")
    fraction = config.retrieval.answer_prompt_fraction
    if not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"config.retrieval.answer_prompt_fraction must be a number in [0, 1], got {fraction!r}")
    for flag in ("boxed_answer", "question_first"):
        if not isinstance(config.retrieval[flag], bool):
            raise ConfigError(f"config.retrieval.{flag} must be True or False, got {config.retrieval[flag]!r}")
    return _build(BatchShape, config.retrieval, "retrieval"), optimizer_config(config.retrieval, "retrieval")


def check_phase_data(phase: ml_collections.ConfigDict, name: str) -> None:
    unknown = [t for t in phase.tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"config.{name}.tasks: unknown task(s) {unknown}; known: {sorted(TASKS)}")
    if not phase.tasks or not phase.lengths:
        raise ConfigError(f"config.{name}: tasks and lengths must not be empty")
    if any(int(n) < 1 for n in phase.lengths):
        raise ConfigError(f"config.{name}.lengths: document lengths must be >= 1 token, got {list(phase.lengths)}")
    if phase.steps < 0:
        raise ConfigError(f"config.{name}.steps must be >= 0, got {phase.steps}")
    if phase.batch_size < 1 or phase.num_samples < phase.batch_size:
        raise ConfigError(f"config.{name}: need batch_size >= 1 and num_samples >= batch_size, got "
                          f"{phase.batch_size} and {phase.num_samples}")


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """All typed settings of a run, built (and so validated) up front."""

    agent: AgentConfig
    engine: EngineConfig
    shape: BatchShape
    copy_task: CopyTaskConfig
    copy_shape: BatchShape
    copy_optimizer: OptimizerConfig
    retrieval_shape: BatchShape
    retrieval_optimizer: OptimizerConfig
    sft_optimizer: OptimizerConfig
    sft_update: UpdateConfig
    rl_optimizer: OptimizerConfig
    rl_update: UpdateConfig
    rl: RLConfig


def run_settings(config: ml_collections.ConfigDict) -> RunSettings:
    check_run_keys(config)  # a key nothing reads, or one missing, before any section is built
    for name in ("sft", "rl"):
        check_phase_data(config[name], name)
    if config.sft.batch_size % config.sft.mini_batch_size:
        raise ConfigError(f"config.sft.batch_size={config.sft.batch_size} must be a multiple of "
                          f"mini_batch_size={config.sft.mini_batch_size}")
    copy_task, copy_shape = copy_settings(config)
    retrieval_shape, retrieval_optimizer = retrieval_settings(config)
    settings = RunSettings(
        copy_task=copy_task, copy_shape=copy_shape, copy_optimizer=optimizer_config(config.copy, "copy"),
        retrieval_shape=retrieval_shape, retrieval_optimizer=retrieval_optimizer,
        agent=agent_config(config), engine=engine_config(config), shape=batch_shape(config),
        sft_optimizer=optimizer_config(config.sft, "sft"), sft_update=update_config(config, "sft"),
        rl_optimizer=optimizer_config(config.rl, "rl"), rl_update=update_config(config, "grpo"),
        rl=rl_config(config))
    check_precision(config, settings)
    longest = max(settings.agent.max_memory_tokens, settings.agent.max_answer_tokens)
    if settings.engine.max_prompt_len + longest > settings.shape.row_len + 1:
        raise ConfigError(
            f"config.train.row_len={settings.shape.row_len} cannot hold the longest conversation: "
            f"engine.max_prompt_len {settings.engine.max_prompt_len} + {longest} generated tokens")
    return settings


def check_precision(config: ml_collections.ConfigDict, settings: RunSettings) -> None:
    """Every phase that trains can move its master weights at its learning rate, and its optimizer state
    decays (rl/precision.py): a bfloat16 master or Adam state that would silently drop the updates stops
    the run here, naming the keys."""
    optimizers = {"copy": settings.copy_optimizer, "retrieval": settings.retrieval_optimizer,
                  "sft": settings.sft_optimizer, "rl": settings.rl_optimizer}
    for phase, optimizer in optimizers.items():
        if not config[phase].steps:
            continue
        problems = precision_problems(
            param_dtype=config.model.param_dtype, state_dtype=optimizer.state_dtype,
            learning_rate=optimizer.learning_rate, b1=optimizer.b1, b2=optimizer.b2,
            weight_scale=config.model.initializer_range)
        if problems:
            raise ConfigError(f"config.model.param_dtype={config.model.param_dtype!r} with config.{phase}.optimizer "
                              f"(learning_rate={optimizer.learning_rate:g}, state_dtype={optimizer.state_dtype!r}): "
                              + "; ".join(problems))
