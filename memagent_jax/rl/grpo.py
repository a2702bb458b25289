"""GRPO objective pieces for multi-conversation RL (DAPO-style PPO loss, KL to a reference, aggregation).

Every function here is pure and traceable: configuration (estimator names, clip values, aggregation mode,
`max_segments`) is static Python data checked at trace time, and nothing branches in Python on array
values, so everything can sit inside one `jax.jit`-ed train step.

Conventions the trainer relies on:
  * Maths runs in float32 (bfloat16/float16 inputs are upcast). float64 inputs stay float64 when x64 is
    enabled, which only the tests use, to compare against a float64 NumPy reference.
  * Per-token arrays are [rows, T]. A row may pack several conversations: `segment_ids` numbers them
    1..max_segments and uses 0 for padding. A "sequence" is one (row, segment id) pair with at least one
    masked-in token; each conversation of a trajectory is its own sequence (the MemAgent paper's Multi-Conv
    DAPO, arXiv:2507.02259), and the trajectory's advantage is broadcast onto all of its response tokens by
    the caller.
  * Only `logp` (the trainer's current log-probabilities) and `entropy` carry gradients. `old_logp`,
    `ref_logp`, `sampler_logp` and `advantages` are data: they are wrapped in `stop_gradient`.
  * `aggregate` returns (numerator, denominator) so a mini-batch split into micro-batches gets exactly the
    same mean as the whole: sum the numerators and the denominators over the micro-batches, then divide.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")

# The PPO log-ratio is clamped to this range before exp (as verl does). Inside it the formula is exact;
# outside it the clip is active anyway for A > 0 (and for A < 0 with dual clip), and without the clamp a
# stale or mismatched old_logp could overflow exp to inf, whose zero-cotangent branch then gives 0 * inf = NaN
# gradients even where the token is masked out.
LOG_RATIO_CLAMP = 20.0


def _as_float(x: jax.Array) -> jax.Array:
    """At least float32: low-precision inputs are upcast, float64 (x64 tests) is kept."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def group_advantages(rewards: jax.Array, normalize_std: bool = False, eps: float = 1e-6) -> jax.Array:
    """Outcome advantages: each reward minus its group's mean (optionally divided by the group's std).

    rewards: [num_groups, group_size] (any leading shape works; groups run along the last axis), one reward
    per rollout. Returns advantages of the same shape. The reference MemAgent runs did not divide by the
    std, hence the default. With `normalize_std` the std is the unbiased one (ddof=1, as `torch.std` in
    GRPO/verl), and `eps` keeps groups whose rewards are all equal at advantage 0 instead of 0/0. A group of
    one rollout has no spread; its advantage is 0 either way.
    """
    rewards = _as_float(rewards)
    centred = rewards - jnp.mean(rewards, axis=-1, keepdims=True)
    if not normalize_std or rewards.shape[-1] < 2:
        return centred
    std = jnp.std(rewards, axis=-1, ddof=1, keepdims=True)
    return centred / (std + eps)


def _check_temperature(temperature: float | jax.Array) -> None:
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"temperature must be > 0 (the sampler's temperature), got {temperature}")


