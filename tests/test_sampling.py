"""Per-slot sampling: greedy, temperature, top-k, top-p, logprob definition and per-request determinism."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memagent_jax.engine import sampling as sampling_lib
from memagent_jax.engine.sampling import SamplingParams, SlotSampling, log_probs_of, pack_slot_sampling

sample = jax.jit(sampling_lib.sample_tokens)
log_probs = jax.jit(log_probs_of)


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def slots(temperature, top_k=0, top_p=1.0, seed=0, rows: int | None = None) -> SlotSampling:
    """Per-row arrays from scalars or sequences (scalars broadcast to `rows`)."""
    shape = (rows,) if rows is not None else np.broadcast_shapes(*map(np.shape, (temperature, top_k, top_p, seed)))
    return SlotSampling(
        jnp.asarray(np.broadcast_to(np.asarray(temperature, np.float32), shape)),
        jnp.asarray(np.broadcast_to(np.asarray(top_k, np.int32), shape)),
        jnp.asarray(np.broadcast_to(np.asarray(top_p, np.float32), shape)),
        jnp.asarray(np.broadcast_to(np.asarray(seed, np.uint32), shape)),
    )


def draw(logits_row: np.ndarray, n: int = 8192, temperature=1.0, top_k=0, top_p=1.0) -> np.ndarray:
    """n tokens from one distribution in one call: n rows with seeds 0..n-1 (one shape: one compile)."""
    logits = jnp.asarray(np.broadcast_to(np.asarray(logits_row, np.float32), (n, len(logits_row))))
    params = slots(temperature, top_k, top_p, seed=np.arange(n), rows=n)
    tokens, _ = sample(logits, params, jnp.zeros(n, jnp.int32))
    return np.asarray(tokens)


def frequencies(tokens: np.ndarray, vocab: int) -> np.ndarray:
    return np.bincount(tokens, minlength=vocab) / len(tokens)


def check_distribution(tokens: np.ndarray, expected: np.ndarray) -> None:
    """Chi-square against `expected` (zero-probability tokens must never appear).

    With 5 degrees of freedom P(chi2 > 40) ~ 1e-7, so a correct sampler cannot fail (and the seeds are fixed).
    """
    n, vocab = len(tokens), len(expected)
    counts = np.bincount(tokens, minlength=vocab)
    assert np.all(counts[expected == 0] == 0), (counts, expected)
    support = expected > 0
    chi2 = np.sum((counts[support] - n * expected[support]) ** 2 / (n * expected[support]))
    assert chi2 < 40, (chi2, counts / n, expected)
    np.testing.assert_allclose(counts / n, expected, atol=0.02)


LOGITS6 = np.array([2.0, 1.0, 0.5, 0.0, -1.0, 1.5], np.float32)
VOCAB = 300  # for random-logit tests: larger than the lax.top_k bound (64) so that every internal path runs


def test_greedy_is_argmax_with_raw_logprob():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, VOCAB)).astype(np.float32) * 3
    # Greedy ignores top-k/top-p and the seed; its logprob is the untempered log_softmax.
    params = slots(0.0, top_k=rng.choice([0, 1, 3, 100], 64), top_p=rng.choice([1, 0.5], 64), seed=np.arange(64))
    tokens, logprobs = sample(jnp.asarray(logits), params, jnp.arange(64, dtype=jnp.int32))
    np.testing.assert_array_equal(tokens, logits.argmax(-1))
    expected = np_log_softmax(logits)[np.arange(64), logits.argmax(-1)]
    np.testing.assert_allclose(logprobs, expected, rtol=1e-5, atol=1e-5)
    assert tokens.dtype == jnp.int32 and logprobs.dtype == jnp.float32


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_temperature_matches_softmax(temperature):
    expected = np.exp(np_log_softmax(LOGITS6 / temperature))
    check_distribution(draw(LOGITS6, temperature=temperature), expected)


def test_top_k_distribution_is_renormalised_top_k():
    tokens = draw(LOGITS6, top_k=3)  # keeps ids 0, 5, 1
    expected = np.zeros(6)
    expected[[0, 5, 1]] = np.exp(np_log_softmax(LOGITS6[[0, 5, 1]]))
    check_distribution(tokens, expected)


def test_top_k_never_leaves_the_k_largest():
    rng = np.random.default_rng(1)
    rows, vocab = 512, VOCAB
    logits = rng.normal(size=(rows, vocab)).astype(np.float32)
    top_k = rng.choice([1, 2, 5, 40, 64, 65, 100, 299], size=rows)  # both sides of the lax.top_k bound
    tokens, _ = sample(jnp.asarray(logits), slots(1.5, top_k, seed=np.arange(rows)), jnp.zeros(rows, jnp.int32))
    rank = (logits > logits[np.arange(rows), np.asarray(tokens)][:, None]).sum(-1)  # 0 = best
    assert np.all(rank < top_k)


@pytest.mark.parametrize("k", [1, 5, 64])
def test_two_stage_top_k_is_exact_with_ties(k):
    rng = np.random.default_rng(7)
    values = rng.integers(0, 20, size=(16, 299)).astype(np.float32)  # many ties; 299 is not a multiple of 4
    values[0, :] = -np.inf
    values[1, :5] = 30.0
    got = jax.jit(sampling_lib._top_candidates, static_argnums=(1, 2))(jnp.asarray(values), k, 4)
    want = jax.lax.top_k(jnp.asarray(values), k)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_large_vocab_top_k_rows_match_across_paths():
    # Vocab > _FAST_TOP_K * _BLOCK, so the top-k path really uses the two-stage candidates; the same request
    # must sample the same tokens whether its neighbour forces the full sort (top-p) or not.
    rng = np.random.default_rng(8)
    logits = jnp.asarray(rng.normal(size=(4, 9000)).astype(np.float32))
    steps = jnp.zeros(4, jnp.int32)
    fast, _ = sample(logits, slots(1.0, [50, 0, 50, 0], [0.8, 1.0, 1.0, 1.0], [1, 2, 3, 4]), steps)
    full, _ = sample(logits, slots(1.0, [50, 0, 50, 0], [0.8, 1.0, 1.0, 0.9], [1, 2, 3, 4]), steps)
    np.testing.assert_array_equal(fast[:3], full[:3])
    top50 = np.argsort(-np.asarray(logits), axis=-1)[:, :50]
    assert all(int(fast[row]) in top50[row] for row in (0, 2))


def test_top_k_one_is_greedy():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(64, VOCAB)).astype(np.float32)
    tokens, logprobs = sample(jnp.asarray(logits), slots(1.0, 1, seed=np.arange(64)), jnp.zeros(64, jnp.int32))
    np.testing.assert_array_equal(tokens, logits.argmax(-1))
    np.testing.assert_allclose(logprobs, np_log_softmax(logits).max(-1), atol=1e-5)


@pytest.mark.parametrize(
    "top_p, kept", [(0.8, [0, 1]), (0.81, [0, 1, 2]), (0.5, [0]), (0.51, [0, 1]), (0.96, [0, 1, 2, 3])]
)
def test_top_p_nucleus_boundary(top_p, kept):
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    order = np.array([2, 0, 5, 1])  # token ids of those probabilities: the sort must map back correctly
    logits = np.full(6, -np.inf, np.float32)  # ids 3 and 4 impossible
    logits[order] = np.log(probs)
    tokens = draw(logits, top_p=top_p)
    expected = np.zeros(6)
    expected[order[kept]] = probs[kept] / probs[kept].sum()
    counts = np.bincount(tokens, minlength=6)
    assert set(np.flatnonzero(counts)) == set(order[kept])  # exactly the nucleus, every member seen
    np.testing.assert_allclose(counts / len(tokens), expected, atol=0.03)


def test_top_p_never_leaves_the_nucleus_on_random_rows():
    rng = np.random.default_rng(3)
    rows, vocab, temperature = 512, VOCAB, 0.7
    logits = (rng.normal(size=(rows, vocab)) * 2).astype(np.float32)
    top_p = rng.uniform(0.05, 0.99, size=rows).astype(np.float32)
    tokens, _ = sample(jnp.asarray(logits), slots(temperature, 0, top_p, np.arange(rows)), jnp.zeros(rows, jnp.int32))
    probs = np.exp(np_log_softmax(logits / temperature))
    for row, token in enumerate(np.asarray(tokens)):
        mass_before = probs[row][probs[row] > probs[row, token]].sum()
        assert mass_before < top_p[row] + 1e-5, (row, mass_before, top_p[row])


def test_top_k_then_top_p():
    # top_k=3 keeps ids 0, 5, 1 with renormalised probs ~[0.48, 0.29, 0.18] (after the k cut: 0.50, 0.30,
    # 0.18 of 0.98 ...); top_p=0.7 then keeps the first two.
    kept_logits = LOGITS6[[0, 5, 1]]
    renorm = np.exp(np_log_softmax(kept_logits))
    assert renorm[0] < 0.7 < renorm[0] + renorm[1]
    tokens = draw(LOGITS6, top_k=3, top_p=0.7)
    assert set(np.unique(tokens)) == {0, 5}


def test_ties_are_broken_by_lower_token_id():
    logits = np.array([1.0, 3.0, 3.0, 3.0, 0.0, 0.0], np.float32)
    assert set(np.unique(draw(logits, top_k=2))) == {1, 2}
    flat = np.zeros(6, np.float32)
    assert set(np.unique(draw(flat, top_p=0.5))) == {0, 1, 2}
    assert set(np.unique(draw(flat, top_k=3, top_p=0.5))) == {0, 1}


def test_logprobs_are_full_tempered_log_softmax():
    rng = np.random.default_rng(4)
    rows, vocab = 64, VOCAB
    logits = (rng.normal(size=(rows, vocab)) * 3).astype(np.float32)
    temperature = rng.choice([0.0, 0.3, 1.0, 1.7], size=rows)
    top_k = rng.choice([0, 1, 10, 100], size=rows)
    top_p = rng.choice([1.0, 0.5, 0.9], size=rows)
    tokens, logprobs = sample(
        jnp.asarray(logits), slots(temperature, top_k, top_p, np.arange(rows)), jnp.arange(rows, dtype=jnp.int32)
    )
    safe_t = np.where(temperature > 0, temperature, 1.0)[:, None]
    expected = np_log_softmax(logits / safe_t)[np.arange(rows), np.asarray(tokens)]  # before truncation
    np.testing.assert_allclose(logprobs, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_probs(jnp.asarray(logits), tokens, jnp.asarray(temperature)), expected, atol=1e-5)


def test_log_probs_of_shapes_and_zero_temperature():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
    tokens = rng.integers(0, 7, size=(2, 3))
    reference = np.take_along_axis(np_log_softmax(logits / 0.5), tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(log_probs(logits, tokens, 0.5), reference, atol=1e-5)
    per_sequence = log_probs(logits, tokens, jnp.array([0.5, 0.0]))  # [B] temperature for [B, L, V] logits
    np.testing.assert_allclose(per_sequence[0], reference[0], atol=1e-5)
    greedy_reference = np.take_along_axis(np_log_softmax(logits), tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(per_sequence[1], greedy_reference[1], atol=1e-5)


# Requests for the determinism tests: (params, logits row); the layouts below send them through all three
# internal paths (no filtering, top-k candidates, full sort).
_rng = np.random.default_rng(6)
REQUESTS = {
    "plain": (SamplingParams(temperature=1.0, seed=11), _rng.normal(size=VOCAB)),
    "top_k": (SamplingParams(temperature=0.8, top_k=20, seed=22), _rng.normal(size=VOCAB)),
    "top_k_p": (SamplingParams(temperature=1.2, top_k=50, top_p=0.9, seed=33), _rng.normal(size=VOCAB)),
    "top_p": (SamplingParams(temperature=1.0, top_p=0.95, seed=44), _rng.normal(size=VOCAB)),
    "big_k": (SamplingParams(temperature=1.0, top_k=200, seed=55), _rng.normal(size=VOCAB)),
    "greedy": (SamplingParams(temperature=0.0, seed=66), _rng.normal(size=VOCAB)),
}


def run_batch(names: list[str | None], steps: int = 12) -> dict[str, tuple[list[int], list[float]]]:
    """Samples `steps` tokens for each named request placed in the given slots (None = empty slot)."""
    params = [REQUESTS[n][0] if n else None for n in names]
    logits = jnp.asarray(np.stack([REQUESTS[n][1] if n else np.zeros(VOCAB) for n in names]).astype(np.float32))
    packed = pack_slot_sampling(params, len(names))
    out: dict[str, tuple[list[int], list[float]]] = {n: ([], []) for n in names if n}
    for step in range(steps):
        tokens, logprobs = sample(logits, packed, jnp.full(len(names), step, jnp.int32))
        for slot, name in enumerate(names):
            if name:
                out[name][0].append(int(tokens[slot]))
                out[name][1].append(float(logprobs[slot]))
    return out


def test_same_seed_same_tokens_in_any_slot_and_batch():
    layouts = [
        ["plain", None, None, None],  # no row filters
        [None, "top_k", None, "plain"],  # top-k candidates path
        ["top_k_p", "plain", "top_k", None],
        ["greedy", None, "plain", "top_p"],  # full sort path
        ["top_p", "top_k", "big_k", "top_k_p"],
        ["big_k", "greedy", "top_k_p", "plain"],
        [None, None, None, "top_k_p"],
    ]
    seen: dict[str, tuple[list[int], list[float]]] = {}
    for layout in layouts:
        for name, stream in run_batch(layout).items():
            if name in seen:
                assert stream[0] == seen[name][0], (name, layout)
                np.testing.assert_allclose(stream[1], seen[name][1], atol=1e-6)
            else:
                seen[name] = stream
    assert set(seen) == set(REQUESTS)


def test_streams_depend_on_seed_and_step():
    logits = jnp.zeros((4, VOCAB), jnp.float32)  # uniform: any difference comes from the keys
    tokens, _ = sample(logits, slots(1.0, seed=[7, 7, 7, 8]), jnp.array([3, 3, 4, 3], jnp.int32))
    assert tokens[0] == tokens[1]  # same (seed, step) in two slots
    streams = {}
    for seed in (7, 8):
        streams[seed] = [int(sample(logits, slots(1.0, seed=[seed] * 4), jnp.full(4, s, jnp.int32))[0][0])
                         for s in range(20)]
    assert streams[7] != streams[8]  # different seeds, different streams
    assert len(set(streams[7])) > 10  # different steps, different keys


def test_mixed_rows_in_one_call():
    rows_per_kind, vocab = 2048, 6  # 4 kinds x 2048 = the shape of draw()
    kinds = {"greedy": (0.0, 0, 1.0), "top_k": (1.0, 2, 1.0), "top_p": (1.0, 0, 0.7), "plain": (1.0, 0, 1.0)}
    temperature, top_k, top_p = (np.repeat([v[i] for v in kinds.values()], rows_per_kind) for i in range(3))
    rows = len(temperature)
    logits = jnp.asarray(np.broadcast_to(LOGITS6, (rows, vocab)))
    tokens, logprobs = sample(logits, slots(temperature, top_k, top_p, np.arange(rows)), jnp.zeros(rows, jnp.int32))
    by_kind = dict(zip(kinds, np.split(np.asarray(tokens), len(kinds))))
    assert set(np.unique(by_kind["greedy"])) == {0}
    assert set(np.unique(by_kind["top_k"])) == {0, 5}
    probs = np.exp(np_log_softmax(LOGITS6))  # sorted: 0 (.42), 5 (.25), 1 (.15) -> p=0.7 keeps 0, 5, 1
    assert probs[[0, 5]].sum() < 0.7 < probs[[0, 5, 1]].sum()
    assert set(np.unique(by_kind["top_p"])) == {0, 5, 1}
    assert set(np.unique(by_kind["plain"])) == set(range(vocab))
    assert np.all(np.isfinite(logprobs))


def test_pack_slot_sampling():
    packed = pack_slot_sampling([SamplingParams(0.7, 5, 0.9, seed=2**32 - 1), None], 3)
    np.testing.assert_allclose(packed.temperature, [0.7, 0.0, 0.0])
    np.testing.assert_array_equal(packed.top_k, [5, 0, 0])
    np.testing.assert_allclose(packed.top_p, [0.9, 1.0, 1.0])
    np.testing.assert_array_equal(packed.seed, [2**32 - 1, 0, 0])
    assert packed.seed.dtype == jnp.uint32 and packed.top_k.dtype == jnp.int32
    with pytest.raises(ValueError, match="slots"):
        pack_slot_sampling([None] * 3, 2)
    with pytest.raises(ValueError, match="top_p"):
        pack_slot_sampling([SamplingParams(top_p=0.0)], 1)


def test_stop_ids_list_becomes_tuple():
    params = SamplingParams(stop_ids=[3, 4])
    assert params.stop_ids == (3, 4)
    hash(params)


@pytest.mark.parametrize(
    "kwargs, vocab_size, field",
    [
        ({"temperature": -0.1}, None, "temperature"),
        ({"temperature": float("nan")}, None, "temperature"),
        ({"temperature": float("inf")}, None, "temperature"),
        ({"temperature": "1"}, None, "temperature"),
        ({"top_k": -1}, None, "top_k"),
        ({"top_k": 1.5}, None, "top_k"),
        ({"top_k": 11}, 10, "top_k"),
        ({"top_p": 0.0}, None, "top_p"),
        ({"top_p": 1.01}, None, "top_p"),
        ({"top_p": float("nan")}, None, "top_p"),
        ({"max_new_tokens": 0}, None, "max_new_tokens"),
        ({"max_new_tokens": 2.0}, None, "max_new_tokens"),
        ({"stop_ids": (1, -1)}, None, "stop_ids"),
        ({"stop_ids": (10,)}, 10, "stop_ids"),
        ({"stop_ids": 3}, None, "stop_ids"),
        ({"seed": -1}, None, "seed"),
        ({"seed": 2**32}, None, "seed"),
        ({"seed": True}, None, "seed"),
    ],
)
def test_validate_names_the_bad_field(kwargs, vocab_size, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs).validate(vocab_size)


def test_validate_accepts_good_params():
    SamplingParams().validate(10)
    SamplingParams(temperature=0, top_k=10, top_p=1, max_new_tokens=1, stop_ids=(0, 9), seed=2**32 - 1).validate(10)
    SamplingParams(top_k=np.int64(3), seed=np.uint32(5)).validate()
