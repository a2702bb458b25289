"""Array fingerprints: the same for NumPy and jax (sharded too), different when a bit changes or values move."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from memagent_jax.run.fingerprint import fingerprint, fingerprints


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint8, np.int8, np.bool_, jnp.bfloat16, np.uint32])
def test_numpy_and_jax_agree(dtype):
    values = np.random.default_rng(0).normal(size=(5, 7)) * 50
    host = values.astype(dtype)
    assert fingerprint(host) == fingerprint(jnp.asarray(host))


def test_a_sharded_array_has_the_fingerprint_of_its_whole_value():
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("a", "b"))
    host = np.arange(64 * 6, dtype=np.float32).reshape(64, 6)
    sharded = jax.device_put(host, NamedSharding(mesh, PartitionSpec("a", "b")))
    assert fingerprints([sharded, host]) == [fingerprint(host)] * 2


def test_a_flipped_bit_or_moved_values_change_it():
    host = np.arange(100, dtype=np.float32)
    flipped = host.copy()
    flipped.view(np.uint32)[37] ^= 1
    assert fingerprint(flipped) != fingerprint(host)
    assert fingerprint(host[::-1].copy()) != fingerprint(host)  # the same values, elsewhere
    assert fingerprint(host.reshape(10, 10)) == fingerprint(host)  # C order: the shape is the manifest's business
