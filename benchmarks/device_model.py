"""Model-level measurements for device_check.py on a random Qwen2-shaped model: decode throughput and HBM
bandwidth (the engine's jitted decode step), prefill and training MFU, one GRPO step of the memory agent."""

from __future__ import annotations

import functools
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from device_kernels import median_seconds
from memagent_jax.agent.memory_agent import AgentConfig, MemoryAgent
from memagent_jax.data.pipeline import make_pipeline
from memagent_jax.data.synthetic import SyntheticSource
from memagent_jax.data.task_corpus import task_corpus
from memagent_jax.data.tasks import make_task
from memagent_jax.engine.engine import Engine
from memagent_jax.engine.kv_cache import init_kv_cache
from memagent_jax.engine.requests import EngineConfig
from memagent_jax.engine.sampling import SamplingParams, pack_slot_sampling
from memagent_jax.engine.steps import DecodeBatch, PrefillBatch, make_decode_fn, make_prefill_fn
from memagent_jax.model.config import ModelConfig
from memagent_jax.model.sharding import DEFAULT_RULES, create_sharded, make_mesh
from memagent_jax.model.transformer import Transformer
from memagent_jax.rl.experience import ExperienceConfig
from memagent_jax.rl.optimizer import OptimizerConfig
from memagent_jax.rl.packing import TrainSequence
from memagent_jax.rl.policy import BatchShape, Policy
from memagent_jax.rl.precision import cast_floating
from memagent_jax.rl.trainer import GRPOTrainer, RLConfig, batches_from
from memagent_jax.rl.update import UpdateConfig
from memagent_jax.run.metrics import model_flops_per_token
from memagent_jax.tokenizer import load_tokenizer, train_sentencepiece


def _ignore_trace(name: str) -> None:
    del name


@functools.lru_cache(maxsize=1)
def inference_state(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """A random model's graph and its weights in the compute dtype (as the engine holds them); built once."""
    graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    return graphdef, cast_floating(state, cfg.compute_dtype)


def _bytes(tree: Any) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _sampling(slots: int) -> Any:
    return pack_slot_sampling([SamplingParams(temperature=1.0, seed=i) for i in range(slots)], slots)


def decode_throughput(cfg: ModelConfig, batches: tuple[int, ...], context: int, steps: int, page_size: int,
                      repeats: int, copy_bytes_per_s: float | None) -> dict[str, Any]:
    """Tokens/s of the engine's decode step (`steps` tokens per call, every slot `context` tokens deep) and
    the HBM traffic it implies: all weights plus every slot's K/V, once per token step."""
    graphdef, state = inference_state(cfg)
    decode = make_decode_fn(graphdef, steps, "auto", _ignore_trace)
    weight_bytes = _bytes(state)
    kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * cfg.compute_dtype.itemsize
    rows = []
    for slots in batches:
        pages_per_seq = -(-(context + steps) // page_size)
        cache = init_kv_cache(cfg, slots * pages_per_seq + 1, page_size)
        table = 1 + np.arange(slots * pages_per_seq, dtype=np.int32).reshape(slots, pages_per_seq)
        rng = np.random.default_rng(slots)
        batch = DecodeBatch(
            tokens=jnp.asarray(rng.integers(0, cfg.vocab_size, slots), jnp.int32),
            positions=jnp.full((slots,), context, jnp.int32), active=jnp.ones((slots,), bool),
            budget=jnp.full((slots,), steps, jnp.int32), page_table=jnp.asarray(table),
            stop_ids=jnp.full((slots, 8), -1, jnp.int32), sampling=_sampling(slots),
            step=jnp.zeros((slots,), jnp.int32))
        holder = {"cache": cache}

        def call(holder: dict = holder, batch: DecodeBatch = batch) -> jax.Array:
            out, holder["cache"] = decode(state, holder["cache"], batch)  # the cache is donated: keep the new one
            return out.tokens

        seconds = median_seconds(call, repeats)
        bytes_per_step = weight_bytes + slots * (context + steps / 2) * kv_per_token
        bandwidth = bytes_per_step * steps / seconds
        rows.append({"batch": slots, "context": context, "tokens_per_s": slots * steps / seconds,
                     "ms_per_step": 1e3 * seconds / steps, "hbm_GB_per_s": bandwidth / 1e9,
                     "of_copy_bw": bandwidth / copy_bytes_per_s if copy_bytes_per_s else None})
        del holder, cache, call  # free this batch size's pages before the next
    return {"weights_GB": weight_bytes / 1e9, "decode_steps_per_call": steps, "rows": rows}


def _mfu_fields(flops_per_s: float, matmul_flops_per_s: float | None) -> dict[str, Any]:
    return {"TFLOP_per_s": flops_per_s / 1e12,
            "mfu_vs_measured_matmul": flops_per_s / matmul_flops_per_s if matmul_flops_per_s else None}


def prefill_mfu(cfg: ModelConfig, batch: int, length: int, page_size: int, repeats: int,
                matmul_flops_per_s: float | None) -> dict[str, Any]:
    """One fresh prefill chunk of `batch` x `length` tokens (the engine's prefill step). FLOPs: PaLM's
    forward accounting without the LM head, which prefill applies to each row's last token only."""
    graphdef, state = inference_state(cfg)
    prefill = make_prefill_fn(graphdef, _ignore_trace)
    pages_per_seq = length // page_size
    cache = init_kv_cache(cfg, batch * pages_per_seq + 1, page_size)
    rng = np.random.default_rng(0)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))
    prefill_batch = PrefillBatch(
        tokens=jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, length)), jnp.int32),
        positions=jnp.asarray(positions), valid=jnp.ones((batch, length), bool),
        page_table=jnp.asarray(1 + np.arange(batch * pages_per_seq, dtype=np.int32).reshape(batch, -1)),
        last_index=jnp.full((batch,), length - 1, jnp.int32), sampling=_sampling(batch),
        step=jnp.zeros((batch,), jnp.int32))
    holder = {"cache": cache}

    def call() -> jax.Array:
        tokens, _, _, holder["cache"] = prefill(state, holder["cache"], prefill_batch, True)
        return tokens

    seconds = median_seconds(call, repeats)
    matmul_params = cfg.num_params - cfg.vocab_size * cfg.hidden_size
    flops = model_flops_per_token(matmul_params, cfg.num_layers, cfg.hidden_size, length, training=False)
    tokens_per_s = batch * length / seconds
    return {"batch": batch, "length": length, "seconds": seconds, "tokens_per_s": tokens_per_s,
            **_mfu_fields(tokens_per_s * flops, matmul_flops_per_s)}


