"""A 32-bit fingerprint of an array's exact bits, the same for a jax array (any sharding, any number of
processes) and a NumPy array holding the same values.

Checkpoints store it beside each array: Orbax reads a flipped byte inside an uncompressed chunk back without
complaint, so the restore compares fingerprints to tell a damaged file from a good one. The fingerprint is
sum(bits[i] * (i * 2654435761 + 1)) mod 2**32 over the C-order index i: integer sums wrap the same way in
any order, so a sharded reduction gives the same number as NumPy, and the position weight catches values
that moved, not only values that changed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["fingerprint", "fingerprints"]

_MULTIPLIER = 2654435761  # Knuth's multiplicative hash constant: neighbouring positions get distant weights


def _numpy_bits(value: np.ndarray) -> np.ndarray:
    if value.dtype == np.bool_:
        return value.astype(np.uint32)
    raw = value.view(np.dtype(f"u{value.dtype.itemsize}"))
    if value.dtype.itemsize == 8:  # keep the high half too
        return (raw ^ (raw >> np.uint64(32))).astype(np.uint32)
    return raw.astype(np.uint32)


def _numpy_fingerprint(value: np.ndarray) -> int:
    value = np.ascontiguousarray(value)
    weights = np.arange(value.size, dtype=np.uint32) * np.uint32(_MULTIPLIER) + np.uint32(1)
    return int(np.sum(_numpy_bits(value).reshape(-1) * weights, dtype=np.uint32))


@jax.jit
def _jax_fingerprint(value: jax.Array) -> jax.Array:
    if value.dtype == jnp.bool_:
        bits = value.astype(jnp.uint32)
    else:
        size = jnp.dtype(value.dtype).itemsize
        raw = jax.lax.bitcast_convert_type(value, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[size])
        bits = (raw ^ (raw >> 32) if size == 8 else raw).astype(jnp.uint32)  # 8 bytes: only with jax_enable_x64
    # The C-order index from one iota per axis (no reshape: that would gather a sharded array).
    index = jnp.zeros(value.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(value.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, value.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= value.shape[axis]
    weights = index * jnp.uint32(_MULTIPLIER) + jnp.uint32(1)
    return jnp.sum(bits * weights, dtype=jnp.uint32)


def fingerprints(values: list[jax.Array | np.ndarray]) -> list[int]:
    """Fingerprints of several arrays, with a single device-to-host transfer for the jax ones."""
    pending = [_jax_fingerprint(v) if isinstance(v, jax.Array) else None for v in values]
    fetched = jax.device_get([p for p in pending if p is not None])
    fetched_iter = iter(fetched)
    return [int(next(fetched_iter)) if p is not None else _numpy_fingerprint(np.asarray(v))
            for v, p in zip(values, pending)]


def fingerprint(value: jax.Array | np.ndarray) -> int:
    return fingerprints([value])[0]

