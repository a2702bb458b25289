"""What one GRPO step of the quickstart costs, part by part: rollouts, log-prob passes, update, weight sync,
compilation and host work.

The run is the quickstart's GRPO phase (configs/quickstart.py: 4 samples x 4 rollouts of 1-2K-token RULER
documents, chunks of 256 tokens, memory 128, 2 updates a step) on a random model of the quickstart's shape
with its trained SentencePiece tokenizer, built as `memagent-train` builds it (run/training.py). Two
settings differ from the quickstart so that a random model trains at all: dynamic sampling is off (every
group of a random model scores 0 and would be dropped) and truncated trajectories are kept (overlong="none":
a random model never ends a memory before its 128-token limit). Every part is timed with
time.perf_counter around it, device work waited for (jax.block_until_ready):

  rollout            MemoryAgent.run: the whole agent loop, of which
    engine prefill   Engine._run_prefill (device + its host bookkeeping)
    engine decode    Engine._run_decode
    agent host       the rest: prompts, tokenizing, scheduling, the agent's bookkeeping
  verifier           scoring the final answers (score_groups)
  advantages         group advantages and one training sequence per conversation
  packing            rows, segments, the host-to-device copy
  log-prob passes    old and reference log-probs
  update             the optimizer steps
  weight sync        the trained weights to the engine's layout
  other              the step's remaining host work

and the time inside each spent compiling (tracing, lowering, XLA; JAX's compile events) with the number of
programs compiled and of persistent-cache hits. Step 1 is reported alone (it compiles), steps 2..N as a mean.

Equal work is checkable: after each step the run prints a digest of every rollout's tokens (prompts,
responses, finish reasons, answers), one of the log-probs the sampler reported for them, and one of the
parameters; two runs (or two versions of the code) did the same work when they match.

    python benchmarks/grpo_step.py [--steps 3] [--workdir /tmp/memagent_grpo_step]

The persistent compilation cache follows MEMAGENT_COMPILATION_CACHE as every command does
(memagent_jax/compile_cache.py): a second run of the same code reuses the first one's compiles; "off" for a
run that compiles everything.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable, Iterator  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from memagent_jax import compile_cache  # noqa: E402

QUICKSTART = pathlib.Path(__file__).resolve().parent.parent / "configs" / "quickstart.py"
PARTS = ("rollout", "engine prefill", "engine decode", "agent host", "verifier", "advantages", "packing",
         "log-prob passes", "update", "weight sync", "other")
NESTED = ("engine prefill", "engine decode", "agent host")  # inside "rollout"
ENGINE_TRACES: collections.Counter[str] = collections.Counter()
SAMPLED_LOGPROBS: list[np.ndarray] = []  # every rollout's, in order (--dump)
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class Profile:
    """Wall time and compile time per part, for one step at a time."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.seconds: collections.Counter[str] = collections.Counter()
        self.compile_seconds: collections.Counter[str] = collections.Counter()
        self.compiles = 0
        self.cache_hits = 0
        self.xla_seconds = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        jax.monitoring.register_event_listener(self._on_event)

    def _on_duration(self, event: str, seconds: float, **_: Any) -> None:
        if event in COMPILE_EVENTS:
            for name in self.stack or ["other"]:  # a nested part's compiles count in its parent too
                self.compile_seconds[name] += seconds
        if event == COMPILE_EVENTS[-1]:
            self.compiles += 1
            self.xla_seconds += seconds

    def _on_event(self, event: str, **_: Any) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            self.cache_hits += 1

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        self.stack.append(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start
            self.stack.pop()

    def wrap(self, name: str, fn: Callable, block: bool = False) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.part(name):
                out = fn(*args, **kwargs)
                if block:
                    jax.block_until_ready(out)
            return out

        return timed

    def take(self) -> dict[str, Any]:
        out = {"seconds": dict(self.seconds), "compile_seconds": dict(self.compile_seconds),
               "compiles": self.compiles, "cache_hits": self.cache_hits, "xla_seconds": self.xla_seconds}
        self.seconds.clear()
        self.compile_seconds.clear()
        self.compiles = self.cache_hits = 0
        self.xla_seconds = 0.0
        return out


def _digest_rollouts(tokens: Any, logprobs: Any, trajectories: Any, kept: list[np.ndarray]) -> None:
    for trajectory in trajectories:
        for conversation in trajectory.conversations:
            tokens.update(np.asarray(conversation.prompt, np.int64).tobytes())
            tokens.update(np.asarray(conversation.response, np.int64).tobytes())
            tokens.update(conversation.finish_reason.encode())
            logprobs.update(np.asarray(conversation.logprobs, np.float32).tobytes())
            kept.append(np.asarray(conversation.logprobs, np.float32))
        tokens.update(repr(trajectory.answer).encode())


def params_digest(params: Any) -> str:
    hasher = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(params)):
        hasher.update(np.ascontiguousarray(leaf).tobytes())
    return hasher.hexdigest()[:16]


