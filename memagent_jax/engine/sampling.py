"""Per-slot token sampling for the continuous-batching rollout engine.

Every decode step turns logits [slots, vocab] into one token per slot plus its log-probability. Each slot
carries its own request's parameters (temperature, top-k, top-p, seed), so one jitted call serves a batch of
unrelated requests.

Definitions that the trainer relies on:
  * The reported log-probability is log_softmax(logits / T) at the sampled token, taken over the FULL
    vocabulary, before top-k/top-p truncation: the trainer recomputes exactly this from its own logits
    (`log_probs_of`). Greedy rows (T == 0) report log_softmax(logits) at the argmax.
  * The randomness of a token depends only on (request seed, step), never on the slot index or on the other
    requests in the batch, so a request's rollout is reproducible from its seed alone.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Candidates taken without a full sort when every filtering row has a top-k no larger than this. Covers the
# usual settings (top_k 20..50, alone or with top-p).
_FAST_TOP_K = 64
# Block width of the two-stage top-k (`_top_candidates`): the second stage sorts _FAST_TOP_K * _BLOCK values.
_BLOCK = 128
# Cumulative mass within this (relative) distance of top_p counts as having reached it, so float32 rounding
# of the cumulative sum cannot add an extra token exactly at the boundary (e.g. 0.5 + 0.3 vs p = 0.8).
_TOP_P_TOLERANCE = 1e-6


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Host-side sampling parameters of one request."""

    temperature: float = 1.0  # 0.0 => greedy
    top_k: int = 0  # 0 => disabled
    top_p: float = 1.0  # 1.0 => disabled
    max_new_tokens: int = 256
    stop_ids: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        # Lists (e.g. from a config file or JSON) become tuples so that the params stay hashable.
        if not isinstance(self.stop_ids, (tuple, str, bytes)) and _is_iterable(self.stop_ids):
            object.__setattr__(self, "stop_ids", tuple(self.stop_ids))

    def validate(self, vocab_size: int | None = None) -> None:
        """Raises ValueError naming the first bad field; vocab_size (if given) bounds top_k and stop_ids."""
        t = self.temperature
        if not _is_real(t) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {t!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 disables it), got {self.top_k!r}")
        if vocab_size is not None and self.top_k > vocab_size:
            raise ValueError(f"top_k must be <= vocab_size={vocab_size}, got {self.top_k!r}")
        p = self.top_p
        if not _is_real(p) or not 0 < p <= 1:  # NaN fails the comparison too
            raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {p!r}")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if not isinstance(self.stop_ids, tuple):
            raise ValueError(f"stop_ids must be a sequence of token ids, got {self.stop_ids!r}")
        for token in self.stop_ids:
            if not _is_int(token) or token < 0 or (vocab_size is not None and token >= vocab_size):
                bound = f" and < vocab_size={vocab_size}" if vocab_size is not None else ""
                raise ValueError(f"stop_ids must be ints >= 0{bound}, got {token!r} in {self.stop_ids!r}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an int in [0, 2**32), got {self.seed!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_iterable(value: object) -> bool:
    try:
        iter(value)  # type: ignore[call-overload]
    except TypeError:
        return False
    return True


class SlotSampling(NamedTuple):
    """Device-side sampling parameters, one entry per decode slot."""

    temperature: jax.Array  # float32 [S]; 0 => greedy
    top_k: jax.Array  # int32 [S]; 0 => disabled
    top_p: jax.Array  # float32 [S]; 1 => disabled
    seed: jax.Array  # uint32 [S]


def pack_slot_sampling(params: Sequence[SamplingParams | None], num_slots: int) -> SlotSampling:
    """Host params -> per-slot arrays. Missing trailing entries and None (empty slots) get greedy defaults."""
    if len(params) > num_slots:
        raise ValueError(f"got {len(params)} sampling params for {num_slots} slots")
    temperature = np.zeros(num_slots, np.float32)
    top_k = np.zeros(num_slots, np.int32)
    top_p = np.ones(num_slots, np.float32)
    seed = np.zeros(num_slots, np.uint32)
    for slot, p in enumerate(params):
        if p is None:
            continue
        p.validate()
        temperature[slot], top_k[slot], top_p[slot], seed[slot] = p.temperature, p.top_k, p.top_p, p.seed
    return SlotSampling(jnp.asarray(temperature), jnp.asarray(top_k), jnp.asarray(top_p), jnp.asarray(seed))


def log_probs_of(logits: jax.Array, tokens: jax.Array, temperature: jax.Array | float) -> jax.Array:
    """log_softmax(logits / T) gathered at tokens, T == 0 treated as 1 (the greedy convention).

    logits [..., V], tokens [...]; temperature is a scalar or an array whose shape is a prefix of
    tokens.shape (e.g. [B] per sequence or [B, L] per token for logits [B, L, V]). Returns float32 [...].
    """
    logits = jnp.asarray(logits, jnp.float32)
    temperature = jnp.asarray(temperature, jnp.float32)
    temperature = temperature.reshape(temperature.shape + (1,) * (logits.ndim - temperature.ndim))
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)
    picked = jnp.take_along_axis(scaled, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(scaled, axis=-1)


def sample_tokens(logits: jax.Array, sampling: SlotSampling, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One token per slot and its log-probability (see the module docstring for the definition).

    logits [S, V] float32; step [S] int32, the index of the token being generated within its request (0 for
    its first new token). Returns (tokens int32 [S], logprobs float32 [S]). Pure and jit-able.
    """
    logits = jnp.asarray(logits, jnp.float32)
    vocab = logits.shape[-1]
    greedy = sampling.temperature <= 0
    # Greedy rows divide by 1, not 0: their scaled logits are then the raw ones (no NaN, and the right logprob).
    scaled = logits / jnp.where(greedy, 1.0, sampling.temperature)[:, None]

    # Gumbel noise from a key of (seed, step) alone, row by row: the slot index and the neighbours never enter.
    def row_noise(seed: jax.Array, row_step: jax.Array) -> jax.Array:
        key = jax.random.fold_in(jax.random.key(seed), row_step)
        return jax.random.gumbel(key, (vocab,), jnp.float32)

    step = jnp.broadcast_to(jnp.asarray(step, jnp.int32), sampling.seed.shape)
    noise = jax.vmap(row_noise)(sampling.seed, step)
    keep = _keep_mask(scaled, sampling, greedy)
    sampled = jnp.argmax(jnp.where(keep, scaled, -jnp.inf) + noise, axis=-1)  # Gumbel-max: exact softmax draw
    tokens = jnp.where(greedy, jnp.argmax(logits, axis=-1), sampled).astype(jnp.int32)
    return tokens, log_probs_of(logits, tokens, sampling.temperature)


def _keep_mask(scaled: jax.Array, sampling: SlotSampling, greedy: jax.Array) -> jax.Array:
    """bool [S, V]: tokens that survive each row's top-k then top-p; all True for rows without filtering.

    Efficiency: finding a row's kept set needs its tokens in descending order, and a full sort of [S, 152K]
    every decode step is the expensive part of sampling. So a `lax.switch` picks, from the batch as a whole:
      0. no row filters (the usual RL setting: T = 1, no top-k/top-p): no sort at all;
      1. every filtering row has 0 < top_k <= _FAST_TOP_K: exact top-_FAST_TOP_K candidates from
         `_top_candidates`, one O(V) pass plus small sorts (top-p then only looks inside the top-k);
      2. otherwise (top-p without a small top-k): one full stable sort.
    (On GPU the switch costs a tiny device-to-host read of the branch index: far cheaper than the sort it
    skips.) The branch depends on the other slots, so a row's mask must not: rows with a bounded top-k always
    compute their mask from the same top-_FAST_TOP_K candidates (in branch 2 too), and rows that do not
    filter are all True in every branch. That keeps a request's tokens independent of its neighbours.
    """
    vocab = scaled.shape[-1]
    fast_k = min(_FAST_TOP_K, vocab)
    top_k, top_p = sampling.top_k, sampling.top_p
    # Ties are broken by token id (lower first) in both sort and top_k; -0.0 is folded into 0.0 so that the
    # equality test below agrees with the sort's total order.
    values = jnp.where(scaled == 0, 0.0, scaled)
    filters = ~greedy & (((top_k > 0) & (top_k < vocab)) | (top_p < 1))
    bounded = (top_k > 0) & (top_k <= fast_k)

    def no_filter(values: jax.Array) -> jax.Array:
        return jnp.ones(values.shape, bool)

    def fast(values: jax.Array) -> jax.Array:
        candidates, indices = _top_candidates(values, fast_k)
        return _prefix_mask(values, candidates, indices, top_k, top_p)

    def full(values: jax.Array) -> jax.Array:
        iota = jax.lax.broadcasted_iota(jnp.int32, values.shape, 1)
        negated, indices = jax.lax.sort((-values, iota), dimension=1, num_keys=1, is_stable=True)
        ordered = -negated
        mask = _prefix_mask(values, ordered, indices, top_k, top_p)
        if fast_k == vocab:
            return mask
        short = _prefix_mask(values, ordered[:, :fast_k], indices[:, :fast_k], top_k, top_p)
        return jnp.where(bounded[:, None], short, mask)

    branch = jnp.where(~jnp.any(filters), 0, jnp.where(jnp.all(~filters | bounded), 1, 2))
    mask = jax.lax.switch(branch, (no_filter, fast, full), values)
    return mask | ~filters[:, None]


def _top_candidates(values: jax.Array, k: int, block: int = _BLOCK) -> tuple[jax.Array, jax.Array]:
    """Exactly `lax.top_k(values, k)` (ties to the lower id) for [S, V], without sorting whole rows.

    XLA lowers `lax.top_k` to a full sort whenever it has no special kernel (on GPU only k <= 16 has one).
    Instead: the top k tokens lie in the k blocks with the largest maxima (a block ranked lower has k blocks
    above it, each holding a token that beats all of its own), so rank the V / block maxima, gather those k
    blocks in id order (so that ties still go to the lower id) and take the top k of k * block values.
    """
    rows, vocab = values.shape
    blocks = -(-vocab // block)
    if blocks <= k:  # small vocabulary: nothing to gain
        return jax.lax.top_k(values, k)
    padded = jnp.pad(values, ((0, 0), (0, blocks * block - vocab)), constant_values=-jnp.inf)
    grouped = padded.reshape(rows, blocks, block)
    _, best = jax.lax.top_k(jnp.max(grouped, axis=-1), k)
    best = jnp.sort(best, axis=-1)
    gathered = jnp.take_along_axis(grouped, best[:, :, None], axis=1).reshape(rows, k * block)
    ids = (best[:, :, None] * block + jnp.arange(block, dtype=best.dtype)).reshape(rows, k * block)
    candidates, position = jax.lax.top_k(gathered, k)
    return candidates, jnp.take_along_axis(ids, position, axis=-1)


def _prefix_mask(
    values: jax.Array, candidates: jax.Array, indices: jax.Array, top_k: jax.Array, top_p: jax.Array
) -> jax.Array:
    """Top-k then top-p keep mask [S, V] from each row's leading candidates in descending (value, -id) order.

    candidates/indices [S, C] must be the first C tokens of that order and C >= every row's kept count.
    """
    num = candidates.shape[-1]
    position = jnp.arange(num)[None, :]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, num), num)[:, None]
    in_k = position < k
    # Top-p over the top-k survivors, renormalised. Unnormalised weights relative to the best token avoid a
    # separate sum; the last inclusive prefix sum is the total (weights past k are exactly 0).
    weights = jnp.exp(jnp.where(in_k, candidates - candidates[:, :1], -jnp.inf))
    inclusive = jnp.cumsum(weights, axis=-1)
    before = jnp.concatenate([jnp.zeros_like(inclusive[:, :1]), inclusive[:, :-1]], axis=-1)  # monotone
    total = inclusive[:, -1:]
    p = top_p[:, None]
    # Smallest prefix whose mass reaches p: keep a token while the mass before it is still short of p.
    in_p = (p >= 1) | (before < (p - _TOP_P_TOLERANCE) * total)
    kept = in_k & (in_p | (position == 0))  # both are prefixes, and the best token always stays
    last = jnp.sum(kept, axis=-1, keepdims=True) - 1
    threshold = jnp.take_along_axis(candidates, last, axis=-1)
    last_id = jnp.take_along_axis(indices, last, axis=-1)
    # Back to vocabulary order without a scatter: a token is in the kept prefix iff it sorts no later than the
    # last kept one (higher value, or equal value and lower-or-equal id).
    ids = jax.lax.broadcasted_iota(jnp.int32, values.shape, 1)
    return (values > threshold) | ((values == threshold) & (ids <= last_id))
