"""Agreements between processes, in the one-process case, and how per-process metrics combine."""

import numpy as np

from memagent_jax.parallel import collectives


def test_one_process_agrees_with_itself():
    assert not collectives.is_multiprocess()
    assert collectives.agree_max(3) == 3 and collectives.agree_any(True) and not collectives.agree_any(False)
    assert collectives.gather(np.arange(3)).shape == (1, 3)
    metrics = {"reward_mean": 0.5, "sequences": 4.0}
    assert collectives.reduce_metrics(metrics) == metrics


def test_counts_add_up_durations_take_the_slowest_and_the_rest_average():
    keys = ["reward_mean", "sequences", "rollout_seconds", "update_tokens_per_s", "loss"]
    table = np.array([[0.25, 6.0, 2.0, 100.0, 1.5],
                      [0.75, 2.0, 3.0, 300.0, 1.5]])
    assert collectives.combine(keys, table) == {"reward_mean": 0.5, "sequences": 8.0, "rollout_seconds": 3.0,
                                              "update_tokens_per_s": 400.0, "loss": 1.5}
