"""Trains a memory agent: SFT warm start on oracle traces, then Multi-Conv GRPO; resumes from its workdir.

    python -m memagent_jax.train --config=configs/quickstart.py [--config.rl.steps=50 ...]
"""

from __future__ import annotations

import time

from absl import logging

from memagent_jax import configuration

_CONFIG = configuration.define_config_flag()


def main(argv: list[str]) -> None:
    del argv
    from memagent_jax.training import TrainingRun  # after flag parsing: --help stays fast

    started = time.perf_counter()
    run = TrainingRun(_CONFIG.value)
    exported = run.run()
    logging.info("exported %s", exported)
    print(f"trained in {time.perf_counter() - started:.0f}s; checkpoint for memagent-answer: {exported}")


if __name__ == "__main__":
    configuration.run_main(main)
