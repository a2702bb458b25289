"""The RL ablation: four policies from one shared warm-up, judged side by side by length.

    python -m memagent_jax.ablation --config=configs/ablation.py      (or memagent-ablation ...)

The quickstart's tiny model, tokenizer and RULER tasks (configs/quickstart.py), trained into four policies:

- no RL: the warm-ups only (copy, then retrieval with boxed answers: repeat a string, find a line by its
  content, answer in a box, half of the time in the agent's final-answer prompt with the text where the memory
  goes), what a pretrained instruct model brings; it never sees a memory-update prompt or a memory trace;
- RL only: Multi-Conv GRPO from that base, rl.steps steps (as the paper: no oracle traces);
- SFT: sft.steps steps on oracle memory traces from that base;
- SFT+GRPO: ablation.sft_rl_steps GRPO steps after that SFT.

The warm-ups run once, in {workdir}/base; each arm is a run of its own ({workdir}/rl_only, {workdir}/sft_rl)
that starts from the base's export as from a pretrained checkpoint. Then the four exports are evaluated on
the five RULER tasks at 1K-64K (eval.samples_per_cell documents each) and 256K and 1M
(ablation.long_samples_per_cell each), with keys of the evaluation half of the vocabulary. Results in
{workdir}/eval: ablation.md and ablation.json (a row per policy, mean accuracy over the tasks by length,
and the issue's goals checked), ablation.png (accuracy against length, one line per policy), table.md,
results.json and accuracy.png per task. Rerunning the same command resumes: finished arms are skipped, a
stopped one continues from its checkpoint, evaluated cells are kept.

Budget on 2 cores (measured on machine B, 2026-12-06, README "RL ablation"): copy and retrieval 6 min; RL only's
120 GRPO steps 17 min (8-25 s a step on niah_single at 256-512 tokens); SFT's 300 steps and SFT+GRPO's 30 GRPO
steps 12 min; the evaluation at 1K-64K, 4 policies x 5 tasks x 8 documents, 16 min. The 256K and 1M cells cost
the most where the memory never settles and prefix caching cannot help: the no-RL policy took 155 s for two
256K documents, so its 1M cells take ~10 minutes each, and niah_multikey's all-needle haystack reads ~10K
tokens/s. With ablation.long_samples_per_cell = 2 the whole command is estimated at ~2.5 hours;
`--config.eval.long=False` stops at 64K (under an hour), and `memagent-evaluate --lengths 256K,1M` adds long
cells for chosen policies and tasks.

The RL-only arm's first rewards (measured, temperature 1): the base without the final-answer-prompt half of the
retrieval warm-up scored 0 on all 240 rollouts of the five tasks at 256, 512 and 1,024 tokens and on 256 more at
256 tokens (group 16), greedy too: GRPO dropped every group. With it, 1/16 on niah_single at 256 tokens and 0
elsewhere; GRPO on niah_single at 256-512 tokens then rose from a mean reward of 0.017 over steps 1-10 to 0.059
over steps 11-20 and 0.054 over 21-30, 1-4 of 4 groups trained per step; at learning rate 3e-4 (the config) from
0.02 over steps 1-10 to 0.47 over steps 16-25, 4 groups trained per step from step 14 on, memories ~15-40 tokens.
Whether 120 steps carry that to the other tasks and to 1M tokens is what the evaluation measures.
"""

import pathlib
import runpy

import ml_collections

_QUICKSTART = pathlib.Path(__file__).resolve().with_name("quickstart.py")


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(str(_QUICKSTART))["get_config"]()
    config.workdir = "runs/ablation"
    # The base: the quickstart's copy and retrieval warm-ups (300 steps each; retrieval on the four needle tasks
    # and variable tracking without RULER's worked example, short documents, evidence lines then the boxed
    # answer). No phase trains the agent's memory-update prompt before the arms.
    config.copy.steps = 300
    config.retrieval.steps = 300
    # Half of each retrieval batch in the agent's final-answer prompt: the question, the short document where the
    # memory goes, the boxed answer (answering from a text in a box, as an instruct model does; no memory-update
    # target). Without it the base had never seen the agent's prompts: reward 0 on every rollout at 256-1,024
    # tokens, greedy too, and GRPO never updated (every group uniform).
    config.retrieval.answer_prompt_fraction = 0.5
    config.sft.steps = 300  # the SFT arm (oracle memory traces, documents of 512-4,096 tokens)
    config.rl.steps = 120  # the RL-only arm
    # The RL-only arm's own data: its base answers ~6% of niah_single at 256 tokens and ~0 elsewhere, so its GRPO
    # starts where rewards exist: niah_single at 256-512 tokens (1-2 memory updates), 8 rollouts per document
    # and up to 2 refills for the uniform groups that dynamic sampling drops, at 3x the quickstart's GRPO learning
    # rate (at 1e-4 the reward rose from 0.02 to ~0.05 in 30 steps; at 3e-4 to 0.2-0.4 by steps 11-17). SFT+GRPO
    # keeps config.rl.
    config.ablation = ml_collections.ConfigDict({
        "sft_rl_steps": 30, "long_samples_per_cell": 2,
        "rl_only": {"tasks": ("niah_single",), "lengths": (256, 512), "group_size": 8, "max_refills": 2,
                    "optimizer": {"learning_rate": 3e-4}}})
    config.eval.update(lengths=(1024, 4096, 16384, 65536), long=True, samples_per_cell=8, batch=8)
    return config
