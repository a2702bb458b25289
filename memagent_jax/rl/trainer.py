"""Multi-Conv GRPO and SFT steps: data -> (rollouts -> rewards -> advantages | oracle traces) -> updates.

An RL step draws `batch_size` samples, runs G rollouts of the memory agent on each (the engine holds the
current weights in its own rollout layout), scores the final answers, optionally drops groups whose
rewards are all equal and draws replacements (DAPO dynamic sampling), turns every conversation into a
training sequence carrying its trajectory's advantage, and runs `batch_size / mini_batch_size` updates.
The new weights then go to the engine device-to-device.

With N processes, batch sizes stay global: each process draws, rolls out and packs its 1/N share, and
the updates run on the global batch (rl/policy.py assembles it).
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from typing import Any, Callable, Iterator, Sequence

import jax

from memagent_jax.agent.memory_agent import MemoryAgent
from memagent_jax.data.pipeline import AgentSample
from memagent_jax.engine.engine import Engine
from memagent_jax.parallel import collectives
from memagent_jax.rl.experience import ExperienceConfig, Group, rollout_metrics, score_groups, training_sequences
from memagent_jax.rl.packing import TrainSequence
from memagent_jax.rl.policy import Policy
from memagent_jax.rl.sft import oracle_sequences


@dataclasses.dataclass(frozen=True)
class RLConfig:
    group_size: int = 16  # rollouts per sample (G)
    batch_size: int = 128  # samples per RL step
    mini_batch_size: int = 8  # samples per optimizer update: batch_size / mini_batch_size updates per step
    dynamic_sampling: bool = False  # DAPO: drop groups with all-equal rewards, refill from the data
    max_refills: int = 4  # extra draws per step at most when dynamic sampling runs short
    experience: ExperienceConfig = ExperienceConfig()

    def __post_init__(self) -> None:
        if self.group_size < 1 or self.batch_size < 1 or self.mini_batch_size < 1 or self.max_refills < 0:
            raise ValueError(f"group_size, batch_size, mini_batch_size must be >= 1 and max_refills >= 0: {self}")
        if self.batch_size % self.mini_batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of mini_batch_size={self.mini_batch_size}")
        if self.dynamic_sampling and self.group_size < 2:
            raise ValueError("dynamic_sampling needs group_size >= 2 (a group of one is always uniform)")


def _mini_batches(items: Sequence[list[TrainSequence]], size: int) -> list[list[TrainSequence]]:
    return [[s for item in items[i : i + size] for s in item] for i in range(0, len(items), size)]


def per_process(size: int, what: str) -> int:
    """This process's share of a global number of samples."""
    processes = jax.process_count()
    if size % processes:
        raise ValueError(f"{what}={size} must be a multiple of the {processes} processes")
    return size // processes


class SFTTrainer:
    """Supervised warm start on oracle traces, through the same packing and update as GRPO."""

    def __init__(self, policy: Policy, agent: MemoryAgent, mini_batch_size: int, quiet_updates: int | None = None):
        """quiet_updates: see rl.sft.oracle_sequences (None trains every memory update)."""
        if policy.update_config.objective != "sft":
            raise ValueError("SFTTrainer needs a policy built with UpdateConfig(objective='sft')")
        if quiet_updates is not None and quiet_updates < 0:
            raise ValueError(f"sft.quiet_updates must be >= 0, got {quiet_updates}")
        self.policy, self.agent, self.quiet_updates = policy, agent, quiet_updates
        self.mini_batch_size = per_process(mini_batch_size, "sft.mini_batch_size")

    def step(self, batch: Sequence[AgentSample]) -> dict[str, float]:
        """`batch`: this process's samples of the step."""
        per_sample = [oracle_sequences(item, self.agent.tokenizer, self.agent.prompts, self.agent.config,
                                       self.quiet_updates) for item in batch]
        return self.policy.train(_mini_batches(per_sample, self.mini_batch_size))


