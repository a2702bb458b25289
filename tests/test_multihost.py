"""Agreements between processes, in the one-process case, and how per-process metrics combine."""

import numpy as np

from memagent_jax import multihost


def test_one_process_agrees_with_itself():
    assert not multihost.is_multiprocess()
    assert multihost.agree_max(3) == 3 and multihost.agree_any(True) and not multihost.agree_any(False)
    assert multihost.gather(np.arange(3)).shape == (1, 3)
    metrics = {"reward_mean": 0.5, "sequences": 4.0}
    assert multihost.reduce_metrics(metrics) == metrics


def test_counts_add_up_durations_take_the_slowest_and_the_rest_average():
    keys = ["reward_mean", "sequences", "rollout_seconds", "update_tokens_per_s", "loss"]
    table = np.array([[0.25, 6.0, 2.0, 100.0, 1.5],
                      [0.75, 2.0, 3.0, 300.0, 1.5]])
    assert multihost.combine(keys, table) == {"reward_mean": 0.5, "sequences": 8.0, "rollout_seconds": 3.0,
                                              "update_tokens_per_s": 400.0, "loss": 1.5}
