"""A 32-bit fingerprint of an array's exact bits, the same for a jax array (any sharding, any number of
processes) and a NumPy array holding the same values.

Checkpoints store it beside each array: Orbax reads a flipped byte inside an uncompressed chunk back without
complaint, so the restore compares fingerprints to tell a damaged file from a good one. The fingerprint is
sum(mix(bits[i]) * (i * 2654435761 + 1)) mod 2**32 over the C-order index i: integer sums wrap the same way
in any order, so the shards' parts add up to NumPy's number, and the position weight catches values that
moved, not only values that changed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["fingerprint", "fingerprints"]

_MULTIPLIER = 2654435761  # Knuth's multiplicative hash constant: neighbouring positions get distant weights
_MIX = 0x45D9F3B  # spreads each element's bits, so structured values (all ones...) do not cancel out
_MASK = 2**32 - 1


def _numpy_bits(value: np.ndarray) -> np.ndarray:
    if value.dtype == np.bool_:
        return value.astype(np.uint32)
    raw = value.view(np.dtype(f"u{value.dtype.itemsize}"))
    if value.dtype.itemsize == 8:  # keep the high half too
        return (raw ^ (raw >> np.uint64(32))).astype(np.uint32)
    return raw.astype(np.uint32)


def _numpy_fingerprint(value: np.ndarray) -> int:
    value = np.ascontiguousarray(value)
    bits = _numpy_bits(value).reshape(-1)
    mixed = (bits ^ (bits >> np.uint32(16))) * np.uint32(_MIX)
    mixed ^= mixed >> np.uint32(16)
    weights = np.arange(value.size, dtype=np.uint32) * np.uint32(_MULTIPLIER) + np.uint32(1)
    return int(np.sum(mixed * weights, dtype=np.uint32))


@jax.jit
def _shard_fingerprint(value: jax.Array, offsets: jax.Array, strides: jax.Array) -> jax.Array:
    """One shard's part of the sum: its elements weighted by their index in the whole array."""
    if value.dtype == jnp.bool_:
        bits = value.astype(jnp.uint32)
    else:
        size = jnp.dtype(value.dtype).itemsize
        raw = jax.lax.bitcast_convert_type(value, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[size])
        bits = (raw ^ (raw >> 32) if size == 8 else raw).astype(jnp.uint32)  # 8 bytes: only with jax_enable_x64
    mixed = (bits ^ (bits >> 16)) * jnp.uint32(_MIX)
    mixed = mixed ^ (mixed >> 16)
    index = jnp.zeros(value.shape, jnp.uint32)
    for axis in range(value.ndim):
        position = jax.lax.broadcasted_iota(jnp.uint32, value.shape, axis) + offsets[axis]
        index = index + position * strides[axis]
    weights = index * jnp.uint32(_MULTIPLIER) + jnp.uint32(1)
    return jnp.sum(mixed * weights, dtype=jnp.uint32)


def _shard_parts(value: jax.Array) -> list[jax.Array]:
    """Each addressable shard computed on its own device (no collective: on CPU, many in-flight all-reduces
    over fake devices can starve each other); replicas counted once."""
    shape = value.shape
    strides = [1] * len(shape)
    for axis in reversed(range(len(shape) - 1)):
        strides[axis] = strides[axis + 1] * shape[axis + 1]
    strides_u32 = np.asarray([s & _MASK for s in strides], np.uint32)
    parts = []
    for shard in value.addressable_shards:
        if shard.replica_id != 0:
            continue
        offsets = np.asarray([(index.start or 0) for index in shard.index], np.uint32)
        parts.append(_shard_fingerprint(shard.data, offsets, strides_u32))
    return parts


def fingerprints(values: list[jax.Array | np.ndarray]) -> list[int]:
    """Fingerprints of several arrays, with one device-to-host transfer for the jax ones. With N processes it
    is a collective (each adds the shards it holds): every process calls it with the same arrays."""
    from memagent_jax.parallel import collectives

    parts = [_shard_parts(v) if isinstance(v, jax.Array) else None for v in values]
    fetched = jax.device_get(parts)
    local = np.asarray([sum(int(x) for x in got) if got is not None else 0 for got in fetched], np.int64) & _MASK
    totals = collectives.gather(local).sum(axis=0) & _MASK  # shards other processes hold (none with one)
    return [int(total) if got is not None else _numpy_fingerprint(np.asarray(v))
            for v, got, total in zip(values, fetched, totals)]


def fingerprint(value: jax.Array | np.ndarray) -> int:
    return fingerprints([value])[0]
