"""Compiler options for every program that computes the policy's log-probabilities.

The engine (prefill and decode steps) and the trainer (log-prob passes and updates) run the same model as
different XLA programs. By default XLA may keep an elementwise chain of bfloat16 ops in float32 inside a
fusion and round only at its end ("excess precision"); the two programs fuse differently, so their
bfloat16 activations were rounded at different points. That was the largest part of the sampler/trainer
log-prob gap in bfloat16 (benchmarks/logprob_gap.py: 7.2e-2 mean at 12 layers with it, see BENCHMARKS.md).
Without it every op rounds to its declared dtype in both programs. In float32 programs nothing changes.
"""

from __future__ import annotations

# Pass as jax.jit(..., compiler_options=POLICY_PROGRAMS).
POLICY_PROGRAMS: dict[str, bool] = {"xla_allow_excess_precision": False}
