"""A whole training run from a config: copy and retrieval warm-ups (models from scratch), SFT warm start on
oracle traces, then Multi-Conv GRPO.

Each phase checkpoints (parameters, optimizer state, step, RNG, data-iterator state, config) every N
steps into {workdir}/checkpoints/{phase}; a rerun with the same workdir resumes where it stopped, with
the same next batch and the same losses. Metrics go to {workdir}/metrics (JSONL and TensorBoard), written
by process 0 only. The final weights are exported with the tokenizer as an HF checkpoint folder that
`memagent-answer` and `memagent_jax.evaluate` load.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from typing import Any, Callable

import jax
import ml_collections
from absl import logging
from flax import nnx

from memagent_jax.agent.memory_agent import AgentConfig, MemoryAgent, check_fits
from memagent_jax.agent.prompts import AgentPrompts
from memagent_jax.data.mixture import MixtureSource
from memagent_jax.data.pipeline import make_pipeline
from memagent_jax.data.sources import SourceError, build_sources, parse_sources
from memagent_jax.engine.engine import Engine
from memagent_jax.model.transformer import Transformer
from memagent_jax.parallel import collectives
from memagent_jax.rl.copy_warmup import CopyBatches
from memagent_jax.rl.policy import Policy
from memagent_jax.rl.retrieval_warmup import retrieval_batch
from memagent_jax.rl.rollout_layout import RolloutLayout
from memagent_jax.rl.sft import end_of_turn_id
from memagent_jax.rl.trainer import GRPOTrainer, SFTTrainer, batches_from
from memagent_jax.run import configuration
from memagent_jax.run.budget_check import check_run_budget
from memagent_jax.run.builders import build_mesh, build_model, build_tokenizer
from memagent_jax.run.checkpoint import Checkpointer
from memagent_jax.run.metrics import MetricsWriter, device_peak_flops, mfu, model_flops_per_token
from memagent_jax.run.preemption import Preempted, PreemptionGuard
from memagent_jax.run.progress import progress_bar
from memagent_jax.run.settings import RunSettings, copy_settings, run_settings
from memagent_jax.tokenizer import Tokenizer

PHASES = ("copy", "retrieval", "sft", "rl")
_PHASE_SEED = {"sft": 1, "rl": 2, "copy": 3, "retrieval": 4}  # each phase reads its own stream of synthetic samples


def phase_source(config: ml_collections.ConfigDict, phase: str, tokenizer: Tokenizer) -> MixtureSource:
    """The phase's samples: `config.<phase>.sources` (files and synthetic tasks by weight, data/sources.py),
    or its `tasks` x `lengths` with equal weights when it names no sources. Every file is opened and
    checked here, and SFT-like phases need records that mark their evidence: a ConfigError otherwise."""
    section = config[phase]
    seed = config.seed * 1000 + _PHASE_SEED[phase]
    entries = tuple(section.sources)
    if not entries:
        entries = tuple({"task": task, "lengths": tuple(section.lengths)} for task in section.tasks)
    where = f"config.{phase}.sources"
    try:
        mixture, files = build_sources(parse_sources(entries, where), where, tokenizer, seed=seed,
                                       num_samples=section.num_samples)
    except SourceError as err:
        raise configuration.ConfigError(str(err)) from None
    if phase in ("sft", "retrieval"):
        for file in files:
            if not file.has_evidence():
                raise configuration.ConfigError(
                    f"{file.where}: the records of {file.spec.path!r} mark no evidence (extra_info.supporting_facts), "
                    f"so {phase} has no oracle memory to learn from; use such files in rl.sources only, or build "
                    "them with python -m memagent_jax.data.hotpotqa_train")
    return mixture


def phase_data(config: ml_collections.ConfigDict, phase: str, tokenizer: Tokenizer, chunk_size: int,
               source: MixtureSource | None = None) -> Any:
    """The phase's batches: copy strings for the warm-up; else a Grain pipeline of its sources (see
    phase_source) shuffled, repeated and batched, each process reading its own share."""
    section = config[phase]
    seed = config.seed * 1000 + _PHASE_SEED[phase]
    if phase == "copy":
        task, _ = copy_settings(config)
        return CopyBatches(tokenizer, end_of_turn_id(tokenizer), section.batch_size, task, seed,
                           jax.process_index(), jax.process_count())
    source = source if source is not None else phase_source(config, phase, tokenizer)
    return make_pipeline(source, section.batch_size, tokenizer=tokenizer, chunk_tokens=chunk_size, seed=seed,
                         num_epochs=None)


_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth")


def export_model(model: Transformer, tokenizer_dir: pathlib.Path | None, directory: pathlib.Path,
                 agent: AgentConfig | None = None) -> pathlib.Path:
    """HF layout (config.json, safetensors) plus the tokenizer's files and the agent sizes it was trained
    with: a folder memagent-answer and memagent_jax.evaluate load.

    The whole folder is built beside its place and renamed into it, so a kill leaves the old folder (or
    none) and some hidden leftovers (.<name>.*), removed by the next export, never a half-written one."""
    from memagent_jax.model.hf import replace_folder, save_hf_checkpoint

    for leftover in directory.parent.glob(f".{directory.name}.*"):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = directory.with_name(f".{directory.name}.staging")
    save_hf_checkpoint(model, staging, overwrite=True)
    if agent is not None:
        agent.save_sizes(staging)
    if tokenizer_dir is not None:
        # The tokenizer's files only: a tokenizer folder may be a checkpoint (a run that starts from a pretrained
        # export takes its tokenizer from there), whose weights and agent sizes must not replace this model's.
        for path in tokenizer_dir.iterdir():
            if (path.is_file() and path.name != "config.json" and not (staging / path.name).exists()
                    and not path.name.endswith(_WEIGHT_SUFFIXES)):
                shutil.copy2(path, staging / path.name)
    for path in staging.iterdir():  # on disk before the rename makes the folder visible
        with open(path, "rb") as file:
            os.fsync(file.fileno())
    replace_folder(staging, directory)
    return directory


def policy_names(config: ml_collections.ConfigDict) -> dict[str, str]:
    """The evaluation's column name of each export folder of a run, named by what trained it: "SFT" and
    "SFT+GRPO" after both phases; one column when a phase is skipped ("GRPO" alone from the warm-ups or a
    checkpoint, "SFT" alone, or "warm-ups" / "checkpoint" when neither trained)."""
    sft, rl = bool(config.sft.steps), bool(config.rl.steps)
    if sft and rl:
        return {"SFT": "export_sft", "SFT+GRPO": "export"}
    if sft or rl:
        return {"SFT" if sft else "GRPO": "export"}
    return {"warm-ups" if config.copy.steps or config.retrieval.steps else "checkpoint": "export"}


class TrainingRun:
    """Builds everything from the config (validated first), then runs the phases."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.settings: RunSettings = run_settings(config)  # config errors before anything compiles
        self.workdir = pathlib.Path(config.workdir)
        self.tokenizer = build_tokenizer(config, self.workdir)
        self.tokenizer_dir = (pathlib.Path(config.tokenizer.path) if config.tokenizer.path
                              else self.workdir / "tokenizer")
        self.prompts = AgentPrompts.build(self.tokenizer)
        try:  # still before any model exists: the prompts' real token lengths against the engine and rows
            check_fits(self.prompts, self.settings.agent, self.settings.engine)
        except ValueError as err:
            raise configuration.ConfigError(f"config.agent / config.engine: {err}") from err
        if config.copy.steps:
            self._check_copy_rows()
        # Every phase's files opened and checked now, before any model exists (and read from here on).
        self.sources = {phase: phase_source(config, phase, self.tokenizer)
                        for phase in ("retrieval", "sft", "rl") if config[phase].steps}
        self.eval_config = self._eval_config()
        self.eval_files = self._open_eval_data()  # config.eval.data: files checked before any model
        # Still nothing allocated: the per-device budget is printed, and a run that cannot fit stops here.
        self.budget_table = check_run_budget(config, self.settings, build_mesh(config))
        if jax.process_index() == 0:
            print(f"per-device memory budget (GRPO peak):\n{self.budget_table}", flush=True)
        model, self.mesh = build_model(config)
        self.rules = configuration.build_rules(config.sharding)
        rollout_rules = (configuration.build_rules(config.rollout_sharding) if config.rollout_sharding.rules
                         else self.rules)
        self.model_config = model.cfg
        self.graphdef, self.params = nnx.split(model)
        # The engine keeps its own copy of the weights in the rollout layout and the compute dtype (with N
        # processes: on each process's own devices); new weights arrive each step. (A copy, never an alias:
        # training donates its buffers to each update.)
        try:
            self.rollout_layout = RolloutLayout(self.params, self.mesh, rollout_rules, model.cfg.compute_dtype)
        except ValueError as err:
            raise configuration.ConfigError(f"config.mesh / config.rollout_sharding: {err}") from err
        self.engine = Engine(nnx.merge(self.graphdef, self.rollout_layout.place(self.params)), self.settings.engine)
        self.agent = MemoryAgent(self.engine, self.tokenizer, self.settings.agent, self.prompts)
        self.is_main = jax.process_index() == 0
        self.guard = PreemptionGuard()  # its signal handlers are installed while run() runs
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
        optimizer, update, shape = {
            "copy": (settings.copy_optimizer, settings.sft_update, settings.copy_shape),
            "retrieval": (settings.retrieval_optimizer, settings.sft_update, settings.retrieval_shape),
            "sft": (settings.sft_optimizer, settings.sft_update, settings.shape),
            "rl": (settings.rl_optimizer, settings.rl_update, settings.shape)}[phase]
        return Policy(self.model(), self.mesh, self.rules, optimizer, update, shape)

    def _flops_metrics(self, policy: Policy, metrics: dict[str, float]) -> None:
        cfg = self.model_config
        per_token = model_flops_per_token(policy.num_params, cfg.num_layers, cfg.hidden_size,
                                          policy.shape.row_len, training=True)
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
        source = self.sources.get(phase)
        data = iter(phase_data(self.config, phase, self.tokenizer, self.settings.agent.chunk_size, source))
        skipped = source.metrics() if source is not None else {}  # records the readers left out, by reason
        rng = jax.random.key(self.config.seed * 1000 + _PHASE_SEED[phase])
        start = 0

        def state() -> dict:
            return {"params": policy.params, "opt_state": policy.opt_state,
                    **({"reference": policy.reference} if policy.reference is not None else {})}

        if checkpointer.latest_step() is not None:
            restored = checkpointer.restore(state())  # the latest intact step (damaged ones are named)
            policy.params, policy.opt_state = restored.state["params"], restored.state["opt_state"]
            if policy.reference is not None:
                policy.reference = restored.state["reference"]
            data.set_state(restored.data_state)
            rng, start = restored.rng, restored.step
            logging.info("%s: resumed at step %d from %s", phase, start, checkpointer.directory)
        # Steps written before a kill but never checkpointed are about to be redone: their lines go.
        self.writer.discard_after(phase, start)
        if start >= section.steps:
            self.params = policy.params
            checkpointer.close()
            return
        step_fn = self._step_function(phase, policy, data)
        progress = progress_bar(section.steps, phase, unit="step", initial=start,
                                enabled=self.config.metrics.progress)
        for step in range(start, section.steps):
            rng, step_key = jax.random.split(rng)
            metrics = step_fn(step, int(jax.random.randint(step_key, (), 0, 2**31 - 1)))
            if metrics.get("skipped"):
                logging.warning("%s step %d: %d update(s) skipped for a non-finite loss or gradient; weights and "
                                "optimizer state kept", phase, step + 1, int(metrics["skipped"]))
            metrics = collectives.reduce_metrics(metrics)  # each process saw its share of the batch
            metrics.update(skipped)  # the same on every process: each indexed the whole files
            self._flops_metrics(policy, metrics)
            self.writer.write(step + 1, {f"{phase}/{k}": v for k, v in metrics.items()})
            shown = {k: metrics[k] for k in ("nll", "reward_mean", "accuracy", "loss") if k in metrics}
            progress.set_postfix(shown, refresh=False)
            progress.update(1)
            stop = self.guard.should_stop()  # every process, every step: they stop after the same step
            checkpointer.save(step + 1, state(), rng=rng, data_state=data.get_state(),
                              config=self.config.to_dict(), metadata={"phase": phase},
                              force=step + 1 == section.steps or stop)
            if stop:
                progress.close()
                checkpointer.close()  # waits until this step (and any earlier async save) is committed
                self.writer.flush()
                raise Preempted(f"{phase} step {step + 1}", self.guard.received)
        progress.close()
        checkpointer.close()
        self.params = policy.params

    def _step_function(self, phase: str, policy: Policy, data: Any) -> Callable[[int, int], dict[str, float]]:
        if phase == "copy":
            return lambda step, seed: policy.train([next(data)])
        if phase == "retrieval":
            end, row_len = end_of_turn_id(self.tokenizer), policy.shape.row_len
            boxed = bool(self.config.retrieval.boxed_answer)
            fraction = float(self.config.retrieval.answer_prompt_fraction)
            question_first = bool(self.config.retrieval.question_first)
            return lambda step, seed: policy.train([retrieval_batch(next(data), self.tokenizer, end, row_len, boxed,
                                                                    self.prompts.final_answer, fraction,
                                                                    question_first)])
        if phase == "sft":
            trainer = SFTTrainer(policy, self.agent, self.config.sft.mini_batch_size, self.config.sft.quiet_updates)
            return lambda step, seed: trainer.step(next(data))
        trainer = GRPOTrainer(policy, self.agent, self.settings.rl, send_weights=self.rollout_layout.send)
        trainer.sync_weights()  # rollouts of the first step use the policy's (post-SFT) weights
        next_batch = batches_from(data)
        return lambda step, seed: trainer.step(next_batch, step, seed=seed)

    def _check_copy_rows(self) -> None:
        """The longest copy sequence against copy.row_len, with this tokenizer's separator."""
        longest = phase_data(self.config, "copy", self.tokenizer, self.settings.agent.chunk_size).longest_sequence
        row_len = self.settings.copy_shape.row_len
        if longest > row_len:
            raise configuration.ConfigError(
                f"config.copy.row_len={row_len} is shorter than the longest copy sequence ({longest} tokens with "
                f"this tokenizer's separator); raise copy.row_len or lower copy.max_tokens / copy.max_gap_tokens")

    def _eval_config(self) -> Any:
        from memagent_jax.run.evaluation import LONG_LENGTHS, EvalConfig

        section, agent = self.config.eval, self.settings.agent
        lengths = tuple(section.lengths) + (LONG_LENGTHS if section.long else ())
        try:
            return EvalConfig(tasks=tuple(section.tasks), lengths=lengths, samples_per_cell=section.samples_per_cell,
                              seed=self.config.seed * 1000 + 7, chunk_size=agent.chunk_size,
                              max_memory_tokens=agent.max_memory_tokens, max_answer_tokens=agent.max_answer_tokens,
                              max_question_tokens=agent.max_question_tokens, chunk_boundary=agent.chunk_boundary,
                              batch=section.batch)
        except ValueError as err:
            raise configuration.ConfigError(f"config.eval: {err}") from err

    def _file_eval_config(self) -> Any:
        from memagent_jax.run.eval_files import FileEvalConfig

        agent, section = self.settings.agent, self.config.eval
        sizes = {name: getattr(agent, name) for name in ("chunk_size", "max_memory_tokens", "max_answer_tokens",
                                                          "max_question_tokens", "chunk_boundary")}
        return FileEvalConfig.with_sampling(section.sampling, sizes, self.config.seed * 1000 + 7,
                                            section.batch)

    def _open_eval_data(self) -> list[Any]:
        """config.eval.data (files or globs, e.g. RULER-HQA): opened and checked now, as a ConfigError."""
        from memagent_jax.run.eval_data import check_questions, open_eval_files

        patterns = self.config.eval.data
        patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        if not (self.config.eval.enabled and patterns):
            return []
        try:
            files = open_eval_files(patterns, self.config.eval.on_bad_record)
            check_questions(files, self.tokenizer, self._file_eval_config().agent.max_question_tokens)
        except (OSError, ValueError) as err:
            raise configuration.ConfigError(f"config.eval.data: {err}") from None
        return files

    def _evaluate_files(self, named: dict[str, pathlib.Path]) -> str:
        """The exports on config.eval.data's files (resumable in {workdir}/eval_data); returns the table."""
        from memagent_jax.run.eval_files import Progress, evaluate_files
        from memagent_jax.run.eval_report import format_file_table, summarize, write_file_results
        from memagent_jax.run.eval_store import ResultStore

        cfg, out = self._file_eval_config(), self.workdir / "eval_data"
        store = ResultStore(out / "samples.jsonl", cfg.settings())
        run = evaluate_files(named, self.eval_files, cfg, store, Progress())
        summary = summarize(named, self.eval_files, store)
        sampling = self.config.eval.sampling
        write_file_results(summary, store.settings, run, sampling, out)
        return format_file_table(summary, sampling)

    def evaluate(self) -> str | None:
        """The exports side by side (policy_names: SFT-only and SFT+GRPO when both phases ran) on held-out
        synthetic samples by length (config.eval), or on config.eval.data's files; returns the table."""
        from memagent_jax.run.evaluation import evaluate_checkpoints, format_table, write_results

        if not self.config.eval.enabled or not self.is_main:
            return None
        cfg = self.eval_config
        named = {name: self.workdir / folder for name, folder in policy_names(self.config).items()
                 if (self.workdir / folder).is_dir()}
        if self.eval_files:
            return self._evaluate_files(named)
        progress = progress_bar(len(named) * len(cfg.tasks) * len(cfg.lengths), "eval", unit="cell",
                                enabled=self.config.metrics.progress)

        def cell_done(name: str, cell: dict[str, Any]) -> None:
            if self.guard.requested_here():  # process 0 alone evaluates: no agreement needed
                progress.close()
                raise Preempted("evaluation (redone on the rerun; training and exports are saved)",
                                self.guard.received)
            progress.set_postfix(last=f"{name} {cell['task']} {cell['length']}: {cell['accuracy']:.2f}", refresh=False)
            progress.update(1)

        results = evaluate_checkpoints(named, cfg, on_progress=cell_done)
        progress.close()
        write_results(results, cfg, self.workdir / "eval")
        self.writer.discard_after("eval", -1)  # an earlier, interrupted evaluation's lines
        self.writer.write(self.config.rl.steps, {f"eval/{name}/{cell['task']}/{cell['length']}": cell["accuracy"]
                                                 for name, result in results.items() for cell in result["cells"]})
        return format_table(results, cfg)

    def export(self, folder: str) -> pathlib.Path:
        """The current weights as an HF folder in the workdir, written by process 0 (every process takes
        part in gathering weights that span processes)."""
        directory = self.workdir / folder
        model = self.model()
        if collectives.is_multiprocess():
            model = nnx.merge(self.graphdef, collectives.host_copy(self.params))
        if self.is_main:
            export_model(model, self.tokenizer_dir, directory, self.settings.agent)
        collectives.barrier(f"export {folder}")
        return directory

    def _stop_point(self, where: str) -> None:
        """Between phases, exports and the evaluation: stops there when asked (everything before is saved)."""
        if self.guard.should_stop():
            self.writer.flush()
            raise Preempted(where, self.guard.received)

    def run(self) -> pathlib.Path:
        """All phases, then the export; returns the exported checkpoint folder.

        SIGTERM/SIGINT (or a JAX preemption notice) stop it after the current step with that step saved:
        Preempted is raised (see run/preemption.py); the same call on the same workdir continues exactly."""
        try:
            with self.guard:
                return self._run()
        finally:
            self.writer.close()  # flushes the TensorBoard events too

    def _run(self) -> pathlib.Path:
        # A run resumes in its latest started phase: the earlier phases are already in its weights.
        first = 0
        for index, phase in enumerate(PHASES):
            with Checkpointer(self.workdir / "checkpoints" / phase) as checkpoints:
                if checkpoints.latest_step() is not None:
                    first = index
        for phase in PHASES[first:]:
            self.run_phase(phase)
            if phase == "sft" and self.config.sft.steps:
                # The SFT-only policy, so evaluations can set it beside SFT+GRPO (no SFT: no such policy).
                self.export("export_sft")
                self._stop_point("the SFT export")
        exported = self.export("export")
        self._stop_point("the export")
        table = self.evaluate()
        if table:
            print(table)
        return exported
