"""Lowering and compile time of the real-size programs, on CPU with abstract shapes and fake devices.

Nothing is allocated: every argument is a ShapeDtypeStruct carrying its sharding on a mesh of fake CPU
devices (`--xla_force_host_platform_device_count`), so the qwen2.5-7b and 14b programs compile on a laptop.
Programs, with the shapes of the paper configs (configs/qwen2_5_7b_gpu8.py: mesh data 1 x fsdp 2 x tensor 4,
bfloat16 compute over float32 masters, 8,704-token rows, remat per layer):
  * train:    the GRPO update (forward, backward, AdamW) over `--micro` micro-batches of `--rows` rows;
  * logprobs: the old/reference log-prob pass over the same batch;
  * prefill:  the engine's prefill of `--prefill-batch` x `--prefill-chunk` tokens (fresh and paged);
  * decode:   the engine's block of `--decode-steps` decode steps over `--slots` slots.
Each is timed as `jit(...).lower(...)` (tracing and lowering to StableHLO) and `.compile()` (XLA),
separately, with the persistent compilation cache off.

    python benchmarks/compile_time.py --preset qwen2.5-7b [--programs train,logprobs,prefill,decode] [--no-scan]
    python benchmarks/compile_time.py --preset qwen2.5-14b --mesh data=1,fsdp=4,tensor=8
"""

from __future__ import annotations

import math
import os
import sys

DEFAULT_MESH = "data=1,fsdp=2,tensor=4"


def parse_mesh(text: str) -> dict[str, int]:
    return {name: int(size) for name, size in (part.split("=") for part in text.split(","))}


def _requested_mesh(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith("--mesh="):
            return arg.split("=", 1)[1]
        if arg == "--mesh" and i + 1 < len(argv):
            return argv[i + 1]
    return DEFAULT_MESH


# The fake devices must exist before JAX starts: as many as the requested mesh has.
_DEVICES = math.prod(parse_mesh(_requested_mesh(sys.argv)).values())
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={_DEVICES}").strip()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from memagent_jax.engine.kv_cache import KVCache  # noqa: E402
from memagent_jax.engine.sampling import SlotSampling  # noqa: E402
from memagent_jax.engine.steps import DecodeBatch, PrefillBatch, make_decode_fn, make_prefill_fn  # noqa: E402
from memagent_jax.model.config import ModelConfig, get_preset  # noqa: E402
from memagent_jax.model.hf import abstract_model  # noqa: E402
from memagent_jax.model.sharding import DEFAULT_RULES, Rules, batch_sharding, make_mesh, state_shardings  # noqa: E402
from memagent_jax.rl.optimizer import OptimizerConfig, make_optimizer, optimizer_state_shardings  # noqa: E402
from memagent_jax.rl.update import UpdateConfig, make_logprob_fn, make_update_fn  # noqa: E402
from memagent_jax.run.configuration import tensor_parallel_rules  # noqa: E402

PROGRAMS = ("train", "logprobs", "prefill", "decode")


def _abstract(value: Any, sharding: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)


def abstract_params(cfg: ModelConfig, mesh: Any, rules: Rules) -> tuple[nnx.GraphDef, Any]:
    """(graphdef, the model state as sharded ShapeDtypeStructs)."""
    graphdef, state = nnx.split(abstract_model(cfg))
    return graphdef, jax.tree.map(_abstract, state, state_shardings(state, mesh, rules))


def time_program(fn: Callable, *args: Any) -> dict[str, float]:
    start = time.perf_counter()
    lowered = fn.lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    del compiled
    return {"lower_s": lowered_at - start, "compile_s": done - lowered_at, "total_s": done - start}


def train_programs(cfg: ModelConfig, mesh: Any, args: argparse.Namespace) -> dict[str, tuple[Callable, tuple]]:
    graphdef, params = abstract_params(cfg, mesh, DEFAULT_RULES)
    optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-6, warmup_steps=0))
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_abstract, opt_shardings = optimizer_state_shardings(
        optimizer, params, jax.tree.map(lambda p: p.sharding, params), replicated)
    opt_state = jax.tree.map(_abstract, opt_abstract, opt_shardings)
    rows = batch_sharding(mesh, DEFAULT_RULES, ndim=2)
    sharding = NamedSharding(mesh, PartitionSpec(None, *rows.spec))
    shape = (args.micro, args.rows, args.row_len)
    batch = {name: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for name, dtype in (
        ("tokens", jnp.int32), ("targets", jnp.int32), ("segment_ids", jnp.int32), ("positions", jnp.int32),
        ("loss_mask", jnp.float32), ("advantages", jnp.float32), ("sampler_logp", jnp.float32),
        ("old_logp", jnp.float32), ("ref_logp", jnp.float32))}
    update = UpdateConfig(objective="grpo", max_segments=16, piece_len=256, remat=True, scan_layers=args.scan)
    return {
        "train": (make_update_fn(graphdef, optimizer, update), (params, opt_state, batch)),
        "logprobs": (make_logprob_fn(graphdef, update), (params, batch)),
    }


