"""Sampler/trainer log-prob gap in bfloat16: the engine's log-probs of the tokens it sampled against the
trainer's log-probs of the same tokens with the same weights, by model depth.

GRPO's ratio exp(logp_trainer - logp_old) assumes both programs compute one distribution; in bfloat16 they
differ by numerics (paged decode vs packed rows, different matmul shapes and rounding points). This script
builds random Qwen2-shaped models of each depth (float32 master weights, bfloat16 compute, the engine on
its bfloat16 copy, as a training run places them), samples completions at temperature 1 from random
prompts, recomputes the response tokens' log-probs with the trainer's log-prob pass (rl.update.make_logprob_fn
on packed rows) and prints mean, p99, max and the share of tokens above 0.1 of |gap|.

    python benchmarks/logprob_gap.py                       # 4, 12 and 24 layers (about 3 minutes, 2 cores)
    python benchmarks/logprob_gap.py --layers 12 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import jax.numpy as jnp
import numpy as np
from flax import nnx

from memagent_jax.engine.engine import Engine
from memagent_jax.engine.requests import EngineConfig, Request
from memagent_jax.engine.sampling import SamplingParams
from memagent_jax.model.config import ModelConfig
from memagent_jax.model.transformer import Transformer
from memagent_jax.rl.packing import TrainSequence, pack
from memagent_jax.rl.precision import cast_floating
from memagent_jax.rl.update import UpdateConfig, make_logprob_fn


def model_config(layers: int, args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(family="qwen2", vocab_size=args.vocab, hidden_size=args.hidden,
                       intermediate_size=args.intermediate, num_layers=layers, num_heads=args.heads,
                       num_kv_heads=args.kv_heads, head_dim=args.hidden // args.heads, qkv_bias=True,
                       tie_word_embeddings=False, rope_theta=10000.0, max_position_embeddings=4096,
                       initializer_range=args.init, dtype=args.dtype, param_dtype=args.param_dtype)


def measure_gap(layers: int, args: argparse.Namespace) -> dict[str, float]:
    """Samples completions with the engine and returns the |sampler - trainer| log-prob statistics."""
    cfg = model_config(layers, args)
    model = Transformer(cfg, rngs=nnx.Rngs(args.seed))
    graphdef, masters = nnx.split(model)
    # The engine generates with its own copy in the compute dtype, as training.TrainingRun gives it.
    engine = Engine(nnx.merge(graphdef, cast_floating(masters, cfg.compute_dtype)),
                    EngineConfig(page_size=16, num_pages=2048, max_slots=args.requests, max_seq_len=1024,
                                 max_prompt_len=512, prefill_chunk=128, prefill_batch=8, decode_steps=8))
    rng = np.random.default_rng(args.seed)
    requests = [Request(i, [int(t) for t in rng.integers(1, cfg.vocab_size, args.prompt_len)],
                        SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens, seed=i))
                for i in range(args.requests)]
    completions = engine.generate(requests)
    sequences = [TrainSequence(list(r.prompt) + c.tokens, len(r.prompt), sampler_logprobs=c.logprobs)
                 for r, c in zip(requests, sorted(completions, key=lambda c: c.request_id))]
    row_len = -(-(args.prompt_len + args.new_tokens) // 128) * 128
    batch, _ = pack(sequences, row_len, max_segments=2)
    # The trainer's own log-prob pass (the one GRPO's old log-probs come from), over [micro, rows, L].
    logprobs = make_logprob_fn(graphdef, UpdateConfig())
    trainer = np.asarray(logprobs(masters, {k: jnp.asarray(v)[None] for k, v in batch.items()})[0][0])
    mask = batch["loss_mask"] > 0
    gap = np.abs(trainer[mask] - batch["sampler_logp"][mask])
    return {"layers": layers, "tokens": int(mask.sum()), "mean": float(gap.mean()),
            "p99": float(np.quantile(gap, 0.99)), "max": float(gap.max()),
            "above_0.1": float((gap > 0.1).mean()), "mean_logp": float(trainer[mask].mean())}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="4,12,24", help="comma-separated depths")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv_heads", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--init", type=float, default=0.1,
                        help="weights' N(0, init) scale: 0.1 gives peaked logits (mean log-prob ~ -6.3, uniform -7.6)")
    parser.add_argument("--dtype", default="bfloat16", help="compute dtype (float32: the floor of the comparison)")
    parser.add_argument("--param_dtype", default="float32", help="master weights (the trainer's copy)")
    parser.add_argument("--prompt_len", type=int, default=192)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    rows = []
    print(f"{'layers':>6} {'tokens':>7} {'mean':>9} {'p99':>9} {'max':>9} {'>0.1':>7} {'mean logp':>10} {'s':>6}")
    for layers in (int(n) for n in args.layers.split(",")):
        start = time.perf_counter()
        row = measure_gap(layers, args)
        rows.append(row)
        print(f"{layers:>6} {row['tokens']:>7} {row['mean']:>9.2e} {row['p99']:>9.2e} {row['max']:>9.2e} "
              f"{100 * row['above_0.1']:>6.2f}% {row['mean_logp']:>10.3f} {time.perf_counter() - start:>6.1f}",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