def build(steps: int, workdir: pathlib.Path, overrides: list[str]) -> Any:
    """The training run's pieces for the quickstart's GRPO phase on a random model."""
    from memagent_jax.run.configuration import load_config_file

    config = load_config_file(str(QUICKSTART))
    config.workdir = str(workdir)
    for phase in ("copy", "retrieval", "sft"):
        config[phase].steps = 0
    config.rl.steps = steps
    config.rl.dynamic_sampling = False
    config.rl.overlong = "none"
    config.eval.enabled = False
    config.metrics.progress = False
    for item in overrides:  # key=value, e.g. rl.batch_size=2
        key, _, value = item.partition("=")
        section = config
        *path, name = key.split(".")
        for part in path:
            section = section[part]
        section[name] = type(section[name])(value) if not isinstance(section[name], bool) else value == "True"
    from memagent_jax.run.training import TrainingRun

    return TrainingRun(config)


def run(steps: int, workdir: pathlib.Path, overrides: list[str]) -> list[dict[str, Any]]:
    from memagent_jax.rl import trainer as trainer_module
    from memagent_jax.rl.trainer import GRPOTrainer, batches_from
    from memagent_jax.run.training import phase_data

    started = time.perf_counter()
    training = build(steps, workdir, overrides)
    profile = Profile()
    with profile.part("setup"):
        policy = training._policy("rl")
        data = iter(phase_data(training.config, "rl", training.tokenizer, training.settings.agent.chunk_size,
                               training.sources["rl"]))
        trainer = GRPOTrainer(policy, training.agent, training.settings.rl, send_weights=training.rollout_layout.send)
        trainer.sync_weights()
    setup = profile.take()
    print(f"built in {time.perf_counter() - started:.1f}s (setup {setup['seconds']['setup']:.1f}s, "
          f"{setup['compiles']} compiles)", flush=True)

    engine, agent = training.engine, training.agent
    rollouts, sampled_logprobs = hashlib.sha256(), hashlib.sha256()
    run_agent = agent.run

    def agent_run(*args: Any, **kwargs: Any) -> Any:
        out = run_agent(*args, **kwargs)
        _digest_rollouts(rollouts, sampled_logprobs, out, SAMPLED_LOGPROBS)
        return out

    agent.run = profile.wrap("rollout", agent_run)
    engine._run_prefill = profile.wrap("engine prefill", engine._run_prefill)
    engine._run_decode = profile.wrap("engine decode", engine._run_decode)
    trainer_module.score_groups = profile.wrap("verifier", trainer_module.score_groups)
    trainer_module.training_sequences = profile.wrap("advantages", trainer_module.training_sequences)
    policy._device_batch = profile.wrap("packing", policy._device_batch, block=True)
    policy._logprobs = profile.wrap("log-prob passes", policy._logprobs, block=True)
    policy._update = profile.wrap("update", policy._update, block=True)
    trainer.sync_weights = profile.wrap("weight sync", trainer.sync_weights)
    next_batch = batches_from(data)

    results = []
    for step in range(steps):
        traces_before = sum(engine.stats.compilations.values())
        start, cpu_start = time.perf_counter(), time.process_time()
        metrics = trainer.step(next_batch, step)
        total = time.perf_counter() - start
        cores = (time.process_time() - cpu_start) / total
        out = profile.take()
        seconds = out["seconds"]
        seconds["agent host"] = seconds["rollout"] - seconds.get("engine prefill", 0) - seconds.get("engine decode", 0)
        seconds["other"] = total - sum(v for k, v in seconds.items() if k not in NESTED)
        ENGINE_TRACES.clear()
        ENGINE_TRACES.update(engine.stats.compilations)
        out.update(total=total, engine_traces=sum(engine.stats.compilations.values()) - traces_before,
                   rollouts=rollouts.hexdigest()[:16], logprobs=sampled_logprobs.hexdigest()[:16],
                   params=params_digest(policy.params),
                   updates=metrics["updates"], update_tokens=metrics.get("update_tokens", 0),
                   padding=metrics.get("padding_fraction", 0), prefill_tokens=metrics["prefill_tokens"],
                   decode_tokens=metrics["rollout_tokens_per_s"] * metrics["rollout_seconds"])
        print(f"step {step + 1}: {total:.1f}s ({cores:.2f} cores busy), {out['compiles']} compiles "
              f"({out['cache_hits']} from the persistent cache), {out['decode_tokens']:.0f} tokens decoded, "
              f"{out['prefill_tokens']:.0f} prefilled, {out['updates']:.0f} updates on "
              f"{out['update_tokens']:.0f} tokens ({out['padding']:.0%} padding), rollout tokens {out['rollouts']}, "
              f"their log-probs {out['logprobs']}, "
              f"params {out['params']}", flush=True)
        results.append(out)
    return results