class GRPOTrainer:
    """Multi-Conv GRPO on the memory agent; `engine` is the agent's engine and receives every new policy."""

    def __init__(self, policy: Policy, agent: MemoryAgent, config: RLConfig, seed: int = 0,
                 send_weights: Callable[[Engine, Any], None] | None = None):
        """send_weights(engine, params): how trained weights reach the engine (rollout_layout.RolloutLayout.send
        with N processes); default: the engine's own update_weights."""
        if policy.update_config.objective != "grpo":
            raise ValueError("GRPOTrainer needs a policy built with UpdateConfig(objective='grpo')")
        self.policy, self.agent, self.config, self.seed = policy, agent, config, seed
        self.engine: Engine = agent.engine
        self.send_weights = send_weights or (lambda engine, params: engine.update_weights(params))
        self.local_batch = per_process(config.batch_size, "rl.batch_size")
        self.local_mini_batch = per_process(config.mini_batch_size, "rl.mini_batch_size")

    def sync_weights(self) -> float:
        """Trainer layout -> rollout layout on device; returns the seconds it took (a metric)."""
        start = time.perf_counter()
        self.send_weights(self.engine, self.policy.params)
        jax.block_until_ready(self.engine.weights)
        return time.perf_counter() - start

    def _rollouts(self, batch: Sequence[AgentSample], seed: int, draw: int) -> list[Group]:
        tokenizer = self.agent.tokenizer
        tasks = [item.agent_task(tokenizer) for item in batch]
        # Fresh sampling seeds for every step and refill draw, reproducible from (step seed, draw).
        self.agent.config = dataclasses.replace(self.agent.config, seed=zlib.crc32(repr((seed, draw)).encode()))
        trajectories = self.agent.run(tasks, group_size=self.config.group_size)
        # Every answer of an "all" sample counts in any order (verify.boxed_reward_all), as the question asks.
        truths = [item.sample.answers for item in batch]
        modes = [item.sample.answer_mode for item in batch]
        return score_groups(trajectories, truths, self.config.group_size, self.config.experience, modes)

    def step(self, next_batch: Callable[[], Sequence[AgentSample]], step: int,
             seed: int | None = None) -> dict[str, float]:
        """One RL step; `next_batch()` returns the next `batch_size` samples from the data iterator. The
        rollouts' sampling seed is `seed`, or derived from (trainer seed, step)."""
        cfg = self.config
        seed = zlib.crc32(repr((self.seed, step)).encode()) if seed is None else seed
        start = time.perf_counter()
        engine_before = dataclasses.replace(self.engine.stats)
        groups: list[Group] = []
        drawn: list[Group] = []
        dropped = 0
        for draw in range(1 + (cfg.max_refills if cfg.dynamic_sampling else 0)):
            new = self._rollouts(next_batch(), seed, draw)
            drawn.extend(new)
            if cfg.dynamic_sampling:
                dropped += sum(g.uniform for g in new)
                new = [g for g in new if not g.uniform]
            groups.extend(new)
            # Processes draw in lock-step (their data iterators stay aligned): stop once all have enough.
            if not collectives.agree_any(len(groups) < self.local_batch):
                break
        groups = groups[: self.local_batch]
        rollout_seconds = time.perf_counter() - start
        generated = self.engine.stats.decode_tokens - engine_before.decode_tokens
        metrics = rollout_metrics(drawn)  # what the policy did, before any filtering
        metrics.update({
            "rollout_seconds": rollout_seconds,
            "rollout_tokens_per_s": generated / rollout_seconds if rollout_seconds > 0 else 0.0,
            "prefill_tokens": float(self.engine.stats.prefill_tokens - engine_before.prefill_tokens),
            "groups_trained": float(len(groups)),
            "groups_dropped_uniform": float(dropped),
        })
        # Groups whose rewards are all equal have zero advantage: with dynamic sampling off they still go
        # through (their KL term), as in plain GRPO.
        sequences_per_group = []
        counts = {"dropped_error_conversations": 0.0, "filtered_overlong_trajectories": 0.0}
        for group in groups:
            sequences, dropped_counts = training_sequences([group], cfg.experience)
            sequences_per_group.append(sequences)
            for key, value in dropped_counts.items():
                counts[key] += value
        metrics.update(counts)
        metrics.update(self.policy.train(_mini_batches(sequences_per_group, self.local_mini_batch)))
        metrics["weight_sync_seconds"] = self.sync_weights()
        metrics["step_seconds"] = time.perf_counter() - start
        return metrics


def batches_from(iterator: Iterator[Sequence[AgentSample]]) -> Callable[[], Sequence[AgentSample]]:
    """next_batch for GRPOTrainer.step from a data-pipeline iterator, with a clear error at its end. The
    training run's pipelines repeat forever (make_pipeline's num_epochs=None); a finite one can end."""

    def next_batch() -> Sequence[AgentSample]:
        try:
            return next(iterator)
        except StopIteration:
            raise RuntimeError("the training data ran out; build the pipeline with num_epochs=None (endless)") from None

    return next_batch