def engine_programs(cfg: ModelConfig, mesh: Any, args: argparse.Namespace) -> dict[str, tuple[Callable, tuple]]:
    engine_cfg = cfg.replace(param_dtype=cfg.dtype)  # the engine holds the compute-dtype copy
    graphdef, params = abstract_params(engine_cfg, mesh, tensor_parallel_rules())
    replicated = NamedSharding(mesh, PartitionSpec())
    page_shape = (cfg.num_kv_heads, args.pages, args.page_size, cfg.head_dim)
    pages = tuple(jax.ShapeDtypeStruct(page_shape, cfg.compute_dtype, sharding=replicated)
                  for _ in range(cfg.num_layers))
    cache = KVCache(pages, pages)
    max_pages = args.max_seq_len // args.page_size

    def arr(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(shape, dtype, sharding=replicated)

    def sampling(n: int) -> SlotSampling:
        return SlotSampling(arr((n,), jnp.float32), arr((n,), jnp.int32), arr((n,), jnp.float32),
                            arr((n,), jnp.uint32))

    b, c, s = args.prefill_batch, args.prefill_chunk, args.slots
    prefill_batch = PrefillBatch(arr((b, c), jnp.int32), arr((b, c), jnp.int32), arr((b, c), bool),
                                 arr((b, max_pages), jnp.int32), arr((b,), jnp.int32), sampling(b),
                                 arr((b,), jnp.int32))
    decode_batch = DecodeBatch(arr((s,), jnp.int32), arr((s,), jnp.int32), arr((s,), bool), arr((s,), jnp.int32),
                               arr((s, max_pages), jnp.int32), arr((s, 4), jnp.int32), sampling(s),
                               arr((s,), jnp.int32))
    prefill = make_prefill_fn(graphdef, lambda _: None)
    decode = make_decode_fn(graphdef, args.decode_steps, "reference", lambda _: None)
    return {
        "prefill": (prefill, (params, cache, prefill_batch, False)),
        "prefill_fresh": (prefill, (params, cache, prefill_batch, True)),
        "decode": (decode, (params, cache, decode_batch)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="qwen2.5-7b")
    parser.add_argument("--layers", type=int, default=None, help="cut the preset to this many layers")
    parser.add_argument("--programs", default=",".join(PROGRAMS))
    parser.add_argument("--mesh", default=DEFAULT_MESH, help="the 14b config's is data=1,fsdp=4,tensor=8")
    parser.add_argument("--row-len", type=int, default=8704)
    parser.add_argument("--rows", type=int, default=2, help="rows per micro-batch")
    parser.add_argument("--micro", type=int, default=4, help="micro-batches per update")
    parser.add_argument("--pages", type=int, default=32768)
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--max-seq-len", type=int, default=8704)
    parser.add_argument("--prefill-batch", type=int, default=8)
    parser.add_argument("--prefill-chunk", type=int, default=512)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--decode-steps", type=int, default=8)
    parser.add_argument("--no-scan", dest="scan", action="store_false",
                        help="train and logprobs with layers and LM-head pieces unrolled (UpdateConfig.scan_layers)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    jax.config.update("jax_enable_compilation_cache", False)
    cfg = get_preset(args.preset, dtype="bfloat16", param_dtype="float32")
    if args.layers is not None:
        cfg = cfg.replace(num_layers=args.layers)
    mesh = make_mesh(parse_mesh(args.mesh), jax.devices()[:_DEVICES])
    wanted = args.programs.split(",")
    unknown = set(wanted) - set(PROGRAMS)
    if unknown:
        raise SystemExit(f"unknown programs {sorted(unknown)}; choose from {PROGRAMS}")
    programs: dict[str, tuple[Callable, tuple]] = {}
    if {"train", "logprobs"} & set(wanted):
        programs.update(train_programs(cfg, mesh, args))
    if {"prefill", "decode"} & set(wanted):
        programs.update(engine_programs(cfg, mesh, args))
    results = {}
    print(f"{args.preset} ({cfg.num_layers} layers), mesh {args.mesh}, scan_layers={args.scan}, jax {jax.__version__}")
    print("| program | lower s | compile s | total s |")
    print("|---|---:|---:|---:|")
    for name, (fn, fn_args) in programs.items():
        if name.split("_")[0] not in wanted:
            continue
        results[name] = time_program(fn, *fn_args)
        r = results[name]
        print(f"| {name} | {r['lower_s']:.1f} | {r['compile_s']:.1f} | {r['total_s']:.1f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "layers": cfg.num_layers, "mesh": args.mesh, "scan_layers": args.scan,
                       "jax": jax.__version__, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
