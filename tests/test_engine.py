"""The engine against full-recompute greedy decoding, plus scheduling, sharing, preemption and errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memagent_jax.engine import engine as engine_module
from memagent_jax.engine.engine import Engine
from memagent_jax.engine.requests import EngineConfig, Request
from memagent_jax.engine.sampling import SamplingParams
from memagent_jax.model.config import ModelConfig
from memagent_jax.model.greedy import greedy_generate
from memagent_jax.model.transformer import Transformer

CFG = ModelConfig(family="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16, qkv_bias=True, tie_word_embeddings=True,
                  rope_theta=10000.0, max_position_embeddings=512, initializer_range=0.4)
SMALL_ENGINE = EngineConfig(page_size=8, num_pages=64, max_slots=4, max_seq_len=128, max_prompt_len=96,
                            prefill_chunk=32, prefill_batch=4, decode_steps=4)


@pytest.fixture(scope="module")
def model():
    return Transformer(CFG, rngs=nnx.Rngs(7))


@pytest.fixture(scope="module")
def engine(model):
    # One engine for the module: its compilations are shared and counted across tests.
    return Engine(model, SMALL_ENGINE)


def _prompts(seed, lengths):
    rng = np.random.default_rng(seed)
    return [list(map(int, rng.integers(1, CFG.vocab_size, n))) for n in lengths]


GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)


def test_greedy_equals_full_recompute_mixed_lengths(engine, model):
    # Lengths cross page (8) and prefill-chunk (32) boundaries; more requests than slots.
    prompts = _prompts(0, [1, 7, 8, 9, 31, 33, 70])
    got = engine.generate([Request(i, p, GREEDY) for i, p in enumerate(prompts)])
    want = greedy_generate(model, prompts, GREEDY.max_new_tokens)
    for completion, expected in zip(got, want):
        assert completion.finish_reason == "length"
        assert completion.tokens == expected


def test_decode_computes_the_busy_rows_only(model):
    # 3 requests on 64 slots: decode blocks of DECODE_MIN_ROWS rows, never all 64, with the same tokens and
    # log-probs (to rounding) as an engine that decodes every slot.
    prompts = _prompts(11, [5, 20, 40])
    sampled = SamplingParams(temperature=1.0, max_new_tokens=12, seed=3)
    wide = Engine(model, dataclasses.replace(SMALL_ENGINE, max_slots=64, num_pages=128))
    got = wide.generate([Request(i, p, sampled) for i, p in enumerate(prompts)])
    want = Engine(model, SMALL_ENGINE).generate([Request(i, p, sampled) for i, p in enumerate(prompts)])
    decodes = [name for name in wide.stats.compilations if name.startswith("decode")]
    assert decodes and all(name.startswith(f"decode({engine_module.DECODE_MIN_ROWS},)") for name in decodes)
    for a, b in zip(got, want):
        assert a.tokens == b.tokens
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_shared_prefixes_reuse_pages_and_match(engine, model):
    head = _prompts(1, [40])[0]
    tails = _prompts(2, [3, 11, 0, 17])
    prompts = [head + t for t in tails] + [head]
    before = engine.stats.cached_tokens
    got = engine.generate([Request(f"s{i}", p, GREEDY) for i, p in enumerate(prompts)])
    # The first prompt computes the 5 full head pages; the others reuse them, except that the first prompt
    # equal to the head recomputes its last page (its last token must run to give logits). The second
    # prompt equal to the head forks from the first: all 40 tokens reused, nothing computed.
    assert engine.stats.cached_tokens - before == 40 + 32 + 40 + 40
    assert engine.stats.forked >= 1
    assert any(c.cached_prompt_tokens > 0 for c in got)
    for completion, expected in zip(got, greedy_generate(model, prompts, GREEDY.max_new_tokens)):
        assert completion.tokens == expected


def test_group_of_rollouts_prefills_the_prompt_once(engine):
    prompt = _prompts(3, [64])[0]
    params = [SamplingParams(temperature=1.0, max_new_tokens=6, seed=s) for s in range(8)]
    before = engine.stats.prefill_tokens
    got = engine.generate([Request(("g", s), prompt, p) for s, p in enumerate(params)])
    computed = engine.stats.prefill_tokens - before
    # One prefill; the other rollouts fork from its pages and sample their first token from its logits.
    assert computed == 64
    assert all(c.cached_prompt_tokens == 64 for c in got[1:])
    assert len({tuple(c.tokens) for c in got}) > 1  # different seeds, different samples


def test_seed_gives_same_tokens_whatever_the_batch(engine):
    prompt = _prompts(4, [20])[0]
    params = SamplingParams(temperature=1.0, top_k=20, max_new_tokens=10, seed=1234)
    alone = engine.generate([Request("alone", prompt, params)])[0]
    crowd = [Request(f"x{i}", p, SamplingParams(temperature=1.0, max_new_tokens=15, seed=i))
             for i, p in enumerate(_prompts(5, [5, 50, 13]))]
    crowd.insert(2, Request("mixed", prompt, params))
    mixed = {c.request_id: c for c in engine.generate(crowd)}["mixed"]
    assert mixed.tokens == alone.tokens
    np.testing.assert_allclose(mixed.logprobs, alone.logprobs, atol=1e-5)


def test_logprobs_match_the_model(engine, model):
    prompt = _prompts(6, [10])[0]
    completion = engine.generate([Request("lp", prompt, SamplingParams(temperature=0.7, max_new_tokens=5, seed=3))])[0]
    tokens = np.asarray([prompt + completion.tokens])
    logits = np.asarray(model(tokens))[0] / 0.7
    top = logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits - top).sum(-1, keepdims=True)) - top
    expected = [logp[len(prompt) - 1 + i, t] for i, t in enumerate(completion.tokens)]
    np.testing.assert_allclose(completion.logprobs, expected, atol=1e-4)


def test_stop_ids_end_a_request_and_include_the_stop_token(engine, model):
    prompt = _prompts(7, [9])[0]
    free = greedy_generate(model, [prompt], 12)[0]
    stop = free[3]
    completion = engine.generate([Request("stop", prompt, SamplingParams(temperature=0.0, max_new_tokens=12,
                                                                          stop_ids=(stop,)))])[0]
    assert completion.finish_reason == "stop"
    assert completion.tokens == free[: free.index(stop) + 1]


def test_bad_requests_fail_alone(engine, model):
    good = _prompts(8, [12])[0]
    requests = [
        Request("empty", [], GREEDY),
        Request("long", [1] * 97, GREEDY),
        Request("good", good, GREEDY),
        Request("temp", good, SamplingParams(temperature=-1.0)),
        Request("vocab", [1, 2, CFG.vocab_size], GREEDY),
    ]
    got = {c.request_id: c for c in engine.generate(requests)}
    assert got["good"].ok and got["good"].tokens == greedy_generate(model, [good], 12)[0]
    assert "empty prompt" in got["empty"].error
    assert "exceeds max_prompt_len=96" in got["long"].error
    assert "temperature" in got["temp"].error
    assert "out of range" in got["vocab"].error
    assert all(not got[k].ok for k in ("empty", "long", "temp", "vocab"))


def test_no_recompilation_for_new_request_shapes(engine):
    warm = [3, 30, 60, 90]
    engine.generate([Request(f"warm{n}", p, GREEDY) for n, p in enumerate(_prompts(9, warm))])
    compiled = dict(engine.stats.compilations)
    # New lengths, contents and sampling settings that fall in the same shape buckets compile nothing.
    new = [5, 28, 57, 93]
    engine.generate([Request(f"new{n}", p, SamplingParams(temperature=0.9, top_p=0.8, max_new_tokens=12, seed=n))
                     for n, p in enumerate(_prompts(10, new))])
    assert dict(engine.stats.compilations) == compiled
    assert all(count == 1 for count in compiled.values())  # no shape was ever compiled twice
    decode_variants = [name for name in compiled if name.startswith("decode")]
    assert 1 <= len(decode_variants) <= 5  # page-table widths 4, 6, 8, 12, 16 at most


def test_pages_run_out_then_requests_wait_or_are_preempted(model):
    # 12 usable pages of 8 tokens for 4 slots of up to 40 tokens each: cannot all fit at once.
    tight = EngineConfig(page_size=8, num_pages=13, max_slots=4, max_seq_len=64, max_prompt_len=40,
                         prefill_chunk=16, prefill_batch=2, decode_steps=4, prefix_caching=False)
    engine = Engine(model, tight)
    prompts = _prompts(11, [20, 15, 18, 22, 9])
    params = SamplingParams(temperature=0.0, max_new_tokens=20)
    got = engine.generate([Request(i, p, params) for i, p in enumerate(prompts)])
    assert engine.stats.preemptions > 0
    for completion, expected in zip(got, greedy_generate(model, prompts, 20)):
        assert completion.tokens == expected
    engine.pool.check_invariants()
    assert engine.pool.num_available == tight.num_pages - 1  # everything released


def test_max_seq_len_limits_generation(model):
    engine = Engine(model, EngineConfig(page_size=8, num_pages=32, max_slots=2, max_seq_len=24,
                                        max_prompt_len=20, prefill_chunk=16, prefill_batch=2, decode_steps=4))
    completion = engine.generate([Request(0, _prompts(12, [20])[0], SamplingParams(temperature=0.0,
                                                                                  max_new_tokens=50))])[0]
    assert completion.finish_reason == "length" and len(completion.tokens) == 4


def test_forked_rollouts_equal_independent_ones(engine, model):
    """Identical prompts (a partial last page, copied on fork) give the tokens they would alone."""
    prompt = _prompts(13, [37])[0]
    params = [SamplingParams(temperature=1.0, max_new_tokens=9, seed=100 + s) for s in range(5)]
    forks_before = engine.stats.forked
    shared = engine.generate([Request(("f", s), prompt, p) for s, p in enumerate(params)])
    assert engine.stats.forked - forks_before == 4
    plain = Engine(model, dataclasses.replace(SMALL_ENGINE, prefix_caching=False))
    alone = plain.generate([Request(("p", s), prompt, p) for s, p in enumerate(params)])
    for a, b in zip(shared, alone):
        assert a.tokens == b.tokens
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
    engine.pool.check_invariants()
    # Only the recorded prompts still hold pages once everything has finished.
    held = {p for p in range(1, SMALL_ENGINE.num_pages) if engine.pool.refcount(p) > 0}
    assert held == {p for record in engine._records.values() for p in record.pages}


def test_update_weights_drops_stale_prefixes_and_matches_the_new_model(model):
    engine = Engine(model, SMALL_ENGINE)
    prompt = _prompts(11, [40])[0]
    engine.generate([Request("old", prompt, GREEDY)])
    compiled = dict(engine.stats.compilations)
    other = Transformer(CFG, rngs=nnx.Rngs(99))
    _, new_state = nnx.split(other)
    # Weights arriving in another dtype (a bfloat16 copy from the trainer) are cast to the engine's dtype.
    engine.update_weights(jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), new_state))
    assert engine.stats.weight_updates == 1
    engine.update_weights(new_state)
    got = engine.generate([Request("new", prompt, GREEDY)])[0]
    # The same prompt again must be computed with the new weights, not forked from the old record.
    assert got.cached_prompt_tokens == 0
    assert got.tokens == greedy_generate(other, [prompt], GREEDY.max_new_tokens)[0]
    assert dict(engine.stats.compilations) == compiled
    engine.pool.check_invariants()


def test_update_weights_copies_unless_the_caller_hands_over_its_arrays(model):
    engine = Engine(model, SMALL_ENGINE)
    _, state = nnx.split(Transformer(CFG, rngs=nnx.Rngs(5)))

    def pointers(tree):
        return [x.unsafe_buffer_pointer() for x in jax.tree.leaves(tree)]

    engine.update_weights(state)  # the trainer's arrays: copied (it donates them to its next update)
    assert not set(pointers(engine.weights)) & set(pointers(state))
    engine.update_weights(state, owned=True)  # a fresh copy made for the engine: taken as it is
    assert pointers(engine.weights) == pointers(state)


def test_update_weights_refuses_a_busy_engine_or_other_shapes(model):
    engine = Engine(model, SMALL_ENGINE)
    _, state = nnx.split(model)
    engine.submit(Request("busy", _prompts(12, [5])[0], GREEDY))
    with pytest.raises(RuntimeError, match="idle"):
        engine.update_weights(state)
    while engine.has_work():
        engine.step()
    wrong = jax.tree.map(lambda x: x[..., :1] if x.ndim else x, state)
    with pytest.raises(ValueError, match="shape"):
        engine.update_weights(wrong)