def table(results: list[dict[str, Any]]) -> str:
    cold, warm = results[0], results[1:]

    def cell(step: dict[str, Any], part: str) -> str:
        value = step["seconds"].get(part, 0.0)
        compiled = step["compile_seconds"].get(part, 0.0)
        return f"{value:.2f}" + (f" ({compiled:.2f})" if compiled >= 0.005 else "")

    def mean(part: str, key: str = "seconds") -> float:
        return float(np.mean([s[key].get(part, 0.0) for s in warm])) if warm else 0.0

    head = "| part | step 1 (cold), s | steps 2..N (warm, mean), s |"
    lines = [head, "|---|---:|---:|"]
    for part in PARTS:
        name = f"&nbsp;&nbsp;{part}" if part in NESTED else part
        warm_cell = "-"
        if warm:
            compiled = mean(part, "compile_seconds")
            warm_cell = f"{mean(part):.2f}" + (f" ({compiled:.2f})" if compiled >= 0.005 else "")
        lines.append(f"| {name} | {cell(cold, part)} | {warm_cell} |")
    warm_total = f"{np.mean([s['total'] for s in warm]):.2f}" if warm else "-"
    lines.append(f"| **step** | **{cold['total']:.2f}** | **{warm_total}** |")
    def compiling(step: dict[str, Any]) -> float:
        return sum(v for k, v in step["compile_seconds"].items() if k not in NESTED)

    compile_total = compiling(cold)
    warm_compile = f"{np.mean([compiling(s) for s in warm]):.2f}" if warm else "-"
    lines.append(f"| of which compiling | {compile_total:.2f} | {warm_compile} |")
    warm_xla = f"{np.mean([s['xla_seconds'] for s in warm]):.2f}" if warm else "-"
    lines.append(f"| &nbsp;&nbsp;of which XLA (the rest: tracing, lowering) | {cold['xla_seconds']:.2f} | {warm_xla} |")
    warm_counts = (f"{np.mean([s['compiles'] for s in warm]):.1f} / {np.mean([s['cache_hits'] for s in warm]):.1f}"
                   if warm else "-")
    lines.append(f"| programs compiled / persistent-cache hits | {cold['compiles']} / {cold['cache_hits']} | "
                 f"{warm_counts} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/memagent_grpo_step"),
                        help="where the tokenizer is trained once and reused (nothing else is written)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, e.g. --set rl.batch_size=2")
    parser.add_argument("--dump", type=pathlib.Path, default=None,
                        help="write the sampler's log-probs of every rollout here (.npy), to compare two runs")
    args = parser.parse_args()
    cache = compile_cache.enable()
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind} x{jax.device_count()}, "
          f"compilation cache: {cache or 'off'}", flush=True)
    results = run(args.steps, args.workdir, args.set)
    print()
    print("Seconds per part (in brackets: of which compiling).")
    print(table(results))
    if args.dump is not None:
        np.save(args.dump, np.concatenate(SAMPLED_LOGPROBS))
    print("\nengine programs traced:", dict(sorted(ENGINE_TRACES.items())))
    print(f"\ndigests after step {len(results)}: rollout tokens {results[-1]['rollouts']}, their log-probs "
          f"{results[-1]['logprobs']}, parameters {results[-1]['params']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
