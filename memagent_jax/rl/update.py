"""The jit-compiled optimizer step over packed micro-batches, for GRPO and for SFT.

One call = one mini-batch update: the loss of every micro-batch is divided by the mini-batch's total
denominator (response tokens or sequences, counted before the scan), so accumulated gradients equal the
gradient of the whole mini-batch whatever the split (summed in float32 whatever the params' dtype). Empty
micro-batches (padding to a power of two) skip their compute. A non-finite loss or gradient leaves parameters
and optimizer state untouched.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from memagent_jax.model.numerics import POLICY_PROGRAMS
from memagent_jax.rl import grpo
from memagent_jax.rl.logprobs import token_stats
from memagent_jax.rl.precision import cast_floating

OBJECTIVES = ("grpo", "sft")


@dataclasses.dataclass(frozen=True)
class UpdateConfig:
    objective: str = "grpo"
    loss: grpo.LossConfig = grpo.LossConfig()
    temperature: float = 1.0  # the sampler's: log-probs are those of the tempered distribution
    max_segments: int = 16  # most sequences per packed row (static for per-sequence aggregation)
    piece_len: int = 256  # LM head computed over this many positions at a time
    remat: bool = False  # recompute each decoder layer in the backward pass (long rows on accelerators)
    scan_layers: bool = True  # one lax.scan over the layers, not num_layers unrolled copies (compile time)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not self.temperature > 0 or self.max_segments < 1 or self.piece_len < 1:
            raise ValueError("temperature must be > 0, max_segments and piece_len >= 1")

    @property
    def uses_reference(self) -> bool:
        return self.objective == "grpo" and self.loss.kl_coef > 0

    @property
    def token_metrics(self) -> tuple[str, ...]:
        """Per-token terms summed over response tokens and reported as token means."""
        if self.objective == "sft":
            return ("nll", "entropy")
        return ("pg_loss", "clipped", "ratio", "entropy") + (("kl",) if self.uses_reference else ())


def _float32_zeros_like(tree: Any) -> Any:
    return jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), tree)


def make_logprob_fn(graphdef: nnx.GraphDef, cfg: UpdateConfig) -> Callable:
    """jit: (params, micro-batches [M, rows, L]) -> (log-probs, entropies) [M, rows, L]; old and reference
    log-probs of a step come from here (no gradients)."""

    def one(params: Any, micro: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        return token_stats(nnx.merge(graphdef, params), micro, cfg.temperature, cfg.piece_len,
                           scan=cfg.scan_layers)

    def one_or_skip(params: Any, micro: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        # The empty micro-batches that pad the count to a power of two cost nothing here either.
        zeros = jnp.zeros(micro["tokens"].shape, jnp.float32)
        return jax.lax.cond(jnp.any(micro["loss_mask"] > 0), lambda: one(params, micro), lambda: (zeros, zeros))

    @functools.partial(jax.jit, compiler_options=POLICY_PROGRAMS)
    def logprobs(params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        return jax.lax.map(lambda micro: one_or_skip(params, micro), batch)

    return logprobs


def _micro_loss(graphdef: nnx.GraphDef, cfg: UpdateConfig, params: Any, micro: dict[str, jax.Array],
                denominator: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    logp, entropy = token_stats(nnx.merge(graphdef, params), micro, cfg.temperature, cfg.piece_len, cfg.remat,
                                cfg.scan_layers)
    mask = micro["loss_mask"]
    if cfg.objective == "sft":
        per_token = -logp
        terms = {"nll": per_token, "entropy": entropy}
        mode = "token-mean"
    else:
        ref_logp = micro["ref_logp"] if cfg.uses_reference else None
        terms = grpo.grpo_token_terms(logp, micro["old_logp"], ref_logp, micro["sampler_logp"],
                                      micro["advantages"], entropy, cfg.loss)
        per_token = terms["loss"]
        mode = cfg.loss.aggregation
    numerator, _ = grpo.aggregate(per_token, mask, micro["segment_ids"], mode, cfg.max_segments)
    sums = {name: jnp.sum(jnp.where(mask > 0, terms[name], 0.0)) for name in cfg.token_metrics}
    return numerator / denominator, sums


def make_update_fn(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, cfg: UpdateConfig) -> Callable:
    """jit: (params, opt_state, batch [M, rows, L]) -> (params, opt_state, metrics). Params and optimizer
    state are donated: the step updates them in place on device, keeping their shardings."""
    mode = "token-mean" if cfg.objective == "sft" else cfg.loss.aggregation
    grad_fn = jax.value_and_grad(lambda p, micro, den: _micro_loss(graphdef, cfg, p, micro, den), has_aux=True)

    def update(params: Any, opt_state: Any, batch: dict[str, jax.Array]) -> tuple[Any, Any, dict[str, jax.Array]]:
        mask = batch["loss_mask"]
        per_micro = jax.vmap(lambda m, s: grpo.aggregate(m, m, s, mode, cfg.max_segments)[1])(
            mask, batch["segment_ids"])
        denominator = jnp.maximum(jnp.sum(per_micro), 1.0)
        tokens = jnp.maximum(jnp.sum(mask), 1.0)

        # (gradient sums, loss sum, token-metric sums) over the micro-batches so far.
        Carry = tuple[Any, jax.Array, dict[str, jax.Array]]
        MicroResult = tuple[jax.Array, dict[str, jax.Array], Any]  # (loss, token metrics, gradients)

        def body(carry: Carry, micro: dict[str, jax.Array]) -> tuple[Carry, None]:
            grads, loss, sums = carry

            def compute(_: None) -> MicroResult:
                (value, aux), grad = grad_fn(params, micro, denominator)
                return value, aux, cast_floating(grad, jnp.float32)

            def skip(_: None) -> MicroResult:
                return jnp.float32(0), {k: jnp.float32(0) for k in sums}, _float32_zeros_like(params)

            value, aux, grad = jax.lax.cond(jnp.any(micro["loss_mask"] > 0), compute, skip, None)
            grads = jax.tree.map(jnp.add, grads, grad)
            return (grads, loss + value, {k: sums[k] + aux[k] for k in sums}), None

        # Gradient sums in float32 whatever the params' dtype: a bfloat16 sum over hundreds of micro-batches
        # loses percents of the gradient.
        init = (_float32_zeros_like(params), jnp.float32(0), {k: jnp.float32(0) for k in cfg.token_metrics})
        (grads, loss, sums), _ = jax.lax.scan(body, init, batch)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        # Skip a bad step: keep the old values bit for bit (the select costs one pass over the weights).
        # Not optax.apply_if_finite: it looks at the gradients only (a NaN loss with finite gradients would
        # train), applies the bad update after max_consecutive_errors, and wraps the optimizer state in its
        # own, so checkpoints saved before would no longer restore.
        def keep(new: jax.Array, old: jax.Array) -> jax.Array:
            return jnp.where(finite, new, old)

        new_params = jax.tree.map(keep, new_params, params)
        new_opt_state = jax.tree.map(keep, new_opt_state, opt_state)
        metrics = {"loss": loss, "grad_norm": grad_norm, "skipped": (~finite).astype(jnp.float32),
                   "loss_tokens": jnp.sum(mask), **{k: v / tokens for k, v in sums.items()}}
        return new_params, new_opt_state, metrics

    return jax.jit(update, donate_argnums=(0, 1), compiler_options=POLICY_PROGRAMS)
