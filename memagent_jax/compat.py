"""What differs between the JAX/Flax releases setup.py allows (jax 0.10.2 - 0.12.x, flax 0.12.8 - 0.12.x).

Every version-dependent API the project touches is handled here, so the rest of the code reads as if there
were one JAX:
  * flax 0.12.8 is the last flax for jax 0.10 and breaks on jax >= 0.11.1; pip cannot express that pair,
    so `check_flax_matches_jax` refuses it with the fix (memagent_jax/__init__.py runs it at import).
  * Since jax 0.11, lowering a Pallas Triton kernel reads the target GPU's compute capability from a real
    GPU or from an abstract device; `gpu_lowering_target` supplies one so a CPU machine can still lower.
  * jax 0.11.2 deprecated the Pallas Triton backend (our kernel still lowers and runs through it), and
    jax 0.12.1 removed JAX's own Triton paged-attention op: `jax_gpu_paged_attention` returns None there.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import re
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:  # jax itself is imported only where a function needs it
    import jax

# The first jax that flax 0.12.8 breaks on, and the first flax release made for it.
_JAX_WITHOUT_OLD_FLAX = (0, 11, 1)
_LAST_FLAX_FOR_OLD_JAX = (0, 12, 8)

# What `jax.sharding.AbstractDevice` says of an H100 (device_kind as the CUDA plugin reports it).
H100_DEVICE_KIND = "NVIDIA H100 80GB HBM3"
H100_CORES = 132

# Said by JAX >= 0.11.2 at every Triton lowering; the kernel is kept until a Mosaic GPU port exists.
TRITON_DEPRECATION = "The Pallas Triton backend is deprecated"


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: "0.12.0.1" -> (0, 12, 0, 1), "0.13.0rc1" -> (0, 13, 0)."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(part) for part in match.group(0).split("."))


def check_flax_matches_jax(jax_version: str | None = None, flax_version: str | None = None) -> None:
    """Raises ImportError, with the fix, for a flax too old for the installed jax (default: the installed ones)."""
    jax_version = jax_version or importlib.metadata.version("jax")
    flax_version = flax_version or importlib.metadata.version("flax")
    if version_tuple(jax_version) >= _JAX_WITHOUT_OLD_FLAX and version_tuple(flax_version) <= _LAST_FLAX_FOR_OLD_JAX:
        raise ImportError(
            f"flax {flax_version} does not work with jax {jax_version}: flax <= 0.12.8 breaks on jax >= 0.11.1. "
            f"Install a newer flax (pip install 'flax>=0.12.9,<0.13') or jax 0.10.2 (constraints-cpu.txt).")


@contextlib.contextmanager
def gpu_lowering_target(device_kind: str = H100_DEVICE_KIND, num_cores: int = H100_CORES) -> Iterator[None]:
    """Within it, `jit(...).lower(lowering_platforms=("cuda",))` targets this GPU even on a machine without one.

    jax >= 0.11 refuses to lower a Triton kernel for CUDA without a device to read the compute capability
    from ("No supported GPU devices found"); an abstract mesh carrying an abstract GPU device is that
    device. Older jax lowers without it and is unaffected.
    """
    from jax.sharding import AbstractDevice, AbstractMesh, use_abstract_mesh

    device = AbstractDevice(device_kind=device_kind, num_cores=num_cores, platform="gpu")
    with use_abstract_mesh(AbstractMesh((1,), ("gpu",), abstract_device=device)):
        yield


def jax_gpu_paged_attention() -> Callable | None:
    """JAX's own Pallas Triton paged decode attention (a benchmark peer), or None in jax >= 0.12.1 (removed).

    Called like ours: q [B, H, hd], k/v pages [KV, pages, page_size, hd], block_tables [B, max_pages],
    lengths [B], plus its own keywords (pages_per_compute_block, k_splits, interpret, ...). JAX's kernel does
    not scale the scores, so the wrapper scales q by head_dim ** -0.5 as our kernel and the reference do."""
    try:
        module = importlib.import_module("jax.experimental.pallas.ops.gpu.paged_attention")
    except ImportError:
        return None

    def paged_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, block_tables: jax.Array,
                        lengths: jax.Array, **options: Any) -> jax.Array:
        scaled = (q * q.shape[-1] ** -0.5).astype(q.dtype)
        return module.paged_attention(scaled, k_pages, v_pages, block_tables, lengths, **options)

    return paged_attention
