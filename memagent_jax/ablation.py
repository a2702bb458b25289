"""The RL ablation: from one shared warm-up (copy, retrieval with boxed answers), four policies: no RL, GRPO
only, SFT on oracle memory traces, SFT then GRPO; then all four evaluated side by side by length (1K to 1M)
on the RULER tasks with unseen keys. Resumes from its workdir.

    memagent-ablation --config=configs/ablation.py [--config.rl.steps=200 ...]
    (or python -m memagent_jax.ablation ...)

Writes {workdir}/eval/ablation.md (a row per policy by length, the goals), ablation.png (accuracy against
length, one line per policy), ablation.json, and the per-task table.md, results.json and accuracy.png.
"""

from __future__ import annotations

import sys
import time

from memagent_jax.run import configuration

_CONFIG = configuration.define_config_flag()


def main(argv: list[str]) -> None:
    del argv
    from memagent_jax.run.ablation import AblationRun
    from memagent_jax.run.preemption import EXIT_CODE, Preempted

    started = time.perf_counter()
    ablation = AblationRun(_CONFIG.value, log=lambda line: print(line, flush=True))
    try:
        table = ablation.run()
    except Preempted as stopped:
        print(stopped, flush=True)
        sys.exit(EXIT_CODE)
    print(table)
    print(f"ablation done in {time.perf_counter() - started:.0f}s; results in {ablation.root / 'eval'}")


def run() -> None:
    """Console-script entry point (memagent-ablation)."""
    configuration.run_main(main, __name__)


if __name__ == "__main__":
    run()
