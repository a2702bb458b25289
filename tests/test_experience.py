"""Rewards, DAPO filters and advantages from trajectories; one training sequence per conversation."""

import numpy as np
import pytest

from memagent_jax.agent.memory_agent import Conversation, Trajectory
from memagent_jax.rl.experience import (
    ExperienceConfig,
    group_advantages_np,
    rollout_metrics,
    score_groups,
    training_sequences,
)


def _trajectory(sample, rollout, answer, finish="stop", error=None, memory_len=3):
    conversations = [
        Conversation("memory", [1, 2, 3], list(range(10, 10 + memory_len)), [-0.5] * memory_len, finish, 3),
        Conversation("final", [4, 5], [20, 21], [-0.1, -0.2], "stop", 2),
    ]
    return Trajectory(sample, rollout, conversations, ["m"], answer, error)


def test_rewards_advantages_and_sequences():
    trajectories = [_trajectory(0, 0, r"\boxed{7}"), _trajectory(0, 1, r"\boxed{8}"),
                    _trajectory(1, 0, r"\boxed{x}"), _trajectory(1, 1, r"\boxed{y}")]
    groups = score_groups(trajectories, [["7"], ["z"]], 2, ExperienceConfig())
    np.testing.assert_array_equal(groups[0].rewards, [1.0, 0.0])
    assert not groups[0].uniform and groups[1].uniform
    sequences, counts = training_sequences(groups, ExperienceConfig())
    assert len(sequences) == 8 and counts["dropped_error_conversations"] == 0
    # Trajectory 0 of sample 0: advantage +0.5 on both of its conversations.
    assert [s.advantage for s in sequences[:4]] == [0.5, 0.5, -0.5, -0.5]
    assert sequences[0].tokens == [1, 2, 3, 10, 11, 12] and sequences[0].prompt_len == 3
    assert list(sequences[1].sampler_logprobs) == [-0.1, -0.2]
    metrics = rollout_metrics(groups)
    assert metrics["reward_mean"] == 0.25 and metrics["accuracy"] == 0.25 and metrics["uniform_groups"] == 1.0
    assert metrics["memory_tokens_mean"] == 3.0 and metrics["answer_tokens_mean"] == 2.0


def test_std_normalisation_matches_the_formula():
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    got = group_advantages_np(rewards, True, 1e-6)
    expected = (rewards - rewards.mean(1, keepdims=True)) / (rewards.std(1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(got, expected)


def test_overlong_filter_and_penalty_and_errors():
    long = _trajectory(0, 0, r"\boxed{7}", finish="length")
    ok = _trajectory(0, 1, r"\boxed{7}")
    failed = _trajectory(0, 2, "", error="engine error")
    failed.conversations[-1].finish_reason = "error"
    failed.conversations[-1].response = []
    cfg = ExperienceConfig(overlong="penalty", overlong_penalty=0.5)
    groups = score_groups([long, ok, failed], [["7"]], 3, cfg)
    np.testing.assert_array_equal(groups[0].rewards, [0.5, 1.0, 0.0])
    np.testing.assert_array_equal(groups[0].correct, [1.0, 1.0, 0.0])
    filtered = ExperienceConfig(overlong="filter")
    sequences, counts = training_sequences(score_groups([long, ok, failed], [["7"]], 3, filtered), filtered)
    assert counts == {"dropped_error_conversations": 1, "filtered_overlong_trajectories": 1}
    assert len(sequences) == 3  # ok's two conversations and failed's memory update
    with pytest.raises(ValueError, match="overlong"):
        ExperienceConfig(overlong="clip")
    with pytest.raises(ValueError, match="trajectories"):
        score_groups([ok], [["7"]], 2, ExperienceConfig())


def test_every_answer_of_an_all_sample_counts_in_any_order():
    trajectories = [_trajectory(0, 0, r"\boxed{5, 3}"), _trajectory(0, 1, r"\boxed{3}"),
                    _trajectory(1, 0, r"\boxed{5, 3}"), _trajectory(1, 1, r"\boxed{3, 5}")]
    truths = [["3", "5"], ["3, 5", "5, 3"]]  # both values / either alternative
    groups = score_groups(trajectories, truths, 2, ExperienceConfig(), answer_modes=["all", "any"])
    np.testing.assert_array_equal(groups[0].correct, [1.0, 0.0])
    np.testing.assert_array_equal(groups[1].correct, [1.0, 1.0])
    with pytest.raises(ValueError, match="answer modes"):
        score_groups(trajectories, truths, 2, ExperienceConfig(), answer_modes=["all"])
