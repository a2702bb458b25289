"""MemAgent RL of Qwen2.5-14B-Instruct on a TPU v5p-64 slice, with the paper's hyperparameters.

What "v5p-64" is: Cloud TPU accelerator types count TensorCores, and a v5p chip has two, so v5p-64 is
32 chips (topology 2x4x4) on 8 hosts of 4 chips (Cloud TPU's v5p page). JAX runs each v5p chip's two
TensorCores as one "megacore" device, so the slice is 32 JAX devices of 95 GB HBM each; the mesh below
is 32 devices. Run one process per host (jax.distributed); every host reads its own data shard.

Point `config.model.checkpoint` and `config.tokenizer.path` at a local HF folder of
Qwen2.5-14B-Instruct (config.json, *.safetensors, tokenizer.json) on every host. The paper trained the
14B on 16 nodes x 8 GPUs for about a day.

Mesh (32 devices): data=1, fsdp=4, tensor=8, for training and rollouts alike (they share the devices).
- tensor=8 splits the 14B's 40 query heads and 8 KV heads evenly (5 and 1 per chip) and is the widest
  split that does: the training step keeps each layer's attention probabilities for an 8.7K-token row,
  so the heads per chip set the largest memory item (see Memory below); v5p's 3D-torus ICI carries the
  tensor-parallel collectives. Rollouts are tensor-parallel over the same 8 chips.
- fsdp=4 shards the remaining weight dimension in training; a micro-batch has one packed row per FSDP
  group (rows_per_micro = data * fsdp = 4).
- The engine's layout (rollout_sharding) is pure tensor parallelism (model dimension unsharded, no
  weight all-gathers per decode step): 29.5 GB / 8 of bfloat16 weights per chip.

Precision: bfloat16 compute, float32 master weights, Adam moments and gradient sums; bfloat16 copies for
the engine and the KL reference; truncated importance sampling on (rl.loss.tis_cap 2.0); bfloat16 export.

Memory per chip (memagent_jax.run.memory_budget; tests/test_real_configs.py prints the table): masters 1.85,
Adam moments 3.7, KL reference 0.9, gradients 3.7, the layers' stacked compute copy and its gradient 1.85
(train.scan_layers) and the engine's weights 3.7 GB (15.7 GB), the KV pages 51.5 GB (the engine replicates its
cache on every device). The activations of one 8,704-token row would take about 110 GB per chip (estimate) if
every layer kept its intermediates; `train.remat=True` (jax.checkpoint per decoder layer) brings them to ~11
GB: 78.4 GB in total of 95.
"""

import ml_collections

from memagent_jax.run.paper_configs import paper_config

CHECKPOINT = "/path/to/Qwen2.5-14B-Instruct"  # placeholder: the HF folder of Qwen2.5-14B-Instruct


def get_config() -> ml_collections.ConfigDict:
    # KV pages: 196,608 bytes per token (48 layers, 8 KV heads, bfloat16); 16,384 pages of 16 tokens =
    # 51.5 GB per chip: 30 sequences at full length, more with prefix sharing.
    return paper_config(preset="qwen2.5-14b", checkpoint=CHECKPOINT, workdir="runs/qwen2_5_14b_tpu_v5p",
                        mesh={"data": 1, "fsdp": 4, "tensor": 8}, num_pages=16384, max_slots=32,
                        rows_per_micro=4, batch_size=256, mini_batch_size=16)
