"""The budget's attention-score count follows the model's own blocked attention (not a copy of its rule)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memagent_jax.model.attention import block_causal_attention
from memagent_jax.run import memory_budget

HEAD_DIM = 3  # odd, so no score array's last dimension (a key count) is mistaken for a PV output


def _traced_scores(length: int, block: int) -> int:
    """Score elements of one head over one row in block_causal_attention's program: the dot_general
    outputs whose last axis is keys (the PV products end in HEAD_DIM)."""
    q = k = v = jnp.zeros((1, length, 1, HEAD_DIM), jnp.float32)
    segments = jnp.ones((1, length), jnp.int32)
    jaxpr = jax.make_jaxpr(lambda *a: block_causal_attention(*a, block=block))(q, k, v, segments)
    shapes = [eqn.outvars[0].aval.shape for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == "dot_general"]
    return sum(int(np.prod(s)) for s in shapes if s[-1] != HEAD_DIM)


@pytest.mark.parametrize("length, block", [(384, 128), (512, 128), (200, 128), (128, 128), (96, 32)])
def test_scores_per_head_counts_what_the_attention_computes(length, block):
    assert memory_budget.scores_per_head(length, block) == _traced_scores(length, block)


def test_budget_block_is_the_attention_block():
    assert memory_budget.scores_per_head(512) == _traced_scores(512, memory_budget.attention.BLOCK)
