"""compat.py on whichever JAX is installed (CI: jax 0.10.2; scripts/test_newest.sh: the newest release).
The Triton lowering through compat.gpu_lowering_target is tested in test_attention.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memagent_jax import compat
from memagent_jax.engine.attention import paged_decode_attention_reference


def test_version_tuple_reads_the_numeric_release():
    assert compat.version_tuple("0.12.0.1") == (0, 12, 0, 1)
    assert compat.version_tuple("0.13.0rc1") == (0, 13, 0)
    assert compat.version_tuple("2.13.0+cpu") == (2, 13, 0)
    with pytest.raises(ValueError, match="not a version"):
        compat.version_tuple("dev")


@pytest.mark.parametrize("jax_version, flax_version", [("0.11.1", "0.12.8"), ("0.12.1", "0.12.7")])
def test_flax_too_old_for_jax_is_refused_with_the_fix(jax_version, flax_version):
    with pytest.raises(ImportError, match=r"flax>=0\.12\.9"):
        compat.check_flax_matches_jax(jax_version, flax_version)


@pytest.mark.parametrize("jax_version, flax_version", [("0.10.2", "0.12.8"), ("0.11.1", "0.12.9"),
                                                       ("0.12.1", "0.12.12")])
def test_matching_flax_and_jax_pass(jax_version, flax_version):
    compat.check_flax_matches_jax(jax_version, flax_version)


def test_installed_pair_passes():
    compat.check_flax_matches_jax()


def test_jax_paged_attention_matches_the_reference_where_jax_still_has_it():
    """JAX's Triton paged attention (device_check's peer) in interpret mode; jax 0.12.1 removed it."""
    kernel = compat.jax_gpu_paged_attention()
    if kernel is None:
        assert compat.version_tuple(jax.__version__) >= (0, 12, 1), "JAX's paged attention vanished before 0.12.1"
        pytest.skip(f"jax {jax.__version__} has no jax.experimental.pallas.ops.gpu.paged_attention")
    rng = np.random.default_rng(0)
    num_kv_heads, num_pages, page_size, head_dim, max_pages = 2, 12, 8, 16, 4
    k_pages = jnp.asarray(rng.normal(size=(num_kv_heads, num_pages, page_size, head_dim)), jnp.float32)
    v_pages = jnp.asarray(rng.normal(size=k_pages.shape), jnp.float32)
    table = jnp.asarray(rng.permutation(num_pages)[: 2 * max_pages].reshape(2, max_pages), jnp.int32)
    lengths = jnp.asarray([5, 29], jnp.int32)
    q = jnp.asarray(rng.normal(size=(2, 4, head_dim)), jnp.float32)
    out = kernel(q, k_pages, v_pages, table, lengths, pages_per_compute_block=2, k_splits=2, interpret=True)
    ref = paged_decode_attention_reference(q, k_pages, v_pages, table, lengths)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-4, rtol=1e-4)
