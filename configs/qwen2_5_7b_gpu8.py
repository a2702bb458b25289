"""MemAgent RL of Qwen2.5-7B-Instruct on one host with 8 GPUs (H100 80GB), with the paper's hyperparameters.

Point `config.model.checkpoint` and `config.tokenizer.path` at a local HF folder of Qwen2.5-7B-Instruct
(config.json, *.safetensors, tokenizer.json), e.g.
`python -m memagent_jax.train --config=configs/qwen2_5_7b_gpu8.py --config.model.checkpoint=/data/Qwen2.5-7B-Instruct
 --config.tokenizer.path=/data/Qwen2.5-7B-Instruct`.
The paper trained the 7B on 4 nodes x 8 GPUs for 3-4 days; one node has a quarter of that compute.

Mesh (8 devices): data=1, fsdp=2, tensor=4, for training and rollouts alike (they share the devices).
- tensor=4 is the widest split that divides the 7B's 28 query heads and 4 KV heads (tensor=8 would leave
  attention unsplit). Training activations split by heads and MLP width, and an 8.7K-token row keeps its
  attention probabilities for the backward pass, so the widest head split keeps the largest item smallest
  (see Memory below); rollouts are tensor-parallel over the same 4 devices.
- fsdp=2 shards the remaining weight dimension in training; each micro-batch has one packed row per FSDP
  group (rows_per_micro = data * fsdp = 2).
- The engine's layout (rollout_sharding) is pure tensor parallelism: the model dimension is not sharded,
  so a decode step never all-gathers weights; its bfloat16 copy of the weights is 15.2 GB / 4 per device.

Precision: bfloat16 compute, float32 master weights, Adam moments and gradient sums (bfloat16 masters
would round away the paper's lr-1e-6 updates; the config check refuses them); bfloat16 copies for the
engine and the KL reference; truncated importance sampling (rl.loss.tis_cap 2.0) corrects the bfloat16
sampler/trainer gap. The export is bfloat16, as the checkpoint.

Memory per device (memagent_jax.run.memory_budget; tests/test_real_configs.py prints the table): masters 3.8,
Adam moments 7.6, KL reference 1.9, gradients 7.6, the layers' stacked compute copy and its gradient 3.8
(train.scan_layers) and the engine's weights 3.8 GB (28.6 GB), the KV pages 30.1 GB. The activations of one
8,704-token row would take about 83 GB per device (estimate) if every layer kept its intermediates, attention
probabilities included; `train.remat=True` (jax.checkpoint per decoder layer) brings them to ~7 GB: 65.4 GB in
total of 80.
"""

import ml_collections

from memagent_jax.run.paper_configs import paper_config

CHECKPOINT = "/path/to/Qwen2.5-7B-Instruct"  # placeholder: the HF folder of Qwen2.5-7B-Instruct


def get_config() -> ml_collections.ConfigDict:
    # KV pages: 57,344 bytes per token (bfloat16); 32,768 pages of 16 tokens = 30 GB per device: 60 sequences
    # at full length, more with prefix sharing.
    return paper_config(preset="qwen2.5-7b", checkpoint=CHECKPOINT, workdir="runs/qwen2_5_7b_gpu8",
                        mesh={"data": 1, "fsdp": 2, "tensor": 4}, num_pages=32768, max_slots=64,
                        rows_per_micro=2, batch_size=128, mini_batch_size=8)
