"""From trajectories to training data: rewards, DAPO filters, group advantages, one sequence per conversation.

Rewards come only from the final answer (the rule-based boxed verifier). A trajectory's advantage goes to
every response token of all its conversations: memory updates and final answer alike.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from memagent_jax.agent.memory_agent import Trajectory
from memagent_jax.agent.verify import answer_reward
from memagent_jax.rl.packing import TrainSequence

OVERLONG_MODES = ("none", "filter", "penalty")


@dataclasses.dataclass(frozen=True)
class ExperienceConfig:
    normalize_std: bool = False  # MemAgent: advantage = reward - group mean, no std division
    overlong: str = "none"  # "filter": truncated trajectories get no loss; "penalty": reward - overlong_penalty
    overlong_penalty: float = 1.0
    std_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.overlong not in OVERLONG_MODES:
            raise ValueError(f"overlong must be one of {OVERLONG_MODES}, got {self.overlong!r}")
        if self.overlong_penalty < 0:
            raise ValueError(f"overlong_penalty must be >= 0, got {self.overlong_penalty}")


@dataclasses.dataclass
class Group:
    """The G rollouts of one sample, scored."""

    sample_id: object
    trajectories: list[Trajectory]
    rewards: np.ndarray  # [G] after any overlong penalty
    correct: np.ndarray  # [G] verifier result before penalties (accuracy)
    truncated: np.ndarray  # [G] bool: some conversation hit its token limit

    @property
    def uniform(self) -> bool:
        """All rewards equal: zero advantage everywhere, nothing to learn (DAPO dynamic sampling drops it)."""
        return bool(np.all(self.rewards == self.rewards[0]))


def is_truncated(trajectory: Trajectory) -> bool:
    return any(c.finish_reason == "length" for c in trajectory.conversations)


def score_groups(trajectories: Sequence[Trajectory], ground_truths: Sequence[Sequence[str]], group_size: int,
                 cfg: ExperienceConfig, answer_modes: Sequence[str] | None = None) -> list[Group]:
    """Trajectories ordered by (sample, rollout), as MemoryAgent.run returns them, into scored groups.
    Each sample's answers combine by its answer mode (verify.answer_reward; default "any": alternatives).
    A trajectory that failed (engine error) scores 0."""
    if len(trajectories) != len(ground_truths) * group_size:
        raise ValueError(f"{len(trajectories)} trajectories for {len(ground_truths)} samples x {group_size}")
    modes = ["any"] * len(ground_truths) if answer_modes is None else list(answer_modes)
    if len(modes) != len(ground_truths):
        raise ValueError(f"{len(modes)} answer modes for {len(ground_truths)} samples")
    groups = []
    for index, (truth, mode) in enumerate(zip(ground_truths, modes, strict=True)):
        members = list(trajectories[index * group_size : (index + 1) * group_size])
        correct = np.array([0.0 if t.error else answer_reward(t.answer, list(truth), mode) for t in members],
                           np.float64)
        truncated = np.array([is_truncated(t) for t in members])
        rewards = correct.copy()
        if cfg.overlong == "penalty":
            rewards = rewards - cfg.overlong_penalty * truncated
        groups.append(Group(members[0].sample_id, members, rewards, correct, truncated))
    return groups


def group_advantages_np(rewards: np.ndarray, normalize_std: bool, eps: float) -> np.ndarray:
    """[groups, G] -> advantages: reward minus its group's mean, optionally over the group's std (ddof=1,
    as grpo.group_advantages); host-side because it feeds packing, which is host-side."""
    centred = rewards - rewards.mean(axis=1, keepdims=True)
    if not normalize_std or rewards.shape[1] < 2:
        return centred
    return centred / (rewards.std(axis=1, ddof=1, keepdims=True) + eps)


def training_sequences(groups: Sequence[Group], cfg: ExperienceConfig) -> tuple[list[TrainSequence], dict[str, float]]:
    """One TrainSequence per completed conversation with its trajectory's advantage; counts of what was left out."""
    if not groups:
        return [], {"dropped_error_conversations": 0, "filtered_overlong_trajectories": 0}
    advantages = group_advantages_np(np.stack([g.rewards for g in groups]), cfg.normalize_std, cfg.std_eps)
    sequences: list[TrainSequence] = []
    dropped = filtered = 0
    for group, group_adv in zip(groups, advantages):
        for trajectory, advantage, truncated in zip(group.trajectories, group_adv, group.truncated):
            if cfg.overlong == "filter" and truncated:
                filtered += 1
                continue
            for conversation in trajectory.conversations:
                if not conversation.response or not conversation.prompt or conversation.finish_reason == "error":
                    dropped += 1
                    continue
                sequences.append(TrainSequence(list(conversation.prompt) + list(conversation.response),
                                               len(conversation.prompt), float(advantage),
                                               list(conversation.logprobs)))
    return sequences, {"dropped_error_conversations": dropped, "filtered_overlong_trajectories": filtered}


def rollout_metrics(groups: Sequence[Group]) -> dict[str, float]:
    """Reward, accuracy, lengths of memories and answers, truncation and error counts of a batch."""
    trajectories = [t for g in groups for t in g.trajectories]
    if not trajectories:
        return {}
    rewards = np.concatenate([g.rewards for g in groups])
    correct = np.concatenate([g.correct for g in groups])
    memory_lens = [len(c.response) for t in trajectories for c in t.conversations if c.kind == "memory"]
    answer_lens = [len(c.response) for t in trajectories for c in t.conversations if c.kind == "final"]
    return {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "accuracy": float(correct.mean()),
        "memory_tokens_mean": float(np.mean(memory_lens)) if memory_lens else 0.0,
        "answer_tokens_mean": float(np.mean(answer_lens)) if answer_lens else 0.0,
        "conversations_per_trajectory": float(np.mean([len(t.conversations) for t in trajectories])),
        "truncated_fraction": float(np.mean([is_truncated(t) for t in trajectories])),
        "errors": float(sum(t.error is not None for t in trajectories)),
        "uniform_groups": float(sum(g.uniform for g in groups)),
    }
