"""Device-level measurements for device_check.py: the roofline (copy bandwidth, bf16 matmul peak) and the
paged decode attention kernels against the reference."""

from __future__ import annotations

import functools
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from memagent_jax import compat
from memagent_jax.engine.attention import paged_decode_attention_reference
from memagent_jax.engine.attention_pallas_gpu import paged_decode_attention_pallas_gpu


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of fn() (its outputs waited for) over `repeats` calls, after one untimed call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth(mib: int, repeats: int) -> dict[str, float]:
    """Device memory bandwidth of an elementwise pass over `mib` MiB of bfloat16: it reads and writes every
    byte once, which is as close to a device-to-device copy as XLA will not optimise away."""
    elements = mib * 2**20 // 2
    x = jnp.ones((elements,), jnp.bfloat16)
    step = jax.jit(lambda a: a + jnp.bfloat16(1))
    seconds = median_seconds(lambda: step(x), repeats)
    return {"copy_mib": mib, "copy_seconds": seconds, "copy_bytes_per_s": 2 * elements * 2 / seconds}


def matmul_peak(n: int, repeats: int) -> dict[str, float]:
    """bf16 FLOP/s of one square n x n x n matmul (float32 accumulation inside the MXU/tensor cores)."""
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), jnp.bfloat16)
    b = jax.random.normal(key_b, (n, n), jnp.bfloat16)
    matmul = jax.jit(lambda x, y: x @ y)
    seconds = median_seconds(lambda: matmul(a, b), repeats)
    return {"matmul_n": n, "matmul_seconds": seconds, "matmul_flops_per_s": 2 * n**3 / seconds}


def ragged_paged_batch(rng: np.random.Generator, batch: int, num_heads: int, num_kv_heads: int, head_dim: int,
                       page_size: int, max_pages: int, dtype: Any) -> tuple[jax.Array, ...]:
    """q, k_pages, v_pages, page_table, lengths: lengths uniform in [1, max_pages * page_size], each sequence
    on distinct shuffled pages, one spare page so that no table is the identity."""
    num_pages = batch * max_pages + 1
    k_pages = rng.standard_normal((num_kv_heads, num_pages, page_size, head_dim), np.float32)
    v_pages = rng.standard_normal(k_pages.shape, np.float32)
    table = rng.permutation(num_pages)[: batch * max_pages].reshape(batch, max_pages)
    lengths = rng.integers(1, max_pages * page_size + 1, batch)
    q = rng.standard_normal((batch, num_heads, head_dim), np.float32)
    return (jnp.asarray(q, dtype), jnp.asarray(k_pages, dtype), jnp.asarray(v_pages, dtype),
            jnp.asarray(table, jnp.int32), jnp.asarray(lengths, jnp.int32))


def _jax_kernel_options(max_pages: int, page_size: int) -> dict[str, int]:
    # JAX's kernel splits each table into k_splits equal partitions of whole compute blocks (~64 keys each).
    pages_per_block = max(1, min(max_pages, 64 // page_size))
    while max_pages % pages_per_block:
        pages_per_block -= 1
    k_splits = min(16, max_pages // pages_per_block)
    while max_pages % (k_splits * pages_per_block):
        k_splits -= 1
    return {"pages_per_compute_block": pages_per_block, "k_splits": k_splits}


def attention_kernels(batch: int, num_heads: int, num_kv_heads: int, head_dim: int, page_size: int,
                      max_pages: int, repeats: int) -> dict[str, Any]:
    """Max |kernel - reference| and time of each kernel on one random ragged batch, in bf16 and f32.
    On CPU the kernels run in interpret mode (correctness only: their times mean nothing there)."""
    interpret = jax.default_backend() == "cpu"
    jax_kernel = compat.jax_gpu_paged_attention()
    kernels: dict[str, Callable | None] = {
        "reference": paged_decode_attention_reference,
        "ours (pallas triton)": lambda *a: paged_decode_attention_pallas_gpu(*a, interpret=interpret),
        "jax pallas paged_attention": None if jax_kernel is None else (
            lambda *a: jax_kernel(*a, interpret=interpret, **_jax_kernel_options(max_pages, page_size))),
    }
    rows = []
    rng = np.random.default_rng(0)
    for dtype in (jnp.bfloat16, jnp.float32):
        args = ragged_paged_batch(rng, batch, num_heads, num_kv_heads, head_dim, page_size, max_pages, dtype)
        reference = np.asarray(jax.jit(paged_decode_attention_reference)(*args), np.float32)
        kv_bytes = int(np.asarray(args[4]).sum()) * 2 * num_kv_heads * head_dim * jnp.dtype(dtype).itemsize
        for name, kernel in kernels.items():
            row: dict[str, Any] = {"kernel": name, "dtype": jnp.dtype(dtype).name}
            if kernel is None:
                rows.append({**row, "status": f"not in jax {jax.__version__}"})
                continue
            try:
                fn = jax.jit(kernel)
                out = np.asarray(fn(*args), np.float32)
                seconds = median_seconds(functools.partial(fn, *args), repeats)
                rows.append({**row, "status": "ok", "max_abs_err": float(np.abs(out - reference).max()),
                             "ms": 1e3 * seconds, "kv_GB_per_s": kv_bytes / seconds / 1e9})
            except Exception as err:  # noqa: BLE001 - one kernel failing leaves the others' rows
                rows.append({**row, "status": f"{type(err).__name__}: {str(err)[:300]}"})
    return {"batch": batch, "heads": f"{num_heads}/{num_kv_heads}x{head_dim}", "page_size": page_size,
            "max_tokens": max_pages * page_size, "interpret": interpret, "rows": rows}
