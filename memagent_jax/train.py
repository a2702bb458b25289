"""Trains a memory agent: copy warm-up (models from scratch), SFT warm start on oracle traces, then
Multi-Conv GRPO; resumes from its workdir.

    memagent-train --config=configs/quickstart.py [--config.rl.steps=50 ...]
    (or python -m memagent_jax.train ...)

Multi-process runs (launch/) start the same command in every process; memagent_jax.parallel.cluster reads
the process's place from the environment (JAX_* variables, SLURM, TPU pod).
"""

from __future__ import annotations

import logging as std_logging
import sys
import time

from absl import logging

from memagent_jax.run import configuration

_CONFIG = configuration.define_config_flag()


class _QuietOrbax(std_logging.Filter):
    """Orbax logs every step of every save at INFO; keep its warnings and errors only."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def main(argv: list[str]) -> None:
    del argv
    logging.get_absl_handler().addFilter(_QuietOrbax())
    import jax

    from memagent_jax.parallel import cluster  # after flag parsing: --help stays fast

    cluster = cluster.initialize()  # before anything touches the devices
    if cluster.kind != "single":
        logging.info("joined %s", cluster.describe())
        if jax.process_index() != 0:  # process 0 logs the run; the others only warnings and errors
            logging.set_verbosity(logging.WARNING)
    from memagent_jax.run.preemption import EXIT_CODE, Preempted
    from memagent_jax.run.training import TrainingRun

    started = time.perf_counter()
    run = TrainingRun(_CONFIG.value)
    try:
        exported = run.run()
    except Preempted as stopped:
        print(stopped, flush=True)  # every process: each log says why it stopped
        sys.exit(EXIT_CODE)
    logging.info("exported %s", exported)
    if run.is_main:
        print(f"trained in {time.perf_counter() - started:.0f}s; checkpoint for memagent-answer: {exported}")


def run() -> None:
    """Console-script entry point (memagent-train)."""
    configuration.run_main(main, __name__)


if __name__ == "__main__":
    run()
