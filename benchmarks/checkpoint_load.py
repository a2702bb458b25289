"""Checkpoint loading speed: our HF safetensors loader against a plain read of the same bytes.

Writes a random HF checkpoint of a preset's shape (default qwen2.5-0.5b in bfloat16, ~1 GB, two shard
files) into a temporary folder, then times with a warm page cache, side by side:
  plain read     f.readinto of every file into one buffer (the floor for getting the bytes into memory)
  our reader     our header parse + memory map + one copy per tensor, HF layout (no transposes)
  safetensors    the safetensors library reading every tensor, HF layout (pt + clone, and flax)
  transposes     np.ascontiguousarray(w.T) of the weights our layout stores transposed, from memory
  ours, 1 device load_hf_checkpoint onto one CPU device
  ours, fsdp=8   load_hf_checkpoint onto an 8-fake-device fsdp mesh
  transformers   AutoModelForCausalLM.from_pretrained of the folder (context only: it keeps the weights
                 memory-mapped, so pages are read on first use, not during the load)
Each runs --repeats times; the table gives the best and the median, GB/s and the ratio to the plain read.

    python benchmarks/checkpoint_load.py [--preset qwen2.5-0.5b] [--layers 4] [--repeats 3]
"""

from __future__ import annotations

import os

# Fake devices for the fsdp case; must be set before jax is imported.
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from memagent_jax.model.config import ModelConfig, get_preset  # noqa: E402
from memagent_jax.model.hf import (  # noqa: E402
    _DTYPES,
    _copy,
    _MappedFiles,
    load_hf_checkpoint,
    read_checkpoint_headers,
    save_hf_checkpoint,
    tensor_names,
)
from memagent_jax.model.sharding import make_mesh  # noqa: E402
from memagent_jax.model.transformer import Transformer  # noqa: E402


def write_checkpoint(preset: str, layers: int | None, directory: Path) -> int:
    """A random bfloat16 checkpoint in about two shard files; returns the total file size in bytes."""
    overrides = {"param_dtype": "bfloat16", "dtype": "bfloat16"}
    if layers is not None:
        overrides["num_layers"] = layers
    cfg = get_preset(preset, **overrides)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    shard_bytes = math.ceil(cfg.num_params * 2 / 2) + 2**20  # two files (the greedy split keeps order)
    save_hf_checkpoint(model, directory, max_shard_bytes=shard_bytes, overwrite=True)
    del model
    gc.collect()
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def plain_read(directory: Path, fresh: bool, reused: list) -> None:
    """All safetensors bytes into one buffer with readinto; fresh=True allocates (and faults in) it anew."""
    files = sorted(directory.glob("*.safetensors"))
    total = sum(p.stat().st_size for p in files)
    if fresh or not reused:
        reused[:] = [np.empty(total, np.uint8)]
    view, offset = memoryview(reused[0]), 0
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while (n := f.readinto(view[offset:])) > 0:
                offset += n
    assert offset == total


def safetensors_read(directory: Path, framework: str) -> list:
    """Every tensor through the safetensors library, in HF layout (no transposes, no sharding).

    framework="pt" hands out views of a memory map, so each is cloned into owned memory as a loader must;
    framework="flax" returns jax arrays on the default device.
    """
    from safetensors import safe_open

    out = []
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(path, framework=framework) as f:
            for name in f.keys():
                tensor = f.get_tensor(name)
                out.append(tensor.clone() if framework == "pt" else tensor)
    return jax.block_until_ready(out) if framework == "flax" else out


def our_reader(directory: Path) -> list[np.ndarray]:
    """Our read path alone: header parse, memory map, one copy per tensor into fresh aligned buffers
    (HF layout: no transposes, no devices) - the part comparable with the safetensors library."""
    tensors = read_checkpoint_headers(directory)
    files = _MappedFiles()
    out = [_copy(files.view(info), _DTYPES[info.dtype]) for info in tensors.values()]
    files.close()
    return out


