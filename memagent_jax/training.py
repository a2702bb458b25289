"""A whole training run from a config: SFT warm start on oracle traces, then Multi-Conv GRPO.

Each phase checkpoints (parameters, optimizer state, step, RNG, data-iterator state, config) every N
steps into {workdir}/checkpoints/{phase}; a rerun with the same workdir resumes where it stopped, with
the same next batch and the same losses. Metrics go to {workdir}/metrics (JSONL and TensorBoard), written
by process 0 only. The final weights are exported with the tokenizer as an HF checkpoint folder that
`memagent-answer` and `memagent_jax.evaluate` load.
"""

from __future__ import annotations

import pathlib
import shutil
from typing import Any, Callable

import jax
import ml_collections
from absl import logging
from flax import nnx

from memagent_jax import configuration
from memagent_jax.agent.memory_agent import AgentConfig, MemoryAgent, check_fits
from memagent_jax.agent.prompts import AgentPrompts
from memagent_jax.checkpoint import Checkpointer
from memagent_jax.data.mixture import MixtureSource
from memagent_jax.data.pipeline import make_pipeline
from memagent_jax.data.synthetic import SyntheticSource
from memagent_jax.data.tasks import make_task
from memagent_jax.engine.engine import Engine
from memagent_jax.metrics import MetricsWriter, ProgressBar, device_peak_flops, mfu, model_flops_per_token
from memagent_jax.model import sharding
from memagent_jax.model.transformer import Transformer
from memagent_jax.rl.config import RunSettings, run_settings
from memagent_jax.rl.policy import Policy
from memagent_jax.rl.trainer import GRPOTrainer, SFTTrainer, batches_from
from memagent_jax.runtime import build_model, build_tokenizer
from memagent_jax.tokenizer import Tokenizer

PHASES = ("sft", "rl")
_PHASE_SEED = {"sft": 1, "rl": 2}  # each phase reads its own stream of synthetic samples


def phase_data(config: ml_collections.ConfigDict, phase: str, tokenizer: Tokenizer, chunk_size: int) -> Any:
    """The phase's Grain pipeline: its tasks x lengths interleaved, shuffled, repeated, batched."""
    section = config[phase]
    seed = config.seed * 1000 + _PHASE_SEED[phase]
    sources = [SyntheticSource(make_task(task, tokenizer, int(length), seed=seed), section.num_samples)
               for task in section.tasks for length in section.lengths]
    return make_pipeline(MixtureSource(sources), section.batch_size, tokenizer=tokenizer, chunk_tokens=chunk_size,
                         seed=seed, num_epochs=None)


def export_model(model: Transformer, tokenizer_dir: pathlib.Path | None, directory: pathlib.Path,
                 agent: AgentConfig | None = None) -> pathlib.Path:
    """HF layout (config.json, safetensors) plus the tokenizer's files and the agent sizes it was trained
    with: a folder memagent-answer and memagent_jax.evaluate load."""
    from memagent_jax.model.hf import save_hf_checkpoint

    save_hf_checkpoint(model, directory, overwrite=True)
    if agent is not None:
        agent.save_sizes(directory)
    if tokenizer_dir is not None:
        for path in tokenizer_dir.iterdir():
            if path.is_file() and path.name != "config.json":
                shutil.copy2(path, directory / path.name)
    return directory


