"""Weight sync between the training and the rollout layout: what `rl/weight_sync_seconds` costs per layout.

Side by side on one model and one mesh (8 fake CPU devices by default, fsdp x tensor = 4 x 2): trained
weights in the training layout (FSDP over `fsdp`, tensor parallel over `tensor`) moved by
`RolloutLayout.place` to
  * same:       the training layout itself (a plain device-to-device copy, the floor),
  * tp:         tensor parallel only (no FSDP: an all-gather over `fsdp`),
  * replicated: every device holds all weights (an all-gather over both axes).
Reported: median seconds over --repeats (after one warm-up move) and bytes each device receives.

    python benchmarks/weight_sync.py [--preset qwen2.5-0.5b] [--devices 8] [--repeats 5]
"""

from __future__ import annotations

import os
import sys

if "--devices" in sys.argv:
    _count = sys.argv[sys.argv.index("--devices") + 1]
else:
    _count = "8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_count}"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from memagent_jax.model.config import get_preset  # noqa: E402
from memagent_jax.model.sharding import DEFAULT_RULES, create_sharded, make_mesh  # noqa: E402
from memagent_jax.model.transformer import Transformer  # noqa: E402
from memagent_jax.rl.rollout_layout import RolloutLayout  # noqa: E402
from memagent_jax.run.configuration import tensor_parallel_rules  # noqa: E402

LAYOUTS = {"same": DEFAULT_RULES, "tp": tensor_parallel_rules(),
           "replicated": tuple((n, None) for n, _ in DEFAULT_RULES)}


def _per_device_bytes(state) -> int:
    return sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="qwen2.5-0.5b")
    parser.add_argument("--layers", type=int, default=4, help="keep this many layers of the preset")
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--tensor", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cfg = get_preset(args.preset)
    import dataclasses

    cfg = dataclasses.replace(cfg, num_layers=min(cfg.num_layers, args.layers), dtype="float32",
                              param_dtype="float32")
    mesh = make_mesh({"data": 1, "fsdp": -1, "tensor": args.tensor}, jax.devices()[: args.devices])
    trained = nnx.split(create_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh, DEFAULT_RULES))[1]
    print(f"{args.preset} ({cfg.num_layers} layers, {cfg.num_params / 1e6:.0f}M params, float32), mesh "
          f"{dict(mesh.shape)}; training layout: {_per_device_bytes(trained) / 1e6:.1f} MB per device")
    print("| rollout layout | MB per device | median s | vs same |\n|---|---:|---:|---:|")
    floor = None
    for name, rules in LAYOUTS.items():
        layout = RolloutLayout(trained, mesh, rules)
        jax.block_until_ready(layout.place(trained))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            placed = jax.block_until_ready(layout.place(trained))
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        floor = floor or median
        print(f"| {name} | {_per_device_bytes(placed) / 1e6:.1f} | {median:.4f} | {median / floor:.2f}x |")


if __name__ == "__main__":
    main()
