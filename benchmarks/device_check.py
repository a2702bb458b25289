"""One script for a first run on a GPU (an H100 or H200): correctness and speed of every accelerator path,
written to {out}/device_check.json and {out}/device_check.md in at most --budget seconds (default 420).

Sections, each guarded (a failure is recorded and the next section runs):
  environment    Python, jax/jaxlib/flax/optax/orbax versions, devices
  roofline       device memory bandwidth (an elementwise pass, read + write) and the bf16 matmul peak
  attention      our Pallas Triton paged decode kernel and JAX's own (where this jax has it) against the
                 reference on random ragged batches, bf16 and f32: max abs error and time
  decode         the engine's jitted decode step on a random Qwen2.5-0.5B-shaped model at batch 64, 128
                 and 256: tokens/s and the HBM bandwidth it implies, against the roofline's
  prefill        one fresh prefill chunk: MFU against the measured matmul peak
  train          one optimizer update (forward, backward, AdamW, float32 masters) on packed rows: MFU
  logprob_gap    benchmarks/logprob_gap.py's bf16 sampler/trainer log-prob gap
  grpo           one end-to-end Multi-Conv GRPO step of the memory agent on a random 0.5B model

    python benchmarks/device_check.py --out runs/device_check            # on the GPU machine
    python benchmarks/device_check.py --smoke --out /tmp/dc              # every path at tiny sizes, CPU, < 1 min
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import pathlib
import platform
import sys
from typing import Any, Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax  # noqa: E402

import device_kernels  # noqa: E402
import device_model  # noqa: E402
import logprob_gap  # noqa: E402
from device_report import Report, Section, run_sections  # noqa: E402
from memagent_jax.model.config import ModelConfig, get_preset  # noqa: E402
from memagent_jax.run.metrics import device_peak_flops  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Sizes:
    model: ModelConfig
    copy_mib: int
    matmul_n: int
    attention_batch: int
    attention_max_pages: int
    page_size: int
    decode_batches: tuple[int, ...]
    decode_context: int
    decode_steps: int
    prefill_batch: int
    prefill_len: int
    train_row_len: int
    train_rows_per_micro: int
    train_micro_batches: int
    gap_args: tuple[str, ...]
    grpo_doc_tokens: int
    grpo_chunk_tokens: int
    grpo_group_size: int
    grpo_batch_size: int
    grpo_slots: int
    grpo_row_len: int  # packed training rows and the engine's longest sequence
    corpus_lines: int
    repeats: int


FULL = Sizes(
    model=get_preset("qwen2.5-0.5b"), copy_mib=2048, matmul_n=8192, attention_batch=64, attention_max_pages=128,
    page_size=16, decode_batches=(64, 128, 256), decode_context=1024, decode_steps=16, prefill_batch=8,
    prefill_len=2048, train_row_len=2048, train_rows_per_micro=4, train_micro_batches=2,
    gap_args=("--layers", "24"), grpo_doc_tokens=1024, grpo_chunk_tokens=256, grpo_group_size=8,
    grpo_batch_size=4, grpo_slots=32, grpo_row_len=1024, corpus_lines=1500, repeats=5)

# Every path once, at sizes 2 shared CPU cores run in well under a minute (tests/test_device_check.py).
SMOKE = Sizes(
    model=ModelConfig(family="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=1,
                      num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=2048, qkv_bias=True,
                      tie_word_embeddings=True, dtype="bfloat16", param_dtype="float32"),
    copy_mib=4, matmul_n=128, attention_batch=3, attention_max_pages=4, page_size=8, decode_batches=(2, 4),
    decode_context=24, decode_steps=2, prefill_batch=2, prefill_len=32, train_row_len=64,
    train_rows_per_micro=2, train_micro_batches=1,
    gap_args=("--layers", "1", "--hidden", "64", "--intermediate", "128", "--vocab", "256", "--prompt_len", "16",
              "--new_tokens", "4", "--requests", "2"),
    grpo_doc_tokens=48, grpo_chunk_tokens=48, grpo_group_size=2, grpo_batch_size=1, grpo_slots=4, grpo_row_len=512,
    corpus_lines=50, repeats=1)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, Any]:
    device = jax.devices()[0]
    return {"python": platform.python_version(),
            **{name: _version(name) for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
                                                  "jax-cuda12-plugin", "jax-cuda13-plugin", "libtpu")},
            "backend": jax.default_backend(), "device_kind": device.device_kind, "device_count": jax.device_count(),
            "spec_bf16_peak_TFLOP_per_s": (device_peak_flops(device) or 0) / 1e12 or None}


def build_sections(sizes: Sizes) -> list[Section]:
    """The sections in order of value; later ones read the roofline's measurements when it ran."""
    roof: dict[str, Any] = {}
    model = sizes.model

    def roofline() -> dict[str, Any]:
        roof.update(device_kernels.copy_bandwidth(sizes.copy_mib, sizes.repeats))
        roof.update(device_kernels.matmul_peak(sizes.matmul_n, sizes.repeats))
        return dict(roof)

    def attention() -> dict[str, Any]:
        return device_kernels.attention_kernels(sizes.attention_batch, model.num_heads, model.num_kv_heads,
                                                model.head_dim, sizes.page_size, sizes.attention_max_pages,
                                                sizes.repeats)

    def decode() -> dict[str, Any]:
        return device_model.decode_throughput(model, sizes.decode_batches, sizes.decode_context, sizes.decode_steps,
                                              sizes.page_size, sizes.repeats, roof.get("copy_bytes_per_s"))

    def prefill() -> dict[str, Any]:
        return device_model.prefill_mfu(model, sizes.prefill_batch, sizes.prefill_len, sizes.page_size,
                                        sizes.repeats, roof.get("matmul_flops_per_s"))

    def train() -> dict[str, Any]:
        device_model.inference_state.cache_clear()  # the bf16 inference copy is not needed any more
        return device_model.train_mfu(model, sizes.train_row_len, sizes.train_rows_per_micro,
                                      sizes.train_micro_batches, sizes.repeats, roof.get("matmul_flops_per_s"))

    def gap() -> dict[str, Any]:
        args = logprob_gap.parse_args(list(sizes.gap_args))
        return {"rows": [logprob_gap.measure_gap(int(n), args) for n in args.layers.split(",")]}

    def grpo() -> dict[str, Any]:
        return device_model.grpo_step(model, sizes.grpo_doc_tokens, sizes.grpo_chunk_tokens, sizes.grpo_group_size,
                                      sizes.grpo_batch_size, sizes.grpo_slots, sizes.grpo_row_len,
                                      sizes.corpus_lines)

    parts: list[tuple[str, Callable[[], dict[str, Any]], float]] = [
        ("environment", environment, 0), ("roofline", roofline, 10), ("attention", attention, 20),
        ("decode", decode, 60), ("prefill", prefill, 30), ("train", train, 60), ("logprob_gap", gap, 30),
        ("grpo", grpo, 90)]
    # Smoke runs every path whatever its estimate: they are estimates for the full sizes.
    return [Section(name, run, 0 if sizes is SMOKE else need) for name, run, need in parts]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/device_check"),
                        help="folder for device_check.json and device_check.md")
    parser.add_argument("--smoke", action="store_true", help="every path at tiny sizes (CPU is enough)")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds for all sections; a section is not started without its estimate left")
    parser.add_argument("--sections", default="", help="comma-separated subset (default: all)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    sections = build_sections(sizes)
    if args.sections:
        wanted = args.sections.split(",")
        unknown = set(wanted) - {s.name for s in sections}
        if unknown:
            raise SystemExit(f"unknown sections {sorted(unknown)}; known: {[s.name for s in sections]}")
        sections = [s for s in sections if s.name in wanted]
    report = Report(args.out, {"started": datetime.datetime.now().isoformat(timespec="seconds"),
                               "mode": "smoke" if args.smoke else "full", "budget_s": args.budget,
                               "model": f"{sizes.model.num_layers} layers, hidden {sizes.model.hidden_size}, "
                                        f"vocab {sizes.model.vocab_size}, {sizes.model.dtype} compute"})
    run_sections(sections, report, args.budget)
    for name, outcome in report.sections.items():
        print(f"{name:12} {outcome['status']:8} {outcome['seconds']:7.1f} s  {outcome.get('error', '')}", flush=True)
    print(f"wrote {report.json_path} and {report.markdown_path}")
    return 0 if all(o["status"] == "ok" for o in report.sections.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
