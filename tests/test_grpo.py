"""GRPO loss pieces against a float64 NumPy reference written out with explicit loops.

Values of every function, the gradient of the aggregated loss with respect to logp (finite differences of
the reference), micro-batch additivity of the aggregation, and hand-computed cases for the clip, dual clip,
clip-higher, KL estimators and truncated importance sampling.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memagent_jax.rl.grpo import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    LossConfig,
    aggregate,
    entropy_from_logits,
    group_advantages,
    grpo_token_terms,
    kl_penalty,
    ppo_token_loss,
    token_logprobs,
    token_logprobs_and_entropy,
)

MAX_SEGMENTS = 3


# ---------------------------------------------------------------------------------------------------------
# NumPy reference (float64, one token or one sequence at a time)
# ---------------------------------------------------------------------------------------------------------


def ref_group_advantages(rewards: np.ndarray, normalize_std: bool, eps: float = 1e-6) -> np.ndarray:
    out = np.zeros(rewards.shape, np.float64)
    for g in range(rewards.shape[0]):
        group = [float(r) for r in rewards[g]]
        mean = sum(group) / len(group)
        for i, r in enumerate(group):
            out[g, i] = r - mean
        if normalize_std and len(group) > 1:
            std = math.sqrt(sum((r - mean) ** 2 for r in group) / (len(group) - 1))
            out[g] /= std + eps
    return out


def ref_log_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def ref_kl(lp: float, ref: float, estimator: str, clamp: float | None = 10.0) -> float:
    if estimator == "k1":
        return lp - ref
    if estimator == "k2":
        return 0.5 * (lp - ref) ** 2
    x = ref - lp
    if clamp is not None:
        x = min(max(x, -clamp), clamp)
    return math.exp(x) - x - 1.0


def ref_ppo(lp: float, old: float, adv: float, clip_low: float, clip_high: float, dual_clip: float | None):
    ratio = math.exp(min(max(lp - old, -20.0), 20.0))
    loss1 = -adv * ratio
    loss2 = -adv * min(max(ratio, 1.0 - clip_low), 1.0 + clip_high)
    loss = max(loss1, loss2)
    clipped = loss2 > loss1
    if dual_clip is not None and adv < 0 and loss > -adv * dual_clip:
        loss = -adv * dual_clip
        clipped = True
    return loss, float(clipped), ratio


def ref_terms(lp, old, ref, sampler, adv, ent, cfg: LossConfig) -> dict[str, np.ndarray]:
    names = ("pg_loss", "loss", "clipped", "ratio", "kl", "tis_weight")
    out = {name: np.zeros(lp.shape, np.float64) for name in names}
    for idx in np.ndindex(lp.shape):
        loss, clipped, ratio = ref_ppo(lp[idx], old[idx], adv[idx], cfg.clip_low, cfg.clip_high, cfg.dual_clip)
        weight = 1.0
        if cfg.tis_cap is not None:
            weight = min(math.exp(old[idx] - sampler[idx]), cfg.tis_cap)
        kl = ref_kl(lp[idx], ref[idx], cfg.kl_estimator)
        out["pg_loss"][idx] = loss * weight
        out["loss"][idx] = loss * weight + cfg.kl_coef * kl - cfg.entropy_coef * ent[idx]
        out["clipped"][idx] = clipped
        out["ratio"][idx] = ratio
        out["kl"][idx] = kl
        out["tis_weight"][idx] = weight
    return out


def ref_aggregate(values, mask, segment_ids, mode: str, max_segments: int) -> tuple[float, float]:
    rows, length = values.shape
    if mode == "token-mean":
        total, count = 0.0, 0
        for r in range(rows):
            for t in range(length):
                if mask[r, t] and 1 <= segment_ids[r, t] <= max_segments:
                    total += values[r, t]
                    count += 1
        return total, float(count)
    numerator, sequences = 0.0, 0
    for r in range(rows):
        for s in range(1, max_segments + 1):
            tokens = [values[r, t] for t in range(length) if mask[r, t] and segment_ids[r, t] == s]
            if not tokens:
                continue
            sequences += 1
            numerator += sum(tokens) / len(tokens) if mode == "seq-mean-token-mean" else sum(tokens)
    return numerator, float(sequences)


def ref_objective(lp, batch, cfg: LossConfig) -> float:
    terms = ref_terms(lp, batch["old"], batch["ref"], batch["sampler"], batch["adv"], batch["ent"], cfg)
    num, den = ref_aggregate(terms["loss"], batch["mask"], batch["seg"], cfg.aggregation, MAX_SEGMENTS)
    return num / den


def ref_grad(lp: np.ndarray, batch, cfg: LossConfig, h: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(lp)
    for idx in np.ndindex(lp.shape):
        up, down = lp.copy(), lp.copy()
        up[idx] += h
        down[idx] -= h
        grad[idx] = (ref_objective(up, batch, cfg) - ref_objective(down, batch, cfg)) / (2 * h)
    return grad


# ---------------------------------------------------------------------------------------------------------
# Random packed batches
# ---------------------------------------------------------------------------------------------------------


def make_batch(seed: int, rows: int = 4, length: int = 16) -> dict[str, np.ndarray]:
    """Rows packing 1..MAX_SEGMENTS conversations (prompt tokens masked out) then padding.

    Row 0 holds MAX_SEGMENTS conversations of 4 tokens, the second all prompt (no counted token: not a
    sequence); the last row is all padding. Advantages are per conversation, as the trainer broadcasts a
    trajectory's advantage. About one token in five has ratio e^1.5 ~ 4.5, beyond the dual clip bound 3.
    """
    rng = np.random.default_rng(seed)
    seg = np.zeros((rows, length), np.int32)
    mask = np.zeros((rows, length), bool)
    adv = np.zeros((rows, length))
    for r in range(rows - 1):
        pos = 0
        segments = MAX_SEGMENTS if r == 0 else int(rng.integers(1, MAX_SEGMENTS + 1))
        for s in range(1, segments + 1):
            n = 4 if r == 0 else int(rng.integers(3, 8))
            if pos + n > length:
                break
            prompt = n if (r == 0 and s == 2) else int(rng.integers(1, 3))
            seg[r, pos : pos + n] = s
            mask[r, pos + prompt : pos + n] = True
            adv[r, pos : pos + n] = rng.normal()
            pos += n
    lp = -rng.exponential(1.5, (rows, length))
    old = lp + rng.normal(0, 0.4, lp.shape)
    old = np.where(rng.random(lp.shape) < 0.2, lp - 1.5, old)
    return dict(
        lp=lp,
        old=old,
        ref=lp + rng.normal(0, 0.5, lp.shape),
        sampler=old + rng.normal(0, 0.5, lp.shape),
        adv=adv,
        ent=rng.uniform(0, 3, lp.shape),
        mask=mask,
        seg=seg,
    )


def jax_objective(lp, batch, cfg: LossConfig):
    terms = grpo_token_terms(lp, batch["old"], batch["ref"], batch["sampler"], batch["adv"], batch["ent"], cfg)
    num, den = aggregate(terms["loss"], batch["mask"], batch["seg"], cfg.aggregation, MAX_SEGMENTS)
    return num / den


def as_jax(batch) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------------------
# Advantages, log-probabilities, entropy
# ---------------------------------------------------------------------------------------------------------


def test_group_advantages_hand_values():
    rewards = np.array([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1]], np.float32)
    np.testing.assert_allclose(
        group_advantages(rewards), [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0], [-0.25, -0.25, -0.25, 0.75]], atol=1e-7
    )
    # ddof=1: std of [1,0,0,1] is sqrt(1/3), of [0,0,0,1] is 0.5; an all-equal group stays 0, not NaN.
    s = 0.5 / math.sqrt(1 / 3)
    np.testing.assert_allclose(
        group_advantages(rewards, normalize_std=True), [[s, -s, -s, s], [0, 0, 0, 0], [-0.5, -0.5, -0.5, 1.5]],
        rtol=1e-5,
    )
    # A group of one rollout: advantage 0 with or without std.
    np.testing.assert_array_equal(group_advantages(np.array([[3.0], [1.0]]), normalize_std=True), [[0.0], [0.0]])


def test_group_advantages_random_against_reference():
    for seed in range(3):
        rewards = np.random.default_rng(seed).integers(0, 2, (5, 16)).astype(np.float32)
        rewards[0] = 1.0  # one all-correct group
        for normalize in (False, True):
            got = group_advantages(jnp.asarray(rewards), normalize_std=normalize)
            assert got.dtype == jnp.float32
            np.testing.assert_allclose(got, ref_group_advantages(rewards, normalize), rtol=1e-5, atol=1e-6)


def test_token_logprobs_and_entropy_against_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2, 5, 11)).astype(np.float32)
    targets = rng.integers(0, 11, (2, 5))
    for temperature in (1.0, 0.7):
        ref = ref_log_softmax(logits, temperature)
        want_lp = np.take_along_axis(ref, targets[..., None], -1)[..., 0]
        want_h = -(np.exp(ref) * ref).sum(-1)
        np.testing.assert_allclose(token_logprobs(logits, targets, temperature), want_lp, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(entropy_from_logits(logits, temperature), want_h, rtol=1e-5, atol=1e-5)
    # bfloat16 logits are upcast: float32 result, same values as the bf16-rounded logits in float64.
    bf16 = jnp.asarray(logits, jnp.bfloat16)
    got = token_logprobs(bf16, targets)
    assert got.dtype == jnp.float32
    want = np.take_along_axis(ref_log_softmax(np.asarray(bf16.astype(jnp.float32)), 1.0), targets[..., None], -1)
    np.testing.assert_allclose(got, want[..., 0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, targets, 0.0)


def test_entropy_with_impossible_tokens_is_finite():
    logits = jnp.array([[0.0, 0.0, -jnp.inf, -jnp.inf], [1.0, -jnp.inf, 1.0, 1.0]])
    np.testing.assert_allclose(entropy_from_logits(logits), [math.log(2), math.log(3)], rtol=1e-6)
    grad = jax.grad(lambda x: entropy_from_logits(x).sum())(logits)
    assert np.isfinite(np.asarray(grad)).all()


def test_logprobs_and_entropy_over_a_masked_vocabulary():
    # A vocabulary padded past the tokenizer's (or masked by a sampler constraint) has -inf logits: the
    # masked entries must drop out, giving the entropy and log-probs of the remaining tokens alone.
    rng = np.random.default_rng(1)
    kept = rng.normal(0, 2, (3, 6)).astype(np.float32)
    logits = np.concatenate([kept, np.full((3, 4), -np.inf, np.float32)], axis=-1)
    targets = np.array([0, 5, 2])
    for temperature in (1.0, 0.7):
        ref = ref_log_softmax(kept, temperature)
        logp, entropy = token_logprobs_and_entropy(jnp.asarray(logits), jnp.asarray(targets), temperature)
        np.testing.assert_allclose(logp, ref[np.arange(3), targets], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(entropy, -(np.exp(ref) * ref).sum(-1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(entropy_from_logits(logits, temperature), entropy, rtol=1e-6)
    grads = jax.grad(lambda x: sum(v.sum() for v in token_logprobs_and_entropy(x, jnp.asarray(targets))))(
        jnp.asarray(logits))
    assert np.isfinite(np.asarray(grads)).all()
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs_and_entropy(logits, targets, 0.0)


# ---------------------------------------------------------------------------------------------------------
# KL estimators
# ---------------------------------------------------------------------------------------------------------


def test_kl_estimators_hand_values():
    lp, ref = jnp.array([0.0, -1.0]), jnp.array([math.log(2), -1.0])
    ln2 = math.log(2)
    np.testing.assert_allclose(kl_penalty(lp, ref, "k1"), [-ln2, 0.0], atol=1e-7)
    np.testing.assert_allclose(kl_penalty(lp, ref, "k2"), [0.5 * ln2**2, 0.0], atol=1e-7)
    np.testing.assert_allclose(kl_penalty(lp, ref, "k3"), [1.0 - ln2, 0.0], atol=1e-7)
    # k3 clamps the log-ratio: exp(100) would overflow float32.
    far = (jnp.array([0.0, -100.0]), jnp.array([-100.0, 0.0]))
    np.testing.assert_allclose(kl_penalty(*far, "k3"), [math.exp(-10) + 9, math.exp(10) - 11], rtol=1e-6)
    np.testing.assert_allclose(kl_penalty(*far, "k3", clamp=None)[0], math.exp(-100) + 99, rtol=1e-6)
    assert np.isinf(kl_penalty(*far, "k3", clamp=None)[1])
    with pytest.raises(ValueError, match="k1"):
        kl_penalty(lp, ref, "k4")


def test_kl_estimators_random_and_gradient():
    rng = np.random.default_rng(1)
    lp, ref = -rng.exponential(1.0, (3, 7)), -rng.exponential(1.0, (3, 7))
    for estimator in KL_ESTIMATORS:
        # np.vectorize calls the lambda right here, so it sees this iteration's estimator.
        want = np.vectorize(lambda a, b: ref_kl(a, b, estimator))(lp, ref)  # noqa: B023
        np.testing.assert_allclose(kl_penalty(lp.astype(np.float32), ref.astype(np.float32), estimator), want,
                                   rtol=1e-5, atol=1e-6)
    # d k3 / d logp = 1 - exp(ref - logp); no gradient into ref_logp.
    g_lp, g_ref = jax.grad(lambda a, b: kl_penalty(a, b, "k3").sum(), argnums=(0, 1))(
        jnp.asarray(lp, jnp.float32), jnp.asarray(ref, jnp.float32)
    )
    np.testing.assert_allclose(g_lp, 1.0 - np.exp(ref - lp), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(g_ref, 0.0)


# ---------------------------------------------------------------------------------------------------------
# PPO clipped loss
# ---------------------------------------------------------------------------------------------------------


def ppo_case(ratio: float, adv: float, **kw) -> tuple[float, float]:
    loss, clipped = ppo_token_loss(jnp.array([math.log(ratio)]), jnp.array([0.0]), jnp.array([adv]), **kw)
    return float(loss[0]), float(clipped[0])


def test_ppo_clip_hand_values():
    assert ppo_case(1.1, 1.0) == pytest.approx((-1.1, 0.0))
    assert ppo_case(1.5, 1.0) == pytest.approx((-1.2, 1.0))  # upper clip for A > 0
    assert ppo_case(0.5, 1.0) == pytest.approx((-0.5, 0.0))  # no lower clip for A > 0
    assert ppo_case(0.5, -1.0) == pytest.approx((0.8, 1.0))  # lower clip for A < 0
    assert ppo_case(2.5, -1.0) == pytest.approx((2.5, 0.0))  # A < 0, ratio up: unclipped below the dual bound
    assert ppo_case(0.3, 0.0) == pytest.approx((0.0, 0.0))


def test_clip_higher_changes_the_result():
    # ratio 1.25 is clipped to 1.2 symmetrically but not with clip_high 0.28; ratio 1.5 caps at 1.28.
    assert ppo_case(1.25, 1.0) == pytest.approx((-1.2, 1.0))
    assert ppo_case(1.25, 1.0, clip_high=0.28) == pytest.approx((-1.25, 0.0))
    assert ppo_case(1.5, 1.0, clip_high=0.28) == pytest.approx((-1.28, 1.0))
    # The low side is untouched by clip_high.
    assert ppo_case(0.5, -1.0, clip_high=0.28) == pytest.approx((0.8, 1.0))
    assert ppo_case(0.5, -1.0, clip_low=0.3) == pytest.approx((0.7, 1.0))
    # On a random batch, clip-higher differs from symmetric exactly where a token sits above 1.2 with A > 0.
    b = make_batch(0)
    sym, _ = ppo_token_loss(b["lp"], b["old"], b["adv"])
    high, _ = ppo_token_loss(b["lp"], b["old"], b["adv"], clip_high=0.28)
    ratio = np.exp(b["lp"] - b["old"])
    differs = np.abs(np.asarray(sym) - np.asarray(high)) > 1e-6
    np.testing.assert_array_equal(differs, (b["adv"] > 0) & (ratio > 1.2))
    assert differs.sum() >= 3


def test_dual_clip_only_for_negative_advantages():
    assert ppo_case(5.0, -1.0) == pytest.approx((3.0, 1.0))  # min(5, 3)
    assert ppo_case(5.0, -2.0, dual_clip=4.0) == pytest.approx((8.0, 1.0))
    assert ppo_case(5.0, -1.0, dual_clip=None) == pytest.approx((5.0, 0.0))
    assert ppo_case(5.0, 1.0) == pytest.approx((-1.2, 1.0))  # A > 0: the dual bound -A*c = -3 is not applied
    assert ppo_case(5.0, 1.0, dual_clip=None) == pytest.approx((-1.2, 1.0))
    # The dual-clipped token has no gradient; an unclipped one has d/dlogp = -A * ratio.
    grad = jax.grad(lambda lp: ppo_token_loss(lp, jnp.zeros(2), jnp.array([-1.0, -1.0]))[0].sum())(
        jnp.log(jnp.array([5.0, 2.0]))
    )
    np.testing.assert_allclose(grad, [0.0, 2.0], rtol=1e-6)
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_token_loss(jnp.zeros(1), jnp.zeros(1), jnp.ones(1), dual_clip=1.0)


def test_ppo_random_against_reference():
    for seed in range(3):
        b = make_batch(seed)
        for kw in (dict(), dict(clip_low=0.2, clip_high=0.28, dual_clip=None), dict(clip_high=0.3, dual_clip=2.0)):
            loss, clipped = ppo_token_loss(b["lp"].astype(np.float32), b["old"].astype(np.float32), b["adv"], **kw)
            clips = (kw.get("clip_low", 0.2), kw.get("clip_high", 0.2), kw.get("dual_clip", 3.0))
            # np.vectorize calls the lambda right here, so it sees this iteration's clips.
            want = np.vectorize(lambda a, o, v: ref_ppo(a, o, v, *clips)[:2])(  # noqa: B023
                b["lp"], b["old"], b["adv"])
            np.testing.assert_allclose(loss, want[0], rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(clipped, want[1])


def test_extreme_log_ratio_gives_finite_gradients():
    # A stale old_logp 100 nats below logp: exp would overflow; the clamp keeps loss and gradient finite.
    lp, old = jnp.array([-1.0, -1.0, -1.0]), jnp.array([-101.0, -101.0, -101.0])
    adv = jnp.array([0.0, 1.0, -1.0])
    loss, clipped = ppo_token_loss(lp, old, adv)
    np.testing.assert_allclose(loss, [0.0, -1.2, 3.0], rtol=1e-6)
    np.testing.assert_array_equal(clipped, [0.0, 1.0, 1.0])
    grad = jax.grad(lambda x: ppo_token_loss(x, old, adv)[0].sum())(lp)
    np.testing.assert_array_equal(grad, [0.0, 0.0, 0.0])


# ---------------------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------------------


def test_aggregate_hand_values():
    values = jnp.array([[1.0, 2.0, 3.0, 4.0, jnp.nan], [5.0, 6.0, 7.0, 0.0, 0.0]])
    seg = jnp.array([[1, 1, 2, 2, 0], [1, 1, 9, 0, 0]])  # id 9 > max_segments: dropped
    mask = jnp.array([[1, 1, 0, 1, 1], [1, 1, 1, 0, 0]], jnp.float32)  # masked-in NaN on padding: dropped
    want = {
        "token-mean": (18.0, 5.0),
        "seq-mean-token-mean": (1.5 + 4.0 + 5.5, 3.0),
        "seq-mean-token-sum": (18.0, 3.0),
    }
    for mode, (num, den) in want.items():
        got = aggregate(values, mask, seg, mode, MAX_SEGMENTS)
        np.testing.assert_allclose(got, (num, den), rtol=1e-6)
    # A bool mask means the same.
    np.testing.assert_allclose(aggregate(values, mask > 0, seg, "seq-mean-token-mean", MAX_SEGMENTS), (11.0, 3.0))
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(values, mask, seg, "mean", MAX_SEGMENTS)
    with pytest.raises(ValueError, match="shape"):
        aggregate(values, mask[:, :3], seg, "token-mean", MAX_SEGMENTS)


def test_aggregate_random_against_reference_and_microbatch_additivity():
    agg = jax.jit(aggregate, static_argnames=("mode", "max_segments"))
    for seed in range(4):
        b = make_batch(seed, rows=6)
        values = b["lp"] * b["adv"]
        for mode in AGGREGATIONS:
            whole = np.asarray(agg(values, b["mask"], b["seg"], mode, MAX_SEGMENTS), np.float64)
            np.testing.assert_allclose(whole, ref_aggregate(values, b["mask"], b["seg"], mode, MAX_SEGMENTS),
                                       rtol=1e-5, atol=1e-5)
            halves = [
                agg(values[s], b["mask"][s], b["seg"][s], mode, MAX_SEGMENTS) for s in (slice(0, 2), slice(2, 6))
            ]
            np.testing.assert_allclose(np.sum(np.asarray(halves, np.float64), axis=0), whole, rtol=1e-5, atol=1e-5)
        # The all-prompt conversation of row 0 is no sequence: row 0 contributes MAX_SEGMENTS - 1 of them.
        _, den = aggregate(values[:1], b["mask"][:1], b["seg"][:1], "seq-mean-token-sum", MAX_SEGMENTS)
        assert float(den) == MAX_SEGMENTS - 1


# ---------------------------------------------------------------------------------------------------------
# Full per-token terms and the gradient of the aggregated loss
# ---------------------------------------------------------------------------------------------------------


def test_grpo_token_terms_against_reference():
    cfgs = [
        LossConfig(),
        LossConfig(clip_high=0.28, dual_clip=None, kl_estimator="k2", tis_cap=1.5, entropy_coef=0.01),
        LossConfig(kl_coef=0.1, kl_estimator="k1", tis_cap=2.0, aggregation="seq-mean-token-sum"),
    ]
    step = jax.jit(grpo_token_terms, static_argnames="config")
    for seed, cfg in zip(range(3), cfgs):
        b = make_batch(seed)
        want = ref_terms(b["lp"], b["old"], b["ref"], b["sampler"], b["adv"], b["ent"], cfg)
        got = step(b["lp"], b["old"], b["ref"], b["sampler"], b["adv"], b["ent"], config=cfg)
        expected_keys = {"pg_loss", "loss", "clipped", "ratio", "kl", "entropy"} | (
            {"tis_weight"} if cfg.tis_cap else set()
        )
        assert set(got) == expected_keys
        for name in expected_keys - {"entropy"}:
            assert got[name].dtype == jnp.float32
            np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=2e-6, err_msg=name)
        np.testing.assert_allclose(got["entropy"], b["ent"], rtol=1e-6)


def test_truncated_importance_sampling():
    # old - sampler = ln 3 -> weight capped at 2; ln 0.5 -> 0.5; the weight scales pg_loss only, not kl.
    lp = jnp.array([[-1.0, -1.0]])
    old = jnp.array([[-1.0, -1.0]])
    sampler = old - jnp.log(jnp.array([[3.0, 0.5]]))
    ref = jnp.array([[-1.5, -1.5]])
    adv = jnp.array([[2.0, 2.0]])
    cfg = LossConfig(tis_cap=2.0, kl_coef=0.5)
    terms = grpo_token_terms(lp, old, ref, sampler, adv, None, cfg)
    np.testing.assert_allclose(terms["tis_weight"], [[2.0, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(terms["pg_loss"], [[-4.0, -1.0]], rtol=1e-6)
    k3 = math.exp(-0.5) + 0.5 - 1.0
    np.testing.assert_allclose(terms["loss"], [[-4.0 + 0.5 * k3, -1.0 + 0.5 * k3]], rtol=1e-6)
    off = grpo_token_terms(lp, old, ref, None, adv, None, dataclasses.replace(cfg, tis_cap=None))
    np.testing.assert_allclose(off["pg_loss"], [[-2.0, -2.0]], rtol=1e-6)
    assert "tis_weight" not in off
    # The weight is data: the gradient is the capped weight times the PPO gradient (-A * ratio = -2).
    no_kl = dataclasses.replace(cfg, kl_coef=0.0)
    grad = jax.grad(lambda x: grpo_token_terms(x, old, ref, sampler, adv, None, no_kl)["pg_loss"].sum())(lp)
    np.testing.assert_allclose(grad, [[-4.0, -1.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="sampler_logp"):
        grpo_token_terms(lp, old, ref, None, adv, None, cfg)


def test_optional_inputs():
    lp = jnp.zeros((1, 3))
    cfg = LossConfig(kl_coef=0.0)
    terms = grpo_token_terms(lp, lp, None, None, jnp.ones((1, 1)), None, cfg)  # advantages broadcast
    assert set(terms) == {"pg_loss", "loss", "clipped", "ratio"}
    np.testing.assert_allclose(terms["loss"], -np.ones((1, 3)))
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_token_terms(lp, lp, None, None, lp, None, LossConfig())
    with pytest.raises(ValueError, match="entropy"):
        grpo_token_terms(lp, lp, lp, None, lp, None, LossConfig(entropy_coef=0.01))


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_loss_gradient_matches_finite_differences(aggregation):
    cfg = LossConfig(clip_high=0.28, kl_coef=0.05, tis_cap=1.5, entropy_coef=0.01, aggregation=aggregation)
    grad_fn = jax.jit(jax.grad(jax_objective), static_argnums=2)
    for seed in (1, 2):  # both hold a dual-clipped token
        b = make_batch(seed, rows=3, length=12)
        want = ref_grad(b["lp"], b, cfg)
        assert np.abs(want).max() > 1e-3
        # Padding and prompt tokens get no gradient.
        counted = b["mask"] & (b["seg"] > 0)
        np.testing.assert_array_equal(want[~counted], 0.0)
        with jax.enable_x64(True):
            got = grad_fn(jnp.asarray(b["lp"]), as_jax(b), cfg)
            assert got.dtype == jnp.float64
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
        # Default float32 precision agrees to float32 accuracy.
        got32 = grad_fn(jnp.asarray(b["lp"], jnp.float32), as_jax(b), cfg)
        np.testing.assert_allclose(got32, want, rtol=1e-4, atol=1e-6)


def test_no_gradient_into_data_and_entropy_gradient():
    b = as_jax(make_batch(0))
    cfg = LossConfig(tis_cap=1.5, kl_coef=0.1, entropy_coef=0.01)

    def objective(lp, old, ref, sampler, adv, ent):
        terms = grpo_token_terms(lp, old, ref, sampler, adv, ent, cfg)
        num, den = aggregate(terms["loss"], b["mask"], b["seg"], cfg.aggregation, MAX_SEGMENTS)
        return num / den

    args = (b["lp"], b["old"], b["ref"], b["sampler"], b["adv"], b["ent"])
    grads = jax.grad(objective, argnums=tuple(range(6)))(*args)
    for name, g in zip(("old", "ref", "sampler", "adv"), grads[1:5]):
        np.testing.assert_array_equal(g, 0.0, err_msg=name)
    assert np.abs(np.asarray(grads[0])).max() > 0
    counted = np.asarray(b["mask"]) & (np.asarray(b["seg"]) > 0)
    np.testing.assert_allclose(grads[5], np.where(counted, -0.01 / counted.sum(), 0.0), rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(clip_low=-0.1), "clip_low"),
        (dict(clip_high=-0.2), "clip_high"),
        (dict(clip_low=1.0), "clip_low"),
        (dict(clip_high=float("inf")), "clip_high"),
        (dict(dual_clip=1.0), "dual_clip"),
        (dict(dual_clip=0.5), "dual_clip"),
        (dict(kl_coef=-0.001), "kl_coef"),
        (dict(kl_estimator="k4"), "kl_estimator"),
        (dict(aggregation="mean"), "aggregation"),
        (dict(tis_cap=0.0), "tis_cap"),
        (dict(tis_cap=-2.0), "tis_cap"),
        (dict(entropy_coef=float("nan")), "entropy_coef"),
    ],
)
def test_loss_config_rejects_bad_values(kwargs, words):
    with pytest.raises(ValueError, match=words):
        LossConfig(**kwargs)


def test_loss_config_defaults_are_memagent_settings_and_hashable():
    cfg = LossConfig()
    assert (cfg.clip_low, cfg.clip_high, cfg.dual_clip, cfg.kl_coef, cfg.kl_estimator, cfg.aggregation) == (
        0.2, 0.2, 3.0, 0.001, "k3", "token-mean"
    )
    assert cfg.tis_cap is None and cfg.entropy_coef == 0.0
    assert hash(cfg) == hash(LossConfig())
    LossConfig(dual_clip=None, tis_cap=2.0, clip_high=0.28, kl_coef=0.0)  # valid


def test_functions_jit():
    b = make_batch(3)
    logits = np.random.default_rng(3).normal(size=(4, 14, 9)).astype(np.float32)
    targets = np.random.default_rng(4).integers(0, 9, (4, 14))
    checks = [
        (group_advantages, ("normalize_std",), (b["adv"][:, :4],), dict(normalize_std=True)),
        (token_logprobs, (), (logits, targets, 0.7), {}),
        (entropy_from_logits, (), (logits,), {}),
        (token_logprobs_and_entropy, (), (logits, targets, 0.7), {}),
        (kl_penalty, ("estimator", "clamp"), (b["lp"], b["ref"]), dict(estimator="k3")),
        (ppo_token_loss, ("clip_low", "clip_high", "dual_clip"), (b["lp"], b["old"], b["adv"]),
         dict(clip_high=0.28)),
    ]
    for fn, static, args, kwargs in checks:
        jitted = jax.jit(fn, static_argnames=static)(*args, **kwargs)
        for got, want in zip(jax.tree.leaves(jitted), jax.tree.leaves(fn(*args, **kwargs)), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # The whole objective traces once and serves a second batch of the same shape.
    traces = []

    def counted_objective(lp, batch, cfg):
        traces.append(1)  # runs only while tracing
        return jax_objective(lp, batch, cfg)

    step = jax.jit(jax.value_and_grad(counted_objective), static_argnums=2)
    for seed in (5, 6):
        batch = make_batch(seed)
        value, _ = step(jnp.asarray(batch["lp"], jnp.float32), as_jax(batch), LossConfig())
        assert value == pytest.approx(ref_objective(batch["lp"], batch, LossConfig()), rel=1e-5)
    assert len(traces) == 1
