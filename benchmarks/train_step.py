"""Training-step throughput: our jitted packed update against a PyTorch/transformers step, side by side.

One process, one random Qwen2 checkpoint written by transformers and read by both sides. The workload is
a MemAgent-shaped mini-batch: `--conversations` sequences whose prompts are 40-100% of `--prompt-len`
tokens and responses 10-100% of `--response-len` (memory updates and answers), random token ids. Both
sides do the same work per step: forward, loss on response tokens only (token-mean cross-entropy),
backward, global-norm clip 1.0 and an AdamW update, float32.
  * ours:  `Policy.train` (SFT objective): conversations packed first-fit into rows of `--row-len` tokens
           with segment ids, micro-batches of `--rows-per-micro` rows accumulated in one jitted step.
  * torch: transformers Qwen2ForCausalLM, one row per conversation right-padded to the longest one in its
           micro-batch (the usual padded batch; transformers' packed attention needs flash-attention,
           which has no CPU kernel), micro-batches of `--torch-micro` rows with gradient accumulation,
           torch.optim.AdamW; 2 torch threads (the machine's cores).
Reported: step time (median of --repeats after a warm-up step that compiles), real (non-padding) tokens
per second and the padding share of each. Before timing, both sides' token-mean losses on the batch must
agree (the run aborts if not).

    python benchmarks/train_step.py [--preset tiny] [--layers N] [--conversations 64] [--no-scan]
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_vs_peers import load_hf_model, model_shape, write_checkpoint  # noqa: E402
from memagent_jax.model.hf import load_hf_checkpoint  # noqa: E402
from memagent_jax.model.sharding import DEFAULT_RULES, make_mesh  # noqa: E402
from memagent_jax.rl.optimizer import OptimizerConfig  # noqa: E402
from memagent_jax.rl.packing import TrainSequence, pack  # noqa: E402
from memagent_jax.rl.policy import BatchShape, Policy  # noqa: E402
from memagent_jax.rl.update import UpdateConfig  # noqa: E402

LEARNING_RATE = 1e-5


def conversations(rng: np.random.Generator, count: int, prompt_len: int, response_len: int,
                  vocab: int) -> list[TrainSequence]:
    out = []
    for _ in range(count):
        p = int(rng.integers(int(0.4 * prompt_len), prompt_len + 1))
        r = int(rng.integers(max(1, int(0.1 * response_len)), response_len + 1))
        out.append(TrainSequence(list(map(int, rng.integers(1, vocab, p + r))), p))
    return out


class TorchStep:
    """Padded micro-batches, gradient accumulation over them, clip, AdamW: one mini-batch update."""

    def __init__(self, model, sequences: list[TrainSequence], micro: int):
        import torch

        self.torch, self.model = torch, model.train()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
        self.batches = []
        self.padded = 0
        targets_total = sum(len(s.tokens) - s.prompt_len for s in sequences)
        for start in range(0, len(sequences), micro):
            group = sequences[start : start + micro]
            width = max(len(s.tokens) for s in group)
            ids = torch.zeros((len(group), width), dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            labels = torch.full((len(group), width), -100, dtype=torch.long)
            for row, seq in enumerate(group):
                n = len(seq.tokens)
                ids[row, :n] = torch.tensor(seq.tokens)
                mask[row, :n] = 1
                labels[row, seq.prompt_len : n] = torch.tensor(seq.tokens[seq.prompt_len :])
            self.batches.append((ids, mask, labels))
            self.padded += len(group) * width
        self.targets_total = targets_total

    def loss_terms(self, ids, mask, labels):
        logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        shifted = labels[:, 1:]
        return self.torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1),
                                                      ignore_index=-100, reduction="sum")

    def mean_loss(self) -> float:
        with self.torch.no_grad():
            return float(sum(self.loss_terms(*b) for b in self.batches)) / self.targets_total

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        for batch in self.batches:
            (self.loss_terms(*batch) / self.targets_total).backward()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--conversations", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=640)
    parser.add_argument("--response-len", type=int, default=96)
    parser.add_argument("--row-len", type=int, default=1024)
    parser.add_argument("--rows-per-micro", type=int, default=4)
    parser.add_argument("--torch-micro", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-scan", dest="scan", action="store_false",
                        help="ours with the decoder layers unrolled instead of scanned (train.scan_layers)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    cfg = model_shape(args.preset, args.layers)
    rng = np.random.default_rng(0)
    sequences = conversations(rng, args.conversations, args.prompt_len, args.response_len, cfg.vocab_size)
    real = sum(len(s.tokens) - 1 for s in sequences)
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(cfg, Path(tmp), seed=0)
        model, _ = load_hf_checkpoint(tmp)
        hf = load_hf_model(Path(tmp))
    mesh = make_mesh({"fsdp": 1}, jax.devices()[:1])
    opt = OptimizerConfig(learning_rate=LEARNING_RATE, warmup_steps=0, weight_decay=0.0, grad_clip=1.0)
    update = UpdateConfig(objective="sft", max_segments=32, scan_layers=args.scan)
    policy = Policy(model, mesh, DEFAULT_RULES, opt, update,
                    BatchShape(row_len=args.row_len, rows_per_micro=args.rows_per_micro))
    torch_step = TorchStep(hf, sequences, args.torch_micro)
    _, stats = pack(sequences, args.row_len, 32, args.rows_per_micro)

    # Same model, same batch: the losses before any update must agree.
    torch_loss = torch_step.mean_loss()
    ours_first = policy.train([sequences])  # warm-up: compiles; its nll is the pre-update loss
    if abs(ours_first["nll"] - torch_loss) > 1e-3 * max(1.0, abs(torch_loss)):
        raise SystemExit(f"losses disagree: ours {ours_first['nll']:.6f}, torch {torch_loss:.6f}")
    torch_step()  # warm-up
    ours_times, torch_times = [], []
    for _ in range(args.repeats):  # round robin, so machine load hits both alike
        ours_times += timed(lambda: jax.block_until_ready(policy.train([sequences])), 1)
        torch_times += timed(torch_step, 1)

    print(f"model {args.preset} layers={cfg.num_layers} scan_layers={args.scan} hidden={cfg.hidden_size} "
          f"vocab={cfg.vocab_size} "
          f"params={policy.num_params / 1e6:.1f}M; {len(sequences)} conversations, {real} real tokens; "
          f"loss before update: ours {ours_first['nll']:.5f}, torch {torch_loss:.5f}")
    print(f"jax {jax.__version__}, torch {torch.__version__}, devices {jax.devices()}")
    print("| implementation | layout | padding share | step s (median, best) | real tokens/s |")
    print("|---|---|---|---|---|")
    for name, layout, padding, times in (
        ("ours (jit, packed)", f"{stats.rows} rows x {args.row_len}, micro {args.rows_per_micro}",
         stats.padding_fraction, ours_times),
        ("transformers + torch", f"padded rows, micro {args.torch_micro}", 1 - real / torch_step.padded,
         torch_times),
    ):
        median = statistics.median(times)
        print(f"| {name} | {layout} | {padding:.1%} | {median:.2f}, {min(times):.2f} | {real / median:,.0f} |")
    ratio = statistics.median(torch_times) / statistics.median(ours_times)
    print(f"ours / torch step-time ratio (median): {ratio:.2f}x")


if __name__ == "__main__":
    main()
