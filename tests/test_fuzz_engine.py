"""Fuzzed engine requests on a tiny random model with a small page pool: any prompt length, token ids, sampling
parameters (bad ones too) and number of requests. Every request gets a completion (tokens, or finish_reason
"error" with a message), the engine never stalls, and the page pool holds its invariants and is whole again
once the engine is idle."""

from __future__ import annotations

import math
from typing import Any

import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from memagent_jax.engine.engine import Engine
from memagent_jax.engine.requests import Completion, EngineConfig, Request
from memagent_jax.engine.sampling import SamplingParams
from memagent_jax.model.config import ModelConfig
from memagent_jax.model.transformer import Transformer

VOCAB = 32
CFG = ModelConfig(family="qwen2", vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_layers=1,
                  num_heads=2, num_kv_heads=1, head_dim=8, qkv_bias=True, tie_word_embeddings=True,
                  rope_theta=10000.0, max_position_embeddings=128, initializer_range=0.4)
# 5 usable pages of 8 tokens for 3 slots: long prompts are refused, concurrent ones wait or are preempted.
TIGHT = EngineConfig(page_size=8, num_pages=6, max_slots=3, max_seq_len=48, max_prompt_len=44, prefill_chunk=16,
                     prefill_batch=2, decode_steps=4, max_stop_ids=2)
MAX_STEPS = 400  # scheduling rounds: far more than any case here needs, so running out means a stall


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(Transformer(CFG, rngs=nnx.Rngs(3)), TIGHT)


token = st.integers(0, VOCAB - 1)
bad_token = st.sampled_from([-1, VOCAB, 2**40, 1.5, "7", None, True])
# Lengths from few buckets (each prefill/decode shape compiles once), and past every limit.
prompts = st.one_of(
    st.integers(1, 44).flatmap(lambda n: st.lists(token, min_size=n, max_size=n)),
    st.sampled_from([0, 45, 48, 60]).map(lambda n: [1] * n),
    st.lists(token, min_size=1, max_size=6).flatmap(lambda p: st.lists(bad_token, min_size=1, max_size=2)
                                                    .map(lambda bad: p + bad)),
)
sampling = st.builds(
    SamplingParams,
    temperature=st.sampled_from([0.0, 0.7, 1.0, -1.0, math.nan, math.inf, "1"]),
    top_k=st.sampled_from([0, 1, 5, VOCAB, VOCAB + 1, -1, 2.5]),
    top_p=st.sampled_from([1.0, 0.9, 0.3, 0.0, 1.5, math.nan]),
    max_new_tokens=st.sampled_from([1, 2, 5, 12, 40, 0, -3, 2.5]),
    stop_ids=st.lists(st.integers(-1, VOCAB), max_size=3).map(tuple),
    seed=st.sampled_from([0, 1, 12345, 2**32 - 1, 2**32, -1]),
)


def _expect_error(request: Request) -> bool:
    """What the engine documents as refused: bad prompts, bad sampling parameters, too many stop ids."""
    prompt = request.prompt
    if not prompt or len(prompt) > TIGHT.max_prompt_len:
        return True
    if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < VOCAB for t in prompt):
        return True
    try:
        request.params.validate(VOCAB)
    except ValueError:
        return True
    if len(request.params.stop_ids) > TIGHT.max_stop_ids:
        return True
    # Pages for the prompt and its first token's position, and for every position a generated token is written.
    longest = min(len(prompt) + request.params.max_new_tokens, TIGHT.max_seq_len)
    return max(-(-(len(prompt) + 1) // TIGHT.page_size), -(-(longest - 1) // TIGHT.page_size)) > 5


def _run(engine: Engine, requests: list[Request]) -> dict[Any, Completion]:
    for request in requests:
        engine.submit(request)
    done: dict[Any, Completion] = {}
    for _ in range(MAX_STEPS):
        for completion in engine.step():
            assert completion.request_id not in done, "a request completed twice"
            done[completion.request_id] = completion
        engine.pool.check_invariants()
        if not engine.has_work():
            return done
    raise AssertionError(f"engine stalled: {len(done)} of {len(requests)} requests done after {MAX_STEPS} rounds")


@settings(max_examples=max(2, settings.default.max_examples // 2))  # cheap: shapes are bucketed, compiled once
@given(cases=st.lists(st.tuples(prompts, sampling), min_size=1, max_size=6), repeat_first=st.booleans())
def test_every_request_completes_or_is_refused_and_no_page_leaks(engine: Engine, count_case,
                                                                  cases: list[tuple[list, SamplingParams]],
                                                                  repeat_first: bool) -> None:
    if repeat_first:  # identical prompts share pages (forking from the cached prompt)
        cases = cases + [cases[0]]
    requests = [Request(i, prompt, params) for i, (prompt, params) in enumerate(cases)]
    for _ in requests:
        count_case()
    done = _run(engine, requests)
    assert sorted(done) == list(range(len(requests))), "a request was lost"
    for request in requests:
        completion = done[request.request_id]
        if _expect_error(request):
            assert completion.finish_reason == "error" and completion.error, (request, completion)
            continue
        assert completion.ok, (request, completion.error)
        params = request.params
        assert 1 <= len(completion.tokens) == len(completion.logprobs) <= params.max_new_tokens
        assert len(request.prompt) + len(completion.tokens) <= TIGHT.max_seq_len
        assert all(0 <= t < VOCAB for t in completion.tokens)
        assert all(math.isfinite(lp) and lp <= 1e-5 for lp in completion.logprobs)
        if completion.finish_reason == "stop":
            assert completion.tokens[-1] in params.stop_ids
        else:
            assert completion.finish_reason == "length"
            assert not set(completion.tokens) & set(params.stop_ids)
    # Idle: only kept prompts hold pages; dropping them (as a weight update does) returns every page.
    engine.update_weights(engine.weights)
    engine.pool.check_invariants()
    assert engine.pool.num_available == TIGHT.num_pages - 1, "pages leaked"


@pytest.mark.parametrize("bad", [1.5, "7", None])
def test_a_prompt_token_that_is_not_an_int_is_refused_alone(engine: Engine, bad: Any) -> None:
    completion = _run(engine, [Request("bad", [1, 2, bad], SamplingParams(max_new_tokens=2))])["bad"]
    assert completion.finish_reason == "error" and "prompt token ids must be ints" in completion.error


def test_a_request_that_would_outgrow_the_whole_cache_is_refused(engine: Engine) -> None:
    # 30 + 20 tokens need 7 of the 5 pages: it used to preempt itself and be re-admitted forever.
    done = _run(engine, [Request("big", [1] * 30, SamplingParams(max_new_tokens=20)),
                         Request("fits", [1] * 30, SamplingParams(max_new_tokens=10))])
    assert done["big"].finish_reason == "error" and "needs up to 6 pages but the cache has 5" in done["big"].error
    assert done["fits"].ok and len(done["fits"].tokens) == 10
