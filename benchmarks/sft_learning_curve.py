"""How fast the quickstart's tiny model learns the memory agent's job: copy warm-up, retrieval warm-up, then
SFT on oracle traces, with greedy accuracy on held-out documents every few steps (BENCHMARKS.md "Quickstart").

    python benchmarks/sft_learning_curve.py --tokenizer runs/quickstart/tokenizer --copy_steps 300 \
        --retrieval_steps 300 --sft_steps 200 --tasks niah_single --eval_lengths 256,1024,4096

Each SFT step trains on the oracle conversations of `--batch` documents plus `--copy_mix` copy strings
(keeping the copy skill in use). One process, one device; pin it with `taskset -c N` to run two side by side.
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import sys
import time
from typing import Iterator

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from memagent_jax.agent.memory_agent import AgentConfig, MemoryAgent  # noqa: E402
from memagent_jax.agent.verify import boxed_reward  # noqa: E402
from memagent_jax.data.pipeline import AgentSample, make_pipeline  # noqa: E402
from memagent_jax.data.synthetic import SyntheticSource  # noqa: E402
from memagent_jax.data.tasks import make_task  # noqa: E402
from memagent_jax.engine.engine import Engine  # noqa: E402
from memagent_jax.engine.requests import EngineConfig  # noqa: E402
from memagent_jax.model.sharding import DEFAULT_RULES, make_mesh  # noqa: E402
from memagent_jax.model.transformer import Transformer  # noqa: E402
from memagent_jax.rl.copy_warmup import CopyBatches, CopyTaskConfig  # noqa: E402
from memagent_jax.rl.optimizer import OptimizerConfig  # noqa: E402
from memagent_jax.rl.policy import BatchShape, Policy  # noqa: E402
from memagent_jax.rl.retrieval_warmup import retrieval_batch  # noqa: E402
from memagent_jax.rl.sft import end_of_turn_id, oracle_sequences  # noqa: E402
from memagent_jax.rl.update import UpdateConfig  # noqa: E402
from memagent_jax.run import configuration  # noqa: E402
from memagent_jax.tokenizer import Tokenizer, load_tokenizer  # noqa: E402


def documents(tokenizer: Tokenizer, tasks: list[str], lengths: list[int], chunk: int, seed: int
              ) -> Iterator[AgentSample]:
    """An endless stream of documents, task and length drawn uniformly per document."""
    streams = [iter(make_pipeline(SyntheticSource(make_task(t, tokenizer, n, seed=seed), 100_000, offset=seed * 10**6),
                                  1, tokenizer=tokenizer, chunk_tokens=chunk, seed=seed, num_epochs=None))
               for t in tasks for n in lengths]
    rng = np.random.default_rng(seed)
    while True:
        yield next(streams[int(rng.integers(len(streams)))])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--vocab_size", type=int, default=0, help="0: the tokenizer's")
    parser.add_argument("--copy_steps", type=int, default=300)
    parser.add_argument("--digit_fraction", type=float, default=0.0)
    parser.add_argument("--max_gap_tokens", type=int, default=0)
    parser.add_argument("--copy_row_len", type=int, default=256)
    parser.add_argument("--copy_max_tokens", type=int, default=64)
    parser.add_argument("--retrieval_steps", type=int, default=0)
    parser.add_argument("--retrieval_lengths", default="64,96,128")
    parser.add_argument("--retrieval_batch", type=int, default=32)
    parser.add_argument("--init", type=float, default=0.02, help="initializer_range of the model's weights")
    parser.add_argument("--sft_steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--copy_mix", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--tasks", default="niah_single")
    parser.add_argument("--lengths", default="256,512,1024")
    parser.add_argument("--eval_lengths", default="256,1024,4096")
    parser.add_argument("--eval_every", type=int, default=50)
    parser.add_argument("--chunk", type=int, default=256)
    args = parser.parse_args()

    start = time.time()
    tokenizer = load_tokenizer(args.tokenizer)
    model_section = configuration.model_section("tiny", vocab_size=args.vocab_size or tokenizer.vocab_size,
                                                initializer_range=args.init)
    model = Transformer(configuration.build_model_config(model_section), rngs=nnx.Rngs(0))
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    agent_config = AgentConfig(chunk_size=args.chunk, max_memory_tokens=96, max_answer_tokens=48,
                               max_question_tokens=48, temperature=0.0)
    engine = Engine(model, EngineConfig(page_size=16, num_pages=4096, max_slots=64, max_seq_len=args.chunk + 768,
                                        max_prompt_len=args.chunk + 528, prefill_chunk=256, prefill_batch=8,
                                        decode_steps=8))
    agent = MemoryAgent(engine, tokenizer, agent_config)
    end = end_of_turn_id(tokenizer)
    copy_task = CopyTaskConfig(max_tokens=args.copy_max_tokens, digit_fraction=args.digit_fraction,
                               max_gap_tokens=args.max_gap_tokens)
    optimizer = OptimizerConfig(learning_rate=args.learning_rate, warmup_steps=20, weight_decay=0.0)
    sft_update = UpdateConfig(objective="sft", max_segments=16)
    if args.copy_steps:
        copier = Policy(model, mesh, DEFAULT_RULES,
                        OptimizerConfig(learning_rate=3e-3, warmup_steps=20, weight_decay=0.0),
                        sft_update, BatchShape(row_len=args.copy_row_len, rows_per_micro=8))
        copies = CopyBatches(tokenizer, end, 64, copy_task, seed=3)
        for step in range(1, args.copy_steps + 1):
            metrics = copier.train([next(copies)])
            if step % 50 == 0:
                print(f"copy {step} nll {metrics['nll']:.3f} at {time.time() - start:.0f}s", flush=True)
        model = nnx.merge(copier.graphdef, copier.params)
    if args.retrieval_steps:
        retriever = Policy(model, mesh, DEFAULT_RULES, optimizer, sft_update, BatchShape(row_len=512, rows_per_micro=8))
        short = documents(tokenizer, args.tasks.split(","), [int(n) for n in args.retrieval_lengths.split(",")],
                          args.chunk, seed=4)
        for step in range(1, args.retrieval_steps + 1):
            items = [next(short) for _ in range(args.retrieval_batch)]
            metrics = retriever.train([retrieval_batch(items, tokenizer, end, 512)])
            if step % 50 == 0:
                print(f"retrieval {step} nll {metrics['nll']:.3f} at {time.time() - start:.0f}s", flush=True)
        model = nnx.merge(retriever.graphdef, retriever.params)
    policy = Policy(model, mesh, DEFAULT_RULES, optimizer, sft_update, BatchShape(row_len=1024, rows_per_micro=4))
    mixed_copies = CopyBatches(tokenizer, end, max(args.copy_mix, 1), copy_task, seed=5)
    tasks = args.tasks.split(",")
    train = documents(tokenizer, tasks, [int(n) for n in args.lengths.split(",")], args.chunk, seed=1)
    held_out = {n: list(itertools.islice(documents(tokenizer, tasks, [n], args.chunk, seed=9), 16))
                for n in (int(n) for n in args.eval_lengths.split(","))}
    sft_start = time.time()
    for step in range(1, args.sft_steps + 1):
        sequences = [s for _ in range(args.batch) for s in oracle_sequences(next(train), tokenizer, agent.prompts,
                                                                            agent_config)]
        sequences += next(mixed_copies)[:args.copy_mix]
        metrics = policy.train([sequences])
        if step % 10 == 0:
            print(f"sft {step} nll {metrics['nll']:.3f} {(time.time() - sft_start) / step:.2f} s/step", flush=True)
        if step % args.eval_every == 0:
            engine.update_weights(policy.params)
            cells = []
            for length, items in held_out.items():
                runs = agent.run([x.agent_task(tokenizer) for x in items], keep_prompts=False)
                accuracy = np.mean([boxed_reward(r.answer, x.sample.ground_truth) for r, x in zip(runs, items)])
                cells.append(f"{length}: {accuracy:.2f}")
            print(f"eval {step} accuracy {' '.join(cells)}; last memory {runs[0].memories[-1][:80]!r}, answer "
                  f"{runs[0].answer[:40]!r}, truth {items[0].sample.ground_truth}", flush=True)


if __name__ == "__main__":
    main()
