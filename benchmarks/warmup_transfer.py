"""Which warm-ups let the tiny model copy a needle's digits: copy, retrieval, then SFT on oracle traces, with
teacher-forced exactness on held-out agent conversations every N steps (BENCHMARKS.md "Retrieval warm-up").

    python benchmarks/warmup_transfer.py --tokenizer runs/quickstart/tokenizer --copy 300:0.0:32 \
        --retrieval 150:48,64:32 150:64,96:32 200:96,160:32 --sft_steps 200

A phase spec is steps:digit_fraction:max_tokens (copy) or steps:lengths:batch (retrieval, lengths joined
by commas); phases run in the order given. Teacher-forced: the model sees the oracle prefix and must
predict every response token; a conversation is exact when all of its tokens are the argmax, which is
exactly when greedy decoding reproduces it. Reported on the memory updates that write the needle, on
the final answers, and on 7-digit copy strings; "digits" is the share of digit tokens right.
One process, one device; pin it with `taskset -c N` to run two side by side.
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from memagent_jax.agent.memory_agent import AgentConfig  # noqa: E402
from memagent_jax.agent.prompts import AgentPrompts  # noqa: E402
from memagent_jax.model.sharding import DEFAULT_RULES, make_mesh  # noqa: E402
from memagent_jax.model.transformer import Transformer  # noqa: E402
from memagent_jax.rl.copy_warmup import CopyBatches, CopyTaskConfig, CopyVocabulary, copy_sequence  # noqa: E402
from memagent_jax.rl.optimizer import OptimizerConfig  # noqa: E402
from memagent_jax.rl.packing import TrainSequence  # noqa: E402
from memagent_jax.rl.policy import BatchShape, Policy  # noqa: E402
from memagent_jax.rl.retrieval_warmup import retrieval_batch  # noqa: E402
from memagent_jax.rl.sft import end_of_turn_id, oracle_sequences  # noqa: E402
from memagent_jax.rl.update import UpdateConfig  # noqa: E402
from memagent_jax.run import configuration  # noqa: E402
from memagent_jax.tokenizer import load_tokenizer  # noqa: E402
from sft_learning_curve import documents  # noqa: E402


def teacher_forced(policy: Policy, sequences: Sequence[TrainSequence], digits: set[int]) -> tuple[float, float]:
    """(share of sequences whose every response token is the argmax, share of digit tokens that are)."""
    model = nnx.merge(policy.graphdef, policy.params)
    width = -(-max(len(s.tokens) for s in sequences) // 64) * 64
    exact, right, total = [], 0, 0
    for start in range(0, len(sequences), 16):
        part = sequences[start:start + 16]
        tokens = np.zeros((16, width), np.int32)
        segments = np.zeros((16, width), np.int32)
        for row, seq in enumerate(part):
            tokens[row, :len(seq.tokens)] = seq.tokens
            segments[row, :len(seq.tokens)] = 1
        predicted = np.asarray(jnp.argmax(model(jnp.asarray(tokens), segment_ids=jnp.asarray(segments)), -1))
        for row, seq in enumerate(part):
            target = np.asarray(seq.tokens[seq.prompt_len:])
            ok = predicted[row, seq.prompt_len - 1:len(seq.tokens) - 1] == target
            exact.append(bool(ok.all()))
            is_digit = np.isin(target, list(digits))
            right, total = right + int(ok[is_digit].sum()), total + int(is_digit.sum())
    return float(np.mean(exact)), right / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--copy", nargs="*", default=["300:0.0:32"], help="copy phases steps:digit_fraction:max_tokens")
    parser.add_argument("--retrieval", nargs="*", default=[], help="retrieval phases steps:lengths:batch")
    parser.add_argument("--sft_steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8, help="SFT documents per step")
    parser.add_argument("--lengths", default="256,512", help="SFT document lengths")
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--init", type=float, default=0.02, help="initializer_range of the model's weights")
    parser.add_argument("--every", type=int, default=50)
    args = parser.parse_args()

    start = time.time()
    tokenizer = load_tokenizer(args.tokenizer)
    section = configuration.model_section("tiny", vocab_size=tokenizer.vocab_size, initializer_range=args.init)
    model = Transformer(configuration.build_model_config(section), rngs=nnx.Rngs(0))
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    agent = AgentConfig(chunk_size=256, max_memory_tokens=96, max_answer_tokens=48, max_question_tokens=48)
    prompts = AgentPrompts.build(tokenizer)
    end = end_of_turn_id(tokenizer)
    vocab = CopyVocabulary.build(tokenizer, end)
    digits = set(int(d) for d in vocab.digits)
    rng = np.random.default_rng(123)
    held_copies = [copy_sequence(rng, vocab, CopyTaskConfig(7, 7, 1.0)) for _ in range(64)]
    held_writes, held_answers = [], []
    for item in itertools.islice(documents(tokenizer, ["niah_single"], [256, 1024], 256, seed=9), 24):
        sequences = oracle_sequences(item, tokenizer, prompts, agent)
        held_answers.append(sequences[-1])
        held_writes += [s for s in sequences[:-1] if digits & set(s.tokens[s.prompt_len:])]
    optimizer = OptimizerConfig(learning_rate=args.learning_rate, warmup_steps=20, weight_decay=0.0)
    update = UpdateConfig(objective="sft", max_segments=16)

    def report(phase: str, step: int, policy: Policy, nll: float) -> None:
        cells = [teacher_forced(policy, held, digits) for held in (held_writes, held_answers, held_copies)]
        print(f"{phase} {step} nll {nll:.3f} | needle write exact {cells[0][0]:.2f} digits {cells[0][1]:.2f} | "
              f"answer exact {cells[1][0]:.2f} digits {cells[1][1]:.2f} | 7-digit copy exact {cells[2][0]:.2f} | "
              f"{time.time() - start:.0f}s", flush=True)

    def run(phase: str, policy: Policy, batches, steps: int, done: int) -> int:
        for _ in range(steps):
            metrics = policy.train([next(batches)])
            done += 1
            if done % args.every == 0:
                report(phase, done, policy, metrics["nll"])
        return done

    done = 0
    if args.copy:
        policy = Policy(model, mesh, DEFAULT_RULES, optimizer, update, BatchShape(row_len=256, rows_per_micro=8))
        for spec in args.copy:
            steps, fraction, longest = spec.split(":")
            task = CopyTaskConfig(min(8, int(longest)), int(longest), float(fraction))
            done = run("copy", policy, CopyBatches(tokenizer, end, 64, task, seed=3 + done), int(steps), done)
        model = nnx.merge(policy.graphdef, policy.params)
    if args.retrieval:
        policy = Policy(model, mesh, DEFAULT_RULES, optimizer, update, BatchShape(row_len=512, rows_per_micro=8))
        for index, spec in enumerate(args.retrieval):
            steps, lengths, batch = spec.split(":")
            short = documents(tokenizer, ["niah_single"], [int(n) for n in lengths.split(",")], 4096, seed=7 + index)
            batches = (retrieval_batch([next(short) for _ in range(int(batch))], tokenizer, end, 512)
                       for _ in itertools.count())
            done = run("retrieval", policy, batches, int(steps), done)
        model = nnx.merge(policy.graphdef, policy.params)
    policy = Policy(model, mesh, DEFAULT_RULES, optimizer, update, BatchShape(row_len=1024, rows_per_micro=4))
    train = documents(tokenizer, ["niah_single"], [int(n) for n in args.lengths.split(",")], 256, seed=1)
    sft = ([s for _ in range(args.batch) for s in oracle_sequences(next(train), tokenizer, prompts, agent)]
           for _ in itertools.count())
    run("sft", policy, sft, args.sft_steps, 0)


if __name__ == "__main__":
    main()
