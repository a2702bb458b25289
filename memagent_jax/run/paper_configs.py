"""MemAgent's reference-run settings as one config builder, shared by the real-scale configs in configs/.

Facts from the MemAgent paper (Yu et al., 2025, arXiv:2507.02259) and its reference implementation:
chunks of 5,000 tokens, memory, answer and question caps of 1,024, G=16, clip 0.2/0.2 with dual clip 3,
token-mean, k3 KL at 0.001, AdamW lr 1e-6 with 20 warm-up steps then constant, weight decay 0.01, clip 1.0,
one PPO epoch.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from memagent_jax.run.configuration import (
    copy_section,
    mesh_section,
    model_section,
    optimizer_section,
    output_sections,
    retrieval_section,
    sharding_section,
    tensor_parallel_rules,
)

# MemAgent: AdamW, lr 1e-6, 20 warm-up steps then constant, weight decay 0.01, global-norm clip 1.0.
PAPER_OPTIMIZER = dict(learning_rate=1e-6, warmup_steps=20, weight_decay=0.01, grad_clip=1.0)


def paper_config(*, preset: str, checkpoint: str, workdir: str, mesh: dict[str, int], num_pages: int, max_slots: int,
                 rows_per_micro: int, batch_size: int, mini_batch_size: int,
                 train_file: str = "data/hotpotqa_train.parquet",
                 eval_files: str = "data/ruler_hqa/ruler_hqa_*.jsonl") -> ml_collections.ConfigDict:
    """A run config with MemAgent's sizes and RL hyperparameters; the arguments are what differs by target."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.workdir = workdir
    config.model = model_section(preset)  # bfloat16 compute, float32 master weights
    # Users point this at their HF folder; when set, its config.json defines the architecture.
    config.model.checkpoint = checkpoint
    config.mesh = mesh_section(**mesh)
    config.sharding = sharding_section()  # training: embed over fsdp; heads, kv_heads, mlp, vocab over tensor
    # Rollouts: Megatron-style tensor parallelism over "tensor", weights whole along the model dimension.
    config.rollout_sharding = sharding_section(tensor_parallel_rules())

    config.tokenizer = ml_collections.ConfigDict()
    config.tokenizer.path = checkpoint  # the checkpoint's own tokenizer.json and chat template
    config.tokenizer.vocab_size = config.model.vocab_size
    config.tokenizer.corpus_lines = 4000  # unused with a path
    config.tokenizer.digit_group = 1  # unused with a path

    # MemAgent sizes: 5,000-token chunks, 1,024-token memory, answer and question caps.
    config.agent = ml_collections.ConfigDict({
        "chunk_size": 5000, "chunk_boundary": "token", "max_memory_tokens": 1024, "max_answer_tokens": 1024,
        "max_question_tokens": 1024, "temperature": 1.0, "top_p": 1.0, "top_k": 0})
    # The longest prompt: chat template + instructions (~150-200 tokens) + question 1,024 + memory 1,024 +
    # chunk 5,000, about 7.2K; max_prompt_len 7,680 leaves ~450 tokens of headroom, and max_seq_len adds
    # the 1,024 generated memory or answer tokens (8,704 = 544 pages of 16).
    # KV pages: sized per target (the engine replicates its cache on every device; the G=16 rollouts of a
    # sample share their prompt pages through prefix caching).
    config.engine = ml_collections.ConfigDict({
        "page_size": 16, "num_pages": num_pages, "max_slots": max_slots, "max_seq_len": 8704, "max_prompt_len": 7680,
        "prefill_chunk": 512, "prefill_batch": 8, "decode_steps": 8, "attention_backend": "auto",
        "prefix_caching": True})
    # A packed row holds the longest conversation (prompt 7,680 + 1,024 generated); 8,704 is a multiple of
    # the attention's 128-token query blocks. One row per FSDP group per micro-batch.
    config.train = ml_collections.ConfigDict({
        "row_len": 8704, "rows_per_micro": rows_per_micro, "ppo_epochs": 1, "max_segments": 16, "piece_len": 256,
        "remat": True, "scan_layers": True})

    # Instruct models go straight to RL in the paper: no SFT warm start (the section stays for overrides).
    # Data: MemAgent's training file, HotpotQA questions with their paragraphs padded by distractors to 200
    # documents (~28K tokens, up to 8 chunks per sample), RULER-HQA's evaluation questions held out. Build it
    # with `python -m memagent_jax.data.hotpotqa_train --hotpotqa FILE --out data/hotpotqa_train.parquet`
    # (FILE: HotpotQA's train JSON, with --eval_hotpotqa the dev file that scripts/fetch_hotpotqa.sh fetches;
    # or the dev file alone), or point rl.sources at the reference's own Parquet files.
    config.copy = copy_section(0)  # pretrained models already copy
    config.retrieval = retrieval_section(0)  # ... and find lines by their content
    config.sft = ml_collections.ConfigDict({
        "steps": 0, "batch_size": 16, "mini_batch_size": 16, "num_samples": 8192,
        "tasks": ("multihop_qa",), "lengths": (28000,), "sources": (),
        "quiet_updates": placeholder(int),  # None: every update
        "optimizer": optimizer_section(**PAPER_OPTIMIZER)})
    # Multi-Conv GRPO: G=16 rollouts per sample, batch_size samples per step in mini-batches (the paper: 128/8
    # for the 7B, 256/16 for the 14B: 16 updates per step), one PPO epoch; advantage = reward - group mean
    # (no std division), no DAPO filters. 400 steps: the paper's gains appear within the first 150-400.
    # Loss: PPO clip 0.2/0.2 (clip-higher: raise clip_high, e.g. 0.28 as DAPO or 0.3 as a reproduction did),
    # dual clip 3.0, token-mean over the mini-batch, k3 KL to the reference at 0.001, no entropy bonus.
    # Truncated importance sampling on (tis_cap 2.0; None = off): the bfloat16 engine and trainer are two
    # programs whose log-probs of the same tokens differ by rounding (benchmarks/logprob_gap.py), and each
    # token's loss is weighted by min(exp(old_logp - sampler_logp), 2) to correct for it.
    config.rl = ml_collections.ConfigDict({
        "steps": 400, "batch_size": batch_size, "mini_batch_size": mini_batch_size, "num_samples": 8192,
        "tasks": ("multihop_qa",), "lengths": (28000,), "sources": ({"path": train_file, "weight": 1},),
        "group_size": 16, "dynamic_sampling": False, "max_refills": 4,
        "normalize_std": False, "overlong": "none", "overlong_penalty": 1.0,
        "loss": {"clip_low": 0.2, "clip_high": 0.2, "dual_clip": 3.0, "kl_coef": 0.001, "kl_estimator": "k3",
                 "aggregation": "token-mean", "tis_cap": 2.0, "entropy_coef": 0.0},
        "optimizer": optimizer_section(**PAPER_OPTIMIZER)})

    # The evaluation after training: RULER-HQA (eval.data, built by `python -m memagent_jax.data.hotpotqa
    # --hotpotqa FILE --out_dir data/ruler_hqa`; sub_em by number of documents, resumable in
    # {workdir}/eval_data). Off by default: it runs on process 0 alone, and its 3.5M-token cells take hours;
    # turn it on with --config.eval.enabled=True, or run `python -m memagent_jax.evaluate --checkpoint
    # {workdir}/export --data 'data/ruler_hqa/*.jsonl'` on any machine (README "Reproduce the paper's table").
    config.eval = ml_collections.ConfigDict({
        "enabled": False, "tasks": ("multihop_qa",), "lengths": (7000, 28000, 112000), "long": False,
        "samples_per_cell": 16, "batch": 16, "data": (eval_files,), "sampling": "greedy", "on_bad_record": "raise"})

    output_sections(config)

    config.generate = ml_collections.ConfigDict()
    config.generate.prompt = "Which country is the birthplace of the founder of the company that built the bridge?"
    config.generate.max_new_tokens = 1024
    return config