def _random_conversations(rng: np.random.Generator, count: int, length: int, vocab: int) -> list[TrainSequence]:
    """MemAgent-shaped: prompts of 40-90% of `length`, the rest response."""
    out = []
    for _ in range(count):
        prompt = int(rng.integers(int(0.4 * length), int(0.9 * length)))
        out.append(TrainSequence([int(t) for t in rng.integers(1, vocab, length)], prompt))
    return out


def train_mfu(cfg: ModelConfig, row_len: int, rows_per_micro: int, micro_batches: int, repeats: int,
              matmul_flops_per_s: float | None) -> dict[str, Any]:
    """One optimizer update (forward, backward, AdamW over float32 masters) on packed rows: Policy.train
    with the SFT objective, as benchmarks/train_step.py builds it. FLOPs: PaLM's 6N + 12LTd per real token."""
    mesh = make_mesh({"fsdp": 1}, jax.devices()[:1])
    # Built on the mesh as a training run builds it: an unplaced model would compile the update twice.
    model = create_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh, DEFAULT_RULES)
    policy = Policy(model, mesh, DEFAULT_RULES, OptimizerConfig(learning_rate=1e-5, warmup_steps=0),
                    UpdateConfig(objective="sft", max_segments=8), BatchShape(row_len=row_len,
                                                                              rows_per_micro=rows_per_micro))
    rng = np.random.default_rng(0)
    # Two conversations fill a row (lengths row_len / 2), so packing leaves no padding.
    sequences = _random_conversations(rng, 2 * rows_per_micro * micro_batches, row_len // 2, cfg.vocab_size)
    seconds = median_seconds(lambda: policy.train([sequences])["updates"], repeats)
    real = sum(len(s.tokens) - 1 for s in sequences)
    flops = model_flops_per_token(cfg.num_params, cfg.num_layers, cfg.hidden_size, row_len, training=True)
    tokens_per_s = real / seconds
    return {"row_len": row_len, "rows_per_micro": rows_per_micro, "micro_batches": micro_batches,
            "params_M": policy.num_params / 1e6, "step_seconds": seconds, "tokens_per_s": tokens_per_s,
            **_mfu_fields(tokens_per_s * flops, matmul_flops_per_s)}


def grpo_step(cfg: ModelConfig, doc_tokens: int, chunk_tokens: int, group_size: int, batch_size: int,
              max_slots: int, row_len: int, corpus_lines: int) -> dict[str, Any]:
    """One Multi-Conv GRPO step of the memory agent on a random model, assembled as tests/test_trainer.py
    does: a small SentencePiece tokenizer (the model's larger vocabulary is fine: ids past the tokenizer's
    decode to nothing), toy_code documents, the paged engine, rollouts, rewards, one update per mini-batch."""
    with tempfile.TemporaryDirectory() as folder:
        train_sentencepiece(task_corpus(corpus_lines), folder, vocab_size=512)
        tokenizer = load_tokenizer(folder)
    mesh = make_mesh({"fsdp": 1}, jax.devices()[:1])
    model = create_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(1)), mesh, DEFAULT_RULES)
    graphdef, masters = nnx.split(model)
    engine = Engine(nnx.merge(graphdef, cast_floating(masters, cfg.compute_dtype, copy=True)),
                    EngineConfig(page_size=16, num_pages=max_slots * row_len // 8, max_slots=max_slots,
                                 max_seq_len=row_len, max_prompt_len=row_len - 64,
                                 prefill_chunk=min(256, row_len // 4), prefill_batch=8, decode_steps=8))
    agent = MemoryAgent(engine, tokenizer, AgentConfig(chunk_size=chunk_tokens, max_memory_tokens=32,
                                                       max_answer_tokens=16, max_question_tokens=64))
    policy = Policy(model, mesh, DEFAULT_RULES, OptimizerConfig(learning_rate=1e-6, warmup_steps=0),
                    UpdateConfig(max_segments=16), BatchShape(row_len=row_len, rows_per_micro=2))
    trainer = GRPOTrainer(policy, agent, RLConfig(group_size=group_size, batch_size=batch_size, mini_batch_size=1,
                                                  experience=ExperienceConfig(overlong="none")))
    task = make_task("toy_code", tokenizer, doc_tokens)
    data = batches_from(iter(make_pipeline(SyntheticSource(task, 1000), batch_size, tokenizer=tokenizer,
                                           chunk_tokens=chunk_tokens, seed=0, num_epochs=None)))
    metrics = trainer.step(data, step=0)
    keys = ("step_seconds", "rollout_seconds", "rollout_tokens_per_s", "update_seconds", "update_tokens_per_s",
            "weight_sync_seconds", "reward_mean", "updates", "sequences", "loss_tokens", "logp_gap_sampler_trainer")
    return {"group_size": group_size, "batch_size": batch_size, "doc_tokens": doc_tokens,
            **{key: metrics.get(key) for key in keys}}
