"""The paged KV shape contract shared by every paged-attention backend."""

import jax.numpy as jnp
import pytest

from memagent_jax.engine.page_shapes import check_paged_shapes


def test_group_size_is_query_heads_per_kv_head():
    pages = jnp.zeros((2, 5, 4, 8))
    assert check_paged_shapes(6, 8, pages, pages) == 3


@pytest.mark.parametrize("q_heads, head_dim, k_shape, v_shape, message", [
    (4, 8, (2, 5, 4, 8), (2, 5, 4, 4), "must both be"),
    (4, 8, (2, 5, 8), (2, 5, 8), "must both be"),
    (4, 16, (2, 5, 4, 8), (2, 5, 4, 8), "head_dim 16 != page head_dim 8"),
    (3, 8, (2, 5, 4, 8), (2, 5, 4, 8), "not a multiple of num_kv_heads 2"),
])
def test_bad_page_arrays_are_named(q_heads, head_dim, k_shape, v_shape, message):
    with pytest.raises(ValueError, match=message):
        check_paged_shapes(q_heads, head_dim, jnp.zeros(k_shape), jnp.zeros(v_shape))