def token_logprobs(logits: jax.Array, targets: jax.Array, temperature: float = 1.0) -> jax.Array:
    """log softmax(logits / temperature) at `targets`: logits [..., V], targets [...] int -> [...] float32.

    The temperature must be the one the rollout sampled with, so the trainer's log-probabilities and the
    sampler's describe the same distribution (the PPO ratio and the truncated IS weight compare them).
    """
    _check_temperature(temperature)
    scaled = _as_float(logits) / temperature
    picked = jnp.take_along_axis(scaled, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    # Gather first, then subtract logsumexp: avoids a second [..., V] array for the full log-softmax.
    return picked - jax.nn.logsumexp(scaled, axis=-1)


def entropy_from_log_probs(log_probs: jax.Array) -> jax.Array:
    """Entropy -sum p log p of a normalised log-distribution over the last axis: [..., V] -> [...].

    The one entropy formula of the trainer (the loss term and the logged metric both come through here)."""
    probs = jnp.exp(log_probs)
    # Masked tokens (logit -inf, so log p = -inf and p = 0) contribute 0, not 0 * -inf = NaN, in value and
    # gradient.
    safe_log_probs = jnp.where(probs > 0, log_probs, 0.0)
    return -jnp.sum(probs * safe_log_probs, axis=-1)


def entropy_from_logits(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Entropy of softmax(logits / temperature) over the last axis: [..., V] -> [...]."""
    _check_temperature(temperature)
    return entropy_from_log_probs(jax.nn.log_softmax(_as_float(logits) / temperature, axis=-1))


def token_logprobs_and_entropy(logits: jax.Array, targets: jax.Array,
                               temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """(token_logprobs, entropy_from_logits) from one log-softmax: logits [..., V], targets [...] int ->
    two [...] float32 arrays. The trainer's per-token pass (rl.logprobs) uses this: one [..., V] array
    serves both, where the two functions apart would each reduce over the vocabulary."""
    _check_temperature(temperature)
    log_probs = jax.nn.log_softmax(_as_float(logits) / temperature, axis=-1)
    taken = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return taken, entropy_from_log_probs(log_probs)


def kl_penalty(
    logp: jax.Array, ref_logp: jax.Array, estimator: str = "k3", clamp: float | None = 10.0
) -> jax.Array:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi.

    k1 = logp - ref_logp (unbiased, high variance, can be negative); k2 = 0.5 (logp - ref_logp)^2;
    k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1 (Schulman's low-variance, always >= 0 estimator, the
    MemAgent setting). For k3 the log-ratio is clamped to [-clamp, clamp] before exp so a token the reference
    finds far likelier cannot overflow; the clamp also stops the gradient there. `ref_logp` is data.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {KL_ESTIMATORS}")
    if clamp is not None and not clamp > 0:
        raise ValueError(f"clamp must be > 0 or None, got {clamp}")
    logp = _as_float(logp)
    ref_logp = jax.lax.stop_gradient(_as_float(ref_logp))
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k2":
        return 0.5 * jnp.square(logp - ref_logp)
    log_ratio = ref_logp - logp
    if clamp is not None:
        log_ratio = jnp.clip(log_ratio, -clamp, clamp)
    return jnp.exp(log_ratio) - log_ratio - 1.0


def _check_clips(clip_low: float, clip_high: float, dual_clip: float | None) -> None:
    for name, value in (("clip_low", clip_low), ("clip_high", clip_high)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if not clip_low < 1:
        raise ValueError(f"clip_low must be < 1 so the lower ratio bound 1 - clip_low is positive, got {clip_low}")
    if dual_clip is not None and not (math.isfinite(dual_clip) and dual_clip > 1):
        raise ValueError(f"dual_clip must be a finite number > 1 (or None to turn it off), got {dual_clip}")


def _ratio(logp: jax.Array, old_logp: jax.Array) -> jax.Array:
    return jnp.exp(jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def ppo_token_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 3.0,
) -> tuple[jax.Array, jax.Array]:
    """Per-token PPO clipped surrogate loss with clip-higher and dual clip.

    ratio = exp(logp - old_logp) (log-ratio clamped to +-LOG_RATIO_CLAMP); loss1 = -A ratio;
    loss2 = -A clip(ratio, 1 - clip_low, 1 + clip_high); loss = max(loss1, loss2). Clip-higher
    (clip_high > clip_low, DAPO) leaves more room to raise unlikely tokens' probabilities. Dual clip, only
    where A < 0: loss = min(loss, -A dual_clip), which bounds the loss of a token whose ratio has grown huge.
    Returns (loss, clipped): `clipped` is 1.0 where a clip decided the loss (loss2 > loss1 or the dual clip
    bound was taken), else 0.0. `old_logp` and `advantages` are data (no gradient).
    """
    _check_clips(clip_low, clip_high, dual_clip)
    logp = _as_float(logp)
    old_logp = jax.lax.stop_gradient(_as_float(old_logp))
    advantages = jax.lax.stop_gradient(_as_float(advantages))
    ratio = _ratio(logp, old_logp)
    loss1 = -advantages * ratio
    loss2 = -advantages * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = jnp.maximum(loss1, loss2)
    clipped = loss2 > loss1
    if dual_clip is not None:
        bound = -advantages * dual_clip
        dual_active = (advantages < 0) & (loss > bound)
        loss = jnp.where(dual_active, bound, loss)
        clipped = clipped | dual_active
    return loss, clipped.astype(loss.dtype)


def aggregate(
    values: jax.Array, mask: jax.Array, segment_ids: jax.Array, mode: str, max_segments: int
) -> tuple[jax.Array, jax.Array]:
    """(numerator, denominator) of a masked mean of per-token `values` [rows, T].

    mask: bool or numeric (non-zero = token counts); segment_ids: int, 1..max_segments for the packed
    sequences of a row, 0 for padding. A token counts only where mask != 0 and 1 <= segment id <=
    max_segments (ids outside that range are dropped rather than aliased into another row's sequence).
      token-mean:          (sum of counted values, number of counted tokens)
      seq-mean-token-mean: (sum over sequences of the sequence's token mean, number of sequences)
      seq-mean-token-sum:  (sum over sequences of the sequence's token sum, number of sequences)
    A sequence is a (row, segment id) pair with at least one counted token. The mean over several
    micro-batches is sum(numerators) / sum(denominators); divide by max(denominator, 1) if a batch can be
    all padding. `mode` and `max_segments` are static.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; choose one of {AGGREGATIONS}")
    if not (isinstance(max_segments, int) and max_segments >= 1):
        raise ValueError(f"max_segments must be an int >= 1, got {max_segments!r}")
    values = _as_float(values)
    if values.ndim != 2 or jnp.shape(mask) != values.shape or jnp.shape(segment_ids) != values.shape:
        raise ValueError(
            "values, mask and segment_ids must all be [rows, T] of one shape, got "
            f"{values.shape}, {jnp.shape(mask)}, {jnp.shape(segment_ids)}"
        )
    segment_ids = jnp.asarray(segment_ids).astype(jnp.int32)
    counted = (jnp.asarray(mask) != 0) & (segment_ids >= 1) & (segment_ids <= max_segments)
    # where, not multiply: a NaN/inf in a padded position must not leak into the sums.
    masked = jnp.where(counted, values, 0.0)
    weights = counted.astype(values.dtype)
    if mode == "token-mean":
        return jnp.sum(masked), jnp.sum(weights)

    # One slot per (row, segment id); dropped tokens go to their row's slot 0 with weight 0, so slot 0
    # never holds a sequence. Static max_segments gives a static number of slots, hence jit-able.
    rows = values.shape[0]
    stride = max_segments + 1
    slot = jnp.arange(rows, dtype=jnp.int32)[:, None] * stride + jnp.where(counted, segment_ids, 0)
    num_slots = rows * stride
    seq_sum = jax.ops.segment_sum(masked.reshape(-1), slot.reshape(-1), num_segments=num_slots)
    seq_count = jax.ops.segment_sum(weights.reshape(-1), slot.reshape(-1), num_segments=num_slots)
    present = seq_count > 0
    if mode == "seq-mean-token-mean":
        per_sequence = seq_sum / jnp.maximum(seq_count, 1.0)
    else:
        per_sequence = seq_sum
    numerator = jnp.sum(jnp.where(present, per_sequence, 0.0))
    return numerator, jnp.sum(present.astype(values.dtype))


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """GRPO loss settings; defaults are the MemAgent ones (clip 0.2/0.2, dual clip 3, k3 KL at 0.001).

    Frozen and hashable, so it can be a static argument of a jitted train step.
    """

    clip_low: float = 0.2
    clip_high: float = 0.2  # > clip_low is DAPO's clip-higher (a MemAgent reproduction used 0.3)
    dual_clip: float | None = 3.0
    kl_coef: float = 0.001
    kl_estimator: str = "k3"
    aggregation: str = "token-mean"
    tis_cap: float | None = None  # cap on the IS weight exp(old_logp - sampler_logp); None = off
    entropy_coef: float = 0.0

    def __post_init__(self) -> None:
        for name in ("clip_low", "clip_high", "kl_coef", "entropy_coef"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        for name in ("dual_clip", "tis_cap"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            ):
                raise ValueError(f"{name} must be a finite number or None, got {value!r}")
        _check_clips(self.clip_low, self.clip_high, self.dual_clip)
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0 (0 turns the KL loss off), got {self.kl_coef}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.tis_cap is not None and not self.tis_cap > 0:
            raise ValueError(
                f"tis_cap must be > 0 (or None to turn truncated importance sampling off), got {self.tis_cap}"
            )


def grpo_token_terms(
    logp: jax.Array,
    old_logp: jax.Array,
    ref_logp: jax.Array | None,
    sampler_logp: jax.Array | None,
    advantages: jax.Array,
    entropy: jax.Array | None,
    config: LossConfig,
) -> dict[str, jax.Array]:
    """Per-token GRPO loss and diagnostics, all [rows, T]; reduce them with `aggregate`.

    logp: trainer log-probabilities under the current parameters (the only gradient path besides entropy);
    old_logp: the policy that generated the batch, recomputed by the trainer before the update;
    ref_logp: the frozen reference policy (None allowed when kl_coef == 0);
    sampler_logp: what the rollout engine reported (None allowed when tis_cap is None);
    advantages: per token, or anything broadcastable to logp's shape (e.g. [rows, 1]);
    entropy: per-token entropy of the current policy (None allowed when entropy_coef == 0).

    Returns "pg_loss" (PPO loss, times the truncated importance weight
    stop_gradient(min(exp(old_logp - sampler_logp), tis_cap)) when tis_cap is set: it corrects for the
    sampler and trainer disagreeing on the same tokens), "loss" = pg_loss + kl_coef kl - entropy_coef entropy,
    "clipped" (1.0 where a PPO clip was active) and "ratio" (no gradient). "kl" is present when ref_logp is
    given, "entropy" when entropy is given, "tis_weight" when tis_cap is set.
    """
    if ref_logp is None and config.kl_coef > 0:
        raise ValueError(f"ref_logp is required when kl_coef > 0 (kl_coef={config.kl_coef})")
    if sampler_logp is None and config.tis_cap is not None:
        raise ValueError(f"sampler_logp is required when tis_cap is set (tis_cap={config.tis_cap})")
    if entropy is None and config.entropy_coef != 0:
        raise ValueError(f"entropy is required when entropy_coef != 0 (entropy_coef={config.entropy_coef})")

    logp = _as_float(logp)
    old_logp = jax.lax.stop_gradient(_as_float(old_logp))
    advantages = jnp.broadcast_to(jax.lax.stop_gradient(_as_float(advantages)), logp.shape)
    pg_loss, clipped = ppo_token_loss(
        logp, old_logp, advantages, config.clip_low, config.clip_high, config.dual_clip
    )
    terms: dict[str, jax.Array] = {}
    if config.tis_cap is not None:
        sampler_logp = jax.lax.stop_gradient(_as_float(sampler_logp))
        # min(exp(x), cap) == exp(min(x, log cap)), and the latter cannot overflow.
        tis_weight = jnp.exp(jnp.minimum(old_logp - sampler_logp, math.log(config.tis_cap)))
        pg_loss = pg_loss * tis_weight
        terms["tis_weight"] = tis_weight

    loss = pg_loss
    if ref_logp is not None:
        kl = kl_penalty(logp, ref_logp, config.kl_estimator)
        terms["kl"] = kl
        if config.kl_coef > 0:  # skipped entirely at 0, so a non-finite kl cannot reach the loss
            loss = loss + config.kl_coef * kl
    if entropy is not None:
        entropy = _as_float(entropy)
        terms["entropy"] = entropy
        if config.entropy_coef != 0:
            loss = loss - config.entropy_coef * entropy

    terms.update(
        pg_loss=pg_loss,
        loss=loss,
        clipped=clipped,
        ratio=jax.lax.stop_gradient(_ratio(logp, old_logp)),
    )
    return terms