class TrainingRun:
    """Builds everything from the config (validated first), then runs the phases."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.settings: RunSettings = run_settings(config)  # config errors before anything compiles
        self.workdir = pathlib.Path(config.workdir)
        self.tokenizer = build_tokenizer(config, self.workdir)
        self.tokenizer_dir = pathlib.Path(config.tokenizer.path) if config.tokenizer.path else self.workdir / "tokenizer"
        self.prompts = AgentPrompts.build(self.tokenizer)
        try:  # still before any model exists: the prompts' real token lengths against the engine and rows
            check_fits(self.prompts, self.settings.agent, self.settings.engine)
        except ValueError as err:
            raise configuration.ConfigError(f"config.agent / config.engine: {err}") from err
        self.eval_config = self._eval_config()
        model, self.mesh = build_model(config)
        self.rules = configuration.build_rules(config.sharding)
        rollout_rules = configuration.build_rules(config.rollout_sharding) if config.rollout_sharding.rules else self.rules
        self.model_config = model.cfg
        self.graphdef, self.params = nnx.split(model)
        # The engine keeps its own copy of the weights in the rollout layout; new weights arrive each step.
        # (A copy, never an alias: training donates its buffers to each update.)
        rollout_state = jax.device_put(self.params, sharding.state_shardings(self.params, self.mesh, rollout_rules),
                                       may_alias=False)
        self.engine = Engine(nnx.merge(self.graphdef, rollout_state), self.settings.engine)
        self.agent = MemoryAgent(self.engine, self.tokenizer, self.settings.agent, self.prompts)
        self.is_main = jax.process_index() == 0
        self.writer = MetricsWriter(self.workdir / "metrics", enabled=self.is_main,
                                    tensorboard=config.metrics.tensorboard, jsonl=config.metrics.jsonl)

    def model(self) -> Transformer:
        return nnx.merge(self.graphdef, self.params)

    def _checkpointer(self, phase: str) -> Checkpointer:
        ckpt = self.config.checkpoint
        return Checkpointer(self.workdir / "checkpoints" / phase, save_every=ckpt.every, keep=ckpt.keep,
                            async_save=ckpt.async_save)

    def _policy(self, phase: str) -> Policy:
        settings = self.settings
        optimizer, update = ((settings.sft_optimizer, settings.sft_update) if phase == "sft"
                             else (settings.rl_optimizer, settings.rl_update))
        return Policy(self.model(), self.mesh, self.rules, optimizer, update, settings.shape)

    def _flops_metrics(self, policy: Policy, metrics: dict[str, float]) -> None:
        cfg = self.model_config
        per_token = model_flops_per_token(policy.num_params, cfg.num_layers, cfg.hidden_size,
                                          self.settings.shape.row_len, training=True)
        value = mfu(metrics.get("update_tokens_per_s", 0.0), per_token, jax.device_count(), device_peak_flops())
        if value is not None:
            metrics["mfu"] = value

    def run_phase(self, phase: str) -> None:
        """Runs (or resumes) one phase to its last step; self.params holds the result."""
        section = self.config[phase]
        if section.steps == 0:
            return
        checkpointer = self._checkpointer(phase)
        policy = self._policy(phase)
        data = iter(phase_data(self.config, phase, self.tokenizer, self.settings.agent.chunk_size))
        rng = jax.random.key(self.config.seed * 1000 + _PHASE_SEED[phase])
        start = 0
        state = lambda: {"params": policy.params, "opt_state": policy.opt_state,
                         **({"reference": policy.reference} if policy.reference is not None else {})}
        if checkpointer.latest_step() is not None:
            restored = checkpointer.restore(state())
            policy.params, policy.opt_state = restored.state["params"], restored.state["opt_state"]
            if policy.reference is not None:
                policy.reference = restored.state["reference"]
            data.set_state(restored.data_state)
            rng, start = restored.rng, restored.step
            logging.info("%s: resumed at step %d from %s", phase, start, checkpointer.directory)
        if start >= section.steps:
            self.params = policy.params
            checkpointer.close()
            return
        step_fn = self._step_function(phase, policy, data)
        progress = ProgressBar(section.steps, phase, enabled=self.is_main and self.config.metrics.progress)
        progress.update(start)
        for step in range(start, section.steps):
            rng, step_key = jax.random.split(rng)
            metrics = step_fn(step, int(jax.random.randint(step_key, (), 0, 2**31 - 1)))
            if metrics.get("skipped"):
                logging.warning("%s step %d: %d update(s) skipped for a non-finite loss or gradient; weights and "
                                "optimizer state kept", phase, step + 1, int(metrics["skipped"]))
            self._flops_metrics(policy, metrics)
            self.writer.write(step + 1, {f"{phase}/{k}": v for k, v in metrics.items()})
            shown = {k: metrics[k] for k in ("nll", "reward_mean", "accuracy", "loss") if k in metrics}
            progress.update(1, **shown)
            checkpointer.save(step + 1, state(), rng=rng, data_state=data.get_state(),
                              config=self.config.to_dict(), metadata={"phase": phase},
                              force=step + 1 == section.steps)
        progress.close()
        checkpointer.close()
        self.params = policy.params

    def _step_function(self, phase: str, policy: Policy, data: Any) -> Callable[[int, int], dict[str, float]]:
        if phase == "sft":
            trainer = SFTTrainer(policy, self.agent, self.config.sft.mini_batch_size)
            return lambda step, seed: trainer.step(next(data))
        trainer = GRPOTrainer(policy, self.agent, self.settings.rl)
        trainer.sync_weights()  # rollouts of the first step use the policy's (post-SFT) weights
        next_batch = batches_from(data)
        return lambda step, seed: trainer.step(next_batch, step, seed=seed)

    def _eval_config(self) -> Any:
        from memagent_jax.evaluation import LONG_LENGTHS, EvalConfig

        section, agent = self.config.eval, self.settings.agent
        lengths = tuple(section.lengths) + (LONG_LENGTHS if section.long else ())
        try:
            return EvalConfig(tasks=tuple(section.tasks), lengths=lengths, samples_per_cell=section.samples_per_cell,
                              seed=self.config.seed * 1000 + 7, chunk_size=agent.chunk_size,
                              max_memory_tokens=agent.max_memory_tokens, max_answer_tokens=agent.max_answer_tokens,
                              max_question_tokens=agent.max_question_tokens, batch=section.batch)
        except ValueError as err:
            raise configuration.ConfigError(f"config.eval: {err}") from err

    def evaluate(self) -> str | None:
        """SFT-only and SFT+GRPO side by side on held-out samples by length (config.eval); returns the table."""
        from memagent_jax.evaluation import evaluate_checkpoints, format_table, write_results

        if not self.config.eval.enabled or not self.is_main:
            return None
        cfg = self.eval_config
        named = {name: self.workdir / folder for name, folder in (("SFT", "export_sft"), ("SFT+GRPO", "export"))
                 if (self.workdir / folder).is_dir()}
        progress = ProgressBar(len(named) * len(cfg.tasks) * len(cfg.lengths), "eval",
                               enabled=self.config.metrics.progress)
        results = evaluate_checkpoints(named, cfg, on_progress=lambda name, cell: progress.update(
            1, last=f"{name} {cell['task']} {cell['length']}: {cell['accuracy']:.2f}"))
        progress.close()
        write_results(results, cfg, self.workdir / "eval")
        self.writer.write(self.config.rl.steps, {f"eval/{name}/{cell['task']}/{cell['length']}": cell["accuracy"]
                                                 for name, result in results.items() for cell in result["cells"]})
        return format_table(results, cfg)

    def run(self) -> pathlib.Path:
        """All phases, then the export; returns the exported checkpoint folder."""
        # A run whose RL phase has started resumes there: the SFT phase is already in its weights.
        with Checkpointer(self.workdir / "checkpoints" / "rl") as rl_checkpoints:
            rl_started = rl_checkpoints.latest_step() is not None
        for phase in PHASES:
            if phase == "sft" and rl_started:
                continue
            self.run_phase(phase)
            if phase == "sft" and self.is_main:
                # The SFT-only policy, kept so evaluations can set it beside SFT+GRPO.
                export_model(self.model(), self.tokenizer_dir, self.workdir / "export_sft", self.settings.agent)
        exported = export_model(self.model(), self.tokenizer_dir, self.workdir / "export", self.settings.agent)
        table = self.evaluate()
        if table:
            print(table)
        self.writer.close()
        return exported