def linear_weights(directory: Path) -> list[np.ndarray]:
    """In-memory copies (as uint16) of the weights our layout stores transposed, for the transpose floor."""
    cfg = ModelConfig.from_hf(directory)
    tensors = read_checkpoint_headers(directory)
    out = []
    for t in tensor_names(cfg):
        if t.layout.kind == "linear":
            info = tensors[t.hf]
            with open(info.file, "rb") as f:
                f.seek(info.start)
                out.append(np.frombuffer(f.read(info.end - info.start), np.uint16).reshape(info.shape))
    return out


def transposes_alone(weights: list[np.ndarray]) -> list[np.ndarray]:
    """Just the transposes, one np.ascontiguousarray(w.T) each, from memory: what the layout costs."""
    return [np.ascontiguousarray(w.T) for w in weights]


def ours(directory: Path, mesh) -> None:
    model, _ = load_hf_checkpoint(directory, mesh=mesh, dtype="bfloat16", param_dtype="bfloat16")
    jax.block_until_ready(nnx.state(model))


def hf_transformers(directory: Path) -> None:
    import torch
    import transformers

    transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16, local_files_only=True)


def timed(cases: list[tuple[str, Callable[[], object]]], repeats: int) -> dict[str, list[float]]:
    """Round robin (every case once per round), so a burst of load elsewhere hits all cases alike."""
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(repeats):
        for name, fn in cases:
            gc.collect()
            start = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - start)
            del result
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="qwen2.5-0.5b")
    parser.add_argument("--layers", type=int, default=None, help="override the preset's layer count")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers row")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ckpt_bench_") as tmp:
        directory = Path(tmp) / "checkpoint"
        start = time.perf_counter()
        total = write_checkpoint(args.preset, args.layers, directory)
        written = time.perf_counter() - start
        files = sorted(p.name for p in directory.glob("*.safetensors"))
        reused: list = []
        weights = linear_weights(directory)
        linear_bytes = sum(w.nbytes for w in weights)
        plain_read(directory, True, reused)  # warm the page cache
        cases: list[tuple[str, Callable[[], object]]] = [
            ("plain read (fresh buffer)", lambda: plain_read(directory, True, reused)),
            ("plain read (reused buffer)", lambda: plain_read(directory, False, reused)),
            ("our reader alone (HF layout, no transposes)", lambda: our_reader(directory)),
            ("safetensors library, pt + clone (HF layout)", lambda: safetensors_read(directory, "pt")),
            ("safetensors library, flax (HF layout)", lambda: safetensors_read(directory, "flax")),
            (f"numpy transposes alone ({linear_bytes / 1e9:.2f} GB of linear weights, 1 thread)",
             lambda: transposes_alone(weights)),
            ("ours, 1 device", lambda: ours(directory, None)),
            ("ours, fsdp=8 mesh", lambda: ours(directory, make_mesh({"fsdp": 8}))),
        ]
        if not args.no_transformers:
            cases.append(("transformers from_pretrained (lazy mmap)", lambda: hf_transformers(directory)))
        ours(directory, None)  # compile-free, but imports and first-use costs out of the timings
        results = timed(cases, args.repeats)

    base = min(results["plain read (fresh buffer)"])
    print(f"\ncheckpoint: preset {args.preset}, layers {args.layers or 'preset'}, bfloat16, "
          f"{total / 1e9:.3f} GB in {len(files)} files ({', '.join(files)}), written in {written:.1f} s")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}, "
          f"{args.repeats} runs each (round robin), warm page cache\n")
    print("| what | best s | median s | GB/s (best) | time / plain read |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, times in results.items():
        best = min(times)
        print(f"| {name} | {best:.3f} | {statistics.median(times):.3f} | {total / best / 1e9:.2f} | "
              f"{best / base:.2f}x |")


if __name__ == "__main__":
    main()
