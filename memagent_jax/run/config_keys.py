"""Every key a run config may hold, in one place, checked on the config as its file defines it.

A section built into dataclasses (agent, engine, train, rl.loss, the optimizers...) allows their fields; a
field with a default may be left out. Every other key is read by hand somewhere in the run, so a config must
define it. Any other key stops the program with a ConfigError naming its full dotted path and the closest
known key: a typo such as `config.rl.batchsize = 8` would otherwise be ignored without a word.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Mapping

import ml_collections

from memagent_jax.run.config_error import ConfigError


@dataclasses.dataclass(frozen=True)
class Section:
    """The keys of one ConfigDict: `required` must be present, `optional` may be; a key maps to its own
    Section, or to None for a value (any type: the part that reads it checks it)."""

    required: Mapping[str, "Section | None"]
    optional: frozenset[str] = frozenset()
    # Sections a config may leave out, checked like required ones when present.
    optional_sections: Mapping[str, "Section"] = dataclasses.field(default_factory=dict)

    def known(self) -> list[str]:
        return sorted(set(self.required) | self.optional | set(self.optional_sections))


def values(*names: str) -> dict[str, None]:
    return dict.fromkeys(names)


def built_into(*classes: type, exclude: tuple[str, ...] = (), read: tuple[str, ...] = (),
               sections: Mapping[str, Section] | None = None) -> Section:
    """A section whose values become fields of `classes` (less `exclude`, which the run fills in itself),
    plus the keys in `read` and `sections` that the run reads by hand. Fields without a default are required."""
    required: dict[str, Section | None] = {**values(*read), **(sections or {})}
    optional = set()
    for cls in classes:
        for field in dataclasses.fields(cls):
            if field.name in exclude or field.name in required:
                continue
            no_default = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
            if no_default:
                required[field.name] = None
            else:
                optional.add(field.name)
    return Section(required, frozenset(optional - set(required)))


def run_keys() -> Section:
    """The keys of a training run's config (configs/*.py): what train, check_config, sweep and generate read."""
    from memagent_jax.agent.memory_agent import AgentConfig
    from memagent_jax.engine.requests import EngineConfig
    from memagent_jax.model.config import ModelConfig, RopeScaling
    from memagent_jax.model.sharding import MESH_AXES
    from memagent_jax.rl.copy_warmup import CopyTaskConfig
    from memagent_jax.rl.experience import ExperienceConfig
    from memagent_jax.rl.grpo import LossConfig
    from memagent_jax.rl.optimizer import OptimizerConfig
    from memagent_jax.rl.policy import BatchShape
    from memagent_jax.rl.trainer import RLConfig
    from memagent_jax.rl.update import UpdateConfig

    optimizer = built_into(OptimizerConfig)
    # Where a phase's samples come from (rl/config.py check_phase_data, training.phase_source).
    phase_data = ("steps", "batch_size", "num_samples", "tasks", "lengths", "sources")
    rules = Section(values("rules"))
    return Section({
        "seed": None, "workdir": None,
        # checkpoint: an HF folder whose config.json replaces the fields (runtime.build_model).
        "model": built_into(ModelConfig, read=("checkpoint",), sections={"rope_scaling": built_into(RopeScaling)}),
        "mesh": Section(values(*MESH_AXES)),
        "sharding": rules,
        "rollout_sharding": rules,
        "tokenizer": Section(values("path", "vocab_size", "corpus_lines", "digit_group")),
        "agent": built_into(AgentConfig, exclude=("seed",)),  # the agent's seed is config.seed
        "engine": built_into(EngineConfig),
        # train: both the packed rows and the update (its objective, loss and temperature come per phase).
        "train": built_into(BatchShape, UpdateConfig, exclude=("objective", "loss", "temperature")),
        "copy": built_into(CopyTaskConfig, BatchShape, read=("steps", "batch_size"), sections={"optimizer": optimizer}),
        "retrieval": built_into(BatchShape, read=(*phase_data, "boxed_answer", "answer_prompt_fraction",
                                                         "question_first"),
                                sections={"optimizer": optimizer}),
        "sft": Section({**values(*phase_data, "mini_batch_size", "quiet_updates"), "optimizer": optimizer}),
        "rl": built_into(RLConfig, ExperienceConfig, exclude=("experience",), read=phase_data,
                         sections={"loss": built_into(LossConfig), "optimizer": optimizer}),
        "eval": Section(values("enabled", "tasks", "lengths", "long", "samples_per_cell", "batch", "data",
                               "sampling", "on_bad_record")),
        "checkpoint": Section(values("every", "keep", "async_save")),
        "metrics": Section(values("tensorboard", "jsonl", "progress")),
        "budget": Section(values("device_gb", "enforce")),
        "generate": Section(values("prompt", "max_new_tokens")),  # python -m memagent_jax.generate
    }, optional_sections={
        # python -m memagent_jax.ablation (configs/ablation.py): GRPO steps after SFT (rl.steps: RL only's),
        # the documents per cell at 256K and 1M, and rl_only: config.rl values for the RL-only arm alone.
        "ablation": Section(values("sft_rl_steps", "long_samples_per_cell"), optional=frozenset({"rl_only"})),
    })


def key_problems(config: ml_collections.ConfigDict, section: Section, path: str = "config") -> list[str]:
    """One line per unknown key (with the closest known one), missing key, or value where a section belongs."""
    problems = []
    for key in config.keys():
        if key not in section.required and key not in section.optional and key not in section.optional_sections:
            close = difflib.get_close_matches(key, section.known(), n=1)
            hint = f"; did you mean {path}.{close[0]}?" if close else f"; known keys there: {section.known()}"
            problems.append(f"{path}.{key} is not a known key{hint}")
    present = {key: inner for key, inner in section.optional_sections.items() if key in config}
    for key, inner in {**section.required, **present}.items():
        if key not in config:
            problems.append(f"{path}.{key} is missing: the run reads it, so every config must set it")
        elif inner is not None:
            value = config[key]
            if isinstance(value, ml_collections.ConfigDict):
                problems.extend(key_problems(value, inner, f"{path}.{key}"))
            else:
                problems.append(f"{path}.{key} must be a section with keys {inner.known()}, got {value!r}")
    return problems


def check_run_keys(config: ml_collections.ConfigDict, where: str = "the config") -> None:
    """Raises ConfigError listing every key of `config` that no part of a run reads, and every key it lacks."""
    problems = key_problems(config, run_keys())
    if problems:
        raise ConfigError(f"{where}: " + "\n  ".join(problems))
