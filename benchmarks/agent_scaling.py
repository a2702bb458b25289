"""Cost of reading long documents: the memory agent against full-context attention, 16K to 1M tokens.

Each (mode, length) runs in its own process so that its peak resident memory is its own. The agent reads
`--batch` documents of the given length in chunks with a fixed-size memory; the full-context baseline
puts the whole document into one prompt of the same tiny model (its KV cache and attention grow with
the length) until it no longer fits the time or memory limits. Reported: seconds per document token and
peak host memory, each relative to the shortest length (linear cost means ratios near 1.0).

    python benchmarks/agent_scaling.py [--lengths 16384,65536,262144,1048576] [--batch 2]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
from typing import Iterator

# The documents are lines of the test-fixture corpus (tests/fixture_data.py).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

QUESTION = "What is the special magic number for calm-river mentioned in the provided text?"


def _document_pieces(tokenizer, num_tokens: int, seed: int) -> Iterator[list[int]]:
    """Exactly num_tokens tokens of synthetic text, produced line by line (never held whole)."""
    from fixture_data import tokenizer_corpus

    produced = 0
    lines = tokenizer_corpus(10**9, seed=seed)
    while produced < num_tokens:
        ids = tokenizer.encode(next(lines) + "\n")[: num_tokens - produced]
        produced += len(ids)
        yield ids


def _setup(workdir: str, max_positions: int):
    import jax
    from flax import nnx

    from fixture_data import tokenizer_corpus
    from memagent_jax.model.config import get_preset
    from memagent_jax.model.transformer import Transformer
    from memagent_jax.tokenizer import load_tokenizer, train_sentencepiece

    train_sentencepiece(tokenizer_corpus(3000), workdir, vocab_size=1024)
    tokenizer = load_tokenizer(workdir)
    model = Transformer(get_preset("tiny", max_position_embeddings=max_positions), rngs=nnx.Rngs(0))
    del jax
    return tokenizer, model


def run_agent(length: int, batch: int, chunk: int, memory: int, answer: int) -> dict:
    from memagent_jax.agent.memory_agent import AgentConfig, AgentTask, MemoryAgent
    from memagent_jax.engine.engine import Engine
    from memagent_jax.engine.requests import EngineConfig

    with tempfile.TemporaryDirectory() as workdir:
        tokenizer, model = _setup(workdir, 8192)
    config = AgentConfig(chunk_size=chunk, max_memory_tokens=memory, max_answer_tokens=answer,
                         max_question_tokens=64, temperature=1.0)
    engine = Engine(model, EngineConfig(page_size=16, num_pages=batch * 160 + 8, max_slots=batch,
                                        max_seq_len=2048, max_prompt_len=2048 - memory, prefill_chunk=512,
                                        prefill_batch=batch, decode_steps=8))
    agent = MemoryAgent(engine, tokenizer, config)

    def tasks(num_tokens: int, tag: str, seed: int):
        return [AgentTask(f"{tag}{i}", QUESTION,
                          lambda i=i: _document_pieces(tokenizer, num_tokens, seed=seed + i)) for i in range(batch)]

    # Warm-up documents differ from the timed ones, so no prompt of the timed run is cached beforehand.
    agent.run(tasks(16 * chunk, "warm", seed=1000), keep_prompts=False)  # compile the shapes the timed run uses
    compiled = sum(engine.stats.compilations.values())
    started = time.perf_counter()
    trajectories = agent.run(tasks(length, "doc", seed=0), keep_prompts=False)
    seconds = time.perf_counter() - started
    chunks = sum(t.num_chunks for t in trajectories)
    return {"seconds": seconds, "doc_tokens": batch * length, "chunks": chunks,
            "compiles_in_timed_run": sum(engine.stats.compilations.values()) - compiled}


def run_full_context(length: int, batch: int, answer: int) -> dict:
    from memagent_jax.engine.engine import Engine
    from memagent_jax.engine.requests import EngineConfig, Request
    from memagent_jax.engine.sampling import SamplingParams

    max_seq = -(-(length + 128 + answer) // 512) * 512
    with tempfile.TemporaryDirectory() as workdir:
        tokenizer, model = _setup(workdir, max_seq)
    engine = Engine(model, EngineConfig(page_size=16, num_pages=batch * max_seq // 16 + 8, max_slots=batch,
                                        max_seq_len=max_seq, max_prompt_len=max_seq - answer, prefill_chunk=512,
                                        prefill_batch=batch, decode_steps=8))

    def requests(num_tokens: int, tag: str, seed: int):
        question = tokenizer.encode(QUESTION)
        return [Request(f"{tag}{i}", [t for p in _document_pieces(tokenizer, num_tokens, seed + i) for t in p]
                        + question, SamplingParams(temperature=1.0, max_new_tokens=answer, seed=i))
                for i in range(batch)]

    # Other documents for the warm-up (nothing of the timed prompts may be cached); compilations of
    # page-table widths beyond its length happen in the timed run and are counted.
    engine.generate(requests(4096, "warm", seed=1000))
    compiled = sum(engine.stats.compilations.values())
    started = time.perf_counter()
    engine.generate(requests(length, "doc", seed=0))
    return {"seconds": time.perf_counter() - started, "doc_tokens": batch * length,
            "compiles_in_timed_run": sum(engine.stats.compilations.values()) - compiled}


def _child(args: argparse.Namespace) -> None:
    if args.mode == "agent":
        result = run_agent(args.length, args.batch, args.chunk, args.memory, args.answer)
    else:
        result = run_full_context(args.length, args.batch, args.answer)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def _parent(args: argparse.Namespace) -> None:
    rows = []
    for mode in ("agent", "full"):
        for length in args.lengths:
            if mode == "full" and length > args.full_max:
                rows.append((mode, length, None, f"skipped: over --full_max={args.full_max}"))
                continue
            command = [sys.executable, __file__, "--child", f"--mode={mode}", f"--length={length}",
                       f"--batch={args.batch}", f"--chunk={args.chunk}", f"--memory={args.memory}",
                       f"--answer={args.answer}"]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                rows.append((mode, length, None, f"did not finish in {args.timeout}s"))
                continue
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                rows.append((mode, length, None, f"failed (exit {done.returncode}): {done.stderr.strip()[-200:]}"))
                continue
            rows.append((mode, length, json.loads(lines[-1][7:]), ""))
            print(mode, length, rows[-1][2], flush=True)
    _print_table(rows, args)


def _print_table(rows, args) -> None:
    print(f"\nbatch {args.batch} documents; agent chunk {args.chunk}, memory {args.memory}, answer {args.answer} "
          "tokens; tiny model, CPU\n")
    print("| mode | doc tokens | seconds | us / doc token | vs first | peak RSS MB | vs first | note |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    first: dict[str, dict] = {}
    for mode, length, result, note in rows:
        if result is None:
            print(f"| {mode} | {length:,} | | | | | | {note} |")
            continue
        per_token = result["seconds"] / result["doc_tokens"] * 1e6
        base = first.setdefault(mode, {"per_token": per_token, "rss": result["peak_rss_mb"]})
        print(f"| {mode} | {length:,} | {result['seconds']:.1f} | {per_token:.1f} | "
              f"{per_token / base['per_token']:.2f} | {result['peak_rss_mb']:.0f} | "
              f"{result['peak_rss_mb'] / base['rss']:.2f} | {note} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")],
                        default=[16384, 65536, 262144, 1048576])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--memory", type=int, default=32)
    parser.add_argument("--answer", type=int, default=8)
    parser.add_argument("--full_max", type=int, default=262144, help="longest length tried in full context")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per (mode, length)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("agent", "full"), default="agent", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, default=16384, help=argparse.SUPPRESS)
    args = parser.parse_args()
    _child(args) if args.child else _parent(args)


if __name__ == "__main__":
    main()
