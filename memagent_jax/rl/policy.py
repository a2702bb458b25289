"""The trained policy's device state and its optimizer steps over lists of training sequences.

Parameters and optimizer state live on the mesh in the training layout (FSDP/tensor per the rules). A
step packs each mini-batch into fixed-shape micro-batches, recomputes the old (and reference) log-probs
of every mini-batch with the parameters of the step's start, then runs the jitted updates in order.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from memagent_jax.model.sharding import Rules, as_mesh_axes, batch_sharding
from memagent_jax.model.transformer import Transformer
from memagent_jax.parallel import collectives
from memagent_jax.rl.optimizer import OptimizerConfig, init_optimizer_state, make_optimizer
from memagent_jax.rl.packing import TrainSequence, micro_batches, pack
from memagent_jax.rl.precision import cast_floating
from memagent_jax.rl.update import UpdateConfig, make_logprob_fn, make_update_fn


@dataclasses.dataclass(frozen=True)
class BatchShape:
    """Static shapes of the packed training batches."""

    row_len: int = 8192  # tokens per packed row
    rows_per_micro: int = 1  # rows per micro-batch (one forward/backward); a multiple of the data-parallel size
    ppo_epochs: int = 1

    def __post_init__(self) -> None:
        if self.row_len < 2 or self.rows_per_micro < 1 or self.ppo_epochs < 1:
            raise ValueError(f"need row_len >= 2, rows_per_micro >= 1, ppo_epochs >= 1; got {self}")


class Policy:
    """Parameters, optimizer and the compiled steps of one training phase (SFT or GRPO)."""

    def __init__(self, model: Transformer, mesh: Mesh, rules: Rules, optimizer: OptimizerConfig,
                 update: UpdateConfig, shape: BatchShape, reference: Any | None = None):
        self.graphdef, self.params = nnx.split(model)
        self.mesh, self.update_config, self.shape = mesh, update, shape
        self.optimizer = make_optimizer(optimizer)
        self.opt_state = init_optimizer_state(self.optimizer, self.params)
        # The frozen reference policy for the KL term: a copy of the starting weights unless given, held in
        # the compute dtype (the forward pass rounds the weights to it anyway).
        if update.uses_reference:
            self.reference = reference if reference is not None else \
                cast_floating(self.params, model.cfg.compute_dtype, copy=True)
        else:
            self.reference = None
        rows = batch_sharding(mesh, rules, ndim=2)
        data_parallel = int(np.prod([mesh.shape[a] for a in as_mesh_axes(rows.spec[0])]))
        if shape.rows_per_micro % data_parallel:
            raise ValueError(f"rows_per_micro={shape.rows_per_micro} must be a multiple of the data-parallel size "
                             f"{data_parallel} (mesh {dict(mesh.shape)})")
        processes = jax.process_count()
        if shape.rows_per_micro % processes:
            raise ValueError(f"rows_per_micro={shape.rows_per_micro} must be a multiple of the {processes} processes: "
                             "each process packs its own share of every micro-batch")
        self.local_rows = shape.rows_per_micro // processes
        self.batch_sharding = NamedSharding(mesh, PartitionSpec(None, *rows.spec))
        self._update = make_update_fn(self.graphdef, self.optimizer, update)
        self._logprobs = make_logprob_fn(self.graphdef, update)

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.params))

    def _device_batch(self, sequences: Sequence[TrainSequence]) -> tuple[dict[str, jax.Array], Any]:
        packed, stats = pack(sequences, self.shape.row_len, self.update_config.max_segments, self.local_rows)
        micro = micro_batches(packed, self.local_rows)
        if not collectives.is_multiprocess():
            return {k: jax.device_put(v, self.batch_sharding) for k, v in micro.items()}, stats
        # Each process packed its own sequences: the global batch is their rows side by side, with as many
        # micro-batches as the process that needs most (the others add empty ones, whose compute is skipped).
        count = collectives.agree_max(len(micro["tokens"]))
        out = {}
        for name, local in micro.items():
            local = np.concatenate([local, np.zeros((count - len(local), *local.shape[1:]), local.dtype)])
            out[name] = jax.make_array_from_process_local_data(
                self.batch_sharding, local, (count, self.shape.rows_per_micro, *local.shape[2:]))
        return out, stats

    def train(self, mini_batches: Sequence[Sequence[TrainSequence]]) -> dict[str, float]:
        """One step: every mini-batch is an optimizer update (times ppo_epochs). Returns averaged metrics."""
        if collectives.is_multiprocess():
            # Every process runs the same number of updates; a process short of data adds empty ones (its
            # share of that update is then nothing), and an update no process has data for is left out.
            count = collectives.agree_max(len(mini_batches))
            padded = list(mini_batches) + [[]] * (count - len(mini_batches))
            used_anywhere = collectives.gather(np.asarray([bool(m) for m in padded])).any(0)
            mini_batches = [m for m, used in zip(padded, used_anywhere) if used]
        else:
            mini_batches = [m for m in mini_batches if m]
        if not mini_batches:
            return {"updates": 0.0}
        start = time.perf_counter()
        batches, stats = zip(*(self._device_batch(m) for m in mini_batches))
        metrics: dict[str, float] = {}
        if self.update_config.objective == "grpo":
            gaps = []
            for batch in batches:
                batch["old_logp"], _ = self._logprobs(self.params, batch)
                if self.reference is not None:
                    batch["ref_logp"], _ = self._logprobs(self.reference, batch)
                mask = batch["loss_mask"]
                gaps.append((jnp.sum(jnp.abs(batch["old_logp"] - batch["sampler_logp"]) * mask), jnp.sum(mask)))
            gap, count = (float(sum(x)) for x in zip(*jax.device_get(gaps)))
            # How far the sampler's log-probs are from the trainer's for the same tokens and weights.
            metrics["logp_gap_sampler_trainer"] = gap / max(count, 1.0)
        results = []
        for _ in range(self.shape.ppo_epochs):
            for batch in batches:
                self.params, self.opt_state, out = self._update(self.params, self.opt_state, batch)
                results.append(out)
        results = jax.device_get(results)
        elapsed = time.perf_counter() - start
        for key in results[0]:
            values = [float(r[key]) for r in results]
            metrics[key] = float(np.sum(values)) if key in ("skipped", "loss_tokens") else float(np.mean(values))
        real = sum(s.real_tokens for s in stats) * self.shape.ppo_epochs
        metrics.update({
            "updates": float(len(results)),
            "sequences": float(sum(s.sequences for s in stats)),
            "padding_fraction": 1.0 - sum(s.real_tokens for s in stats) / sum(s.rows * s.row_len for s in stats),
            "update_tokens": float(real),
            "update_seconds": elapsed,
            "update_tokens_per_s": real / elapsed if elapsed > 0 else 0.0,
        })
        return metrics
