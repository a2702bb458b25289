"""Checkpoints run on evaluation files (`memagent_jax.evaluate --data`): resumable, with a progress bar.

Every sample of every `EvalFile` (eval_data.py) not yet in the `ResultStore` (eval_store.py) goes through
the memory agent, `batch` documents at a time, on one engine per architecture (checkpoints of the same
shape share it, as in evaluation.py). A sample is scored and appended to the store the moment all its
rollouts finish, so a stopped run loses only the samples in flight. Scores per sample (the mean over its
rollouts): sub_em, exact_match and f1 (HotpotQA/SQuAD-normalised, best over the gold answers),
string_match_all and string_match_part (RULER) on the extracted answer, and the training reward (boxed).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

from memagent_jax.agent.memory_agent import AgentConfig, AgentTask, MemoryAgent, Trajectory
from memagent_jax.agent.verify import (
    answer_reward,
    best_of,
    exact_match,
    extract_answer,
    f1_score,
    string_match_all_single,
    string_match_part_single,
    sub_em,
)
from memagent_jax.data.document import Sample
from memagent_jax.run.eval_data import EvalFile
from memagent_jax.run.eval_store import ResultStore, sample_key
from memagent_jax.run.progress import progress_bar

__all__ = ["SAMPLING", "FileEvalConfig", "Progress", "evaluate_files", "open_evaluation", "score_sample"]

# greedy: one deterministic answer per sample. paper: MemAgent's validation sampling (arXiv:2507.02259):
# temperature 1.0, top-p 0.7, 4 samples per question, scores averaged.
SAMPLING = {"greedy": {"temperature": 0.0, "top_p": 1.0, "rollouts": 1},
            "paper": {"temperature": 1.0, "top_p": 0.7, "rollouts": 4}}
SCORES = ("sub_em", "exact_match", "f1", "string_match_all", "string_match_part", "boxed")


@dataclasses.dataclass(frozen=True)
class FileEvalConfig:
    agent: AgentConfig  # sizes, chunk boundary, temperature, top_p and sampling seed
    rollouts: int = 1  # answers per sample (their scores are averaged)
    batch: int = 8  # documents run at once (the engine's decode slots hold batch * rollouts sequences)

    def __post_init__(self) -> None:
        if self.rollouts < 1 or self.batch < 1:
            raise ValueError(f"rollouts and batch must be >= 1, got {self.rollouts} and {self.batch}")

    @classmethod
    def with_sampling(cls, sampling: str, sizes: Mapping[str, Any], seed: int, batch: int) -> "FileEvalConfig":
        if sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {sorted(SAMPLING)}, got {sampling!r}")
        mode = SAMPLING[sampling]
        agent = AgentConfig(**sizes, temperature=mode["temperature"], top_p=mode["top_p"], seed=seed)
        return cls(agent, mode["rollouts"], batch)

    def settings(self) -> dict[str, Any]:
        """What changes the scores (batch does not: every request has its own seed)."""
        return {**dataclasses.asdict(self.agent), "rollouts": self.rollouts}


def score_sample(sample: Sample, trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Mean over the rollouts of every score; a rollout that failed in the engine scores 0."""
    answers = list(sample.answers)
    totals = dict.fromkeys(SCORES, 0.0)
    for trajectory in trajectories:
        if trajectory.error is not None:
            continue
        prediction = extract_answer(trajectory.answer)
        totals["sub_em"] += best_of(sub_em, prediction, answers)
        totals["exact_match"] += best_of(exact_match, prediction, answers)
        totals["f1"] += best_of(f1_score, prediction, answers)
        totals["string_match_all"] += string_match_all_single(prediction, answers)
        totals["string_match_part"] += string_match_part_single(prediction, answers)
        # The training reward: one alternative matches, or ("all" samples) every reference, in any order.
        totals["boxed"] += answer_reward(trajectory.answer, answers, sample.answer_mode)
    return {name: value / len(trajectories) for name, value in totals.items()}


class Progress:
    """A bar of samples done (memagent_jax.run.progress, on stderr) with document tokens read, tokens/s and an ETA.

    The ETA turns the characters still to read into tokens with the ratio seen so far (before the first
    sample ends, the ratio measured on a piece of the first document): samples differ in length, so tqdm's
    own per-sample estimate is left off the line."""

    # tqdm's default line without its remaining-time estimate; the postfix carries ours.
    BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar:24}| {n_fmt}/{total_fmt} samples [{elapsed}{postfix}]"

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream  # None: stderr, looked up when a bar starts
        self.tokens = 0  # document tokens read in this run (every rollout reads the same chunk once)
        self._bar: Any = None

    def start(self, name: str, samples: int, chars: int, tokens_per_char: float = 0.25) -> None:
        self.close()
        self.total, self.done, self.chars_left = samples, 0, chars
        self.tokens_per_char = tokens_per_char
        self.done_chars = self.done_tokens = 0
        self._tokens_at_start = self.tokens
        self.started = self._shown = time.perf_counter()
        self._bar = progress_bar(samples, f"[{name}]", unit="sample", stream=self.stream,
                                 bar_format=self.BAR_FORMAT)

    def read(self, n: int) -> None:
        self.tokens += n

    def sample_done(self, chars: int, tokens: int) -> None:
        self.done, self.chars_left = self.done + 1, self.chars_left - chars
        self.done_chars, self.done_tokens = self.done_chars + chars, self.done_tokens + tokens
        self._bar.set_postfix_str(self._postfix(), refresh=False)
        self._bar.update(1)
        if self.done == self.total:
            self.close()

    def show(self) -> None:
        """Redraws the tokens read so far between samples (as often as the bar itself redraws)."""
        now = time.perf_counter()
        if self._bar is None or now - self._shown < self._bar.mininterval:
            return
        self._shown = now
        self._bar.set_postfix_str(self._postfix(), refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _postfix(self) -> str:
        now = time.perf_counter()
        read = self.tokens - self._tokens_at_start
        rate = read / (now - self.started) if now > self.started else 0.0
        per_char = self.done_tokens / self.done_chars if self.done_chars else self.tokens_per_char
        left = max(0.0, self.chars_left * per_char - (read - self.done_tokens))
        eta = _clock(left / rate) if rate > 0 else "?"
        return f"{read:,} doc tokens, {rate:,.0f} tok/s, ETA {eta}"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def open_evaluation(patterns: Sequence[str], cfg: FileEvalConfig, out: str | os.PathLike,
                    tokenizers: Iterable[Any], *, on_bad_record: str = "raise", metric: str = "auto",
                    max_records: int = 0) -> tuple[list[EvalFile], ResultStore]:
    """Everything checked before a model loads: the files and their records, every question against each
    checkpoint's tokenizer, and the results store in `out` (same settings or a clear refusal)."""
    from memagent_jax.run.eval_data import check_questions, open_eval_files

    files = open_eval_files(patterns, on_bad_record, metric, max_records)
    for tokenizer in tokenizers:
        check_questions(files, tokenizer, cfg.agent.max_question_tokens)
    return files, ResultStore(pathlib.Path(out) / "samples.jsonl", cfg.settings())


def evaluate_files(named: Mapping[str, str | os.PathLike], files: Sequence[EvalFile], cfg: FileEvalConfig,
                   store: ResultStore, progress: Progress | None = None) -> dict[str, Any]:
    """Runs every checkpoint on every kept record of `files` not yet in `store`; returns this run's
    throughput ({"samples", "document_tokens", "seconds", "tokens_per_s"}, compilation included)."""
    from memagent_jax.agent.engine_sizing import size_engine  # jax loads only when there is work
    from memagent_jax.run.checkpoint_agent import open_agent

    progress = progress or Progress()
    engine, samples_run, started = None, 0, time.perf_counter()
    tokens_before = progress.tokens
    for name, checkpoint in named.items():
        todo = [(f, position) for f in files for position in range(len(f.keep))
                if sample_key(name, f.path, f.keep[position]) not in store]
        if not todo:
            continue
        agent = open_agent(pathlib.Path(checkpoint), cfg.agent,
                           lambda prompts: size_engine(prompts, cfg.agent, cfg.batch * cfg.rollouts), engine)
        engine = agent.engine
        # Tokens per character differ by tokenizer and text (a synthetic-corpus tokenizer on HotpotQA gives
        # twice Qwen's): measured on a piece of the first document, so the first ETA is already fair.
        piece = todo[0][0].sample(todo[0][1]).document.text()[:16_384]
        ratio = len(agent.tokenizer.encode(piece)) / len(piece) if piece else 0.25
        progress.start(name, len(todo), sum(f.chars[position] for f, position in todo), ratio)
        for batch in _batches(todo, cfg.batch):
            _run_batch(name, agent, batch, cfg, store, progress)
        samples_run += len(todo)
    progress.close()
    seconds = time.perf_counter() - started
    tokens = progress.tokens - tokens_before
    return {"samples": samples_run, "document_tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds if samples_run and seconds > 0 else 0.0}


def _run_batch(name: str, agent: MemoryAgent, batch: Sequence[tuple[EvalFile, int]], cfg: FileEvalConfig,
               store: ResultStore, progress: Progress) -> None:
    samples = [f.sample(position) for f, position in batch]
    read = [0] * len(batch)

    def counted(i: int, pieces: Iterable[list[int]]) -> Iterator[list[int]]:
        for piece in pieces:
            read[i] += len(piece)
            progress.read(len(piece))
            yield piece

    tokenizer, chunk = agent.tokenizer, cfg.agent.chunk_size
    # The sample id seeds each rollout's sampling: the data file and record, so a resumed run draws the same.
    ids = {(str(f.path.resolve()), f.keep[position]): i for i, (f, position) in enumerate(batch)}
    tasks = [AgentTask(sample_id, samples[i].question,
                       lambda i=i: counted(i, samples[i].document.iter_tokens(tokenizer, chunk)),
                       answers=tuple(samples[i].answers)) for sample_id, i in ids.items()]
    finished: dict[int, list[Trajectory]] = {i: [] for i in range(len(batch))}
    stops = set(tokenizer.stop_ids)

    def on_finish(trajectory: Trajectory) -> None:
        i = ids[trajectory.sample_id]
        finished[i].append(trajectory)
        if len(finished[i]) < cfg.rollouts:
            return
        f, position = batch[i]
        rollouts = sorted(finished[i], key=lambda t: t.rollout)
        updates = [sum(t not in stops for t in c.response) for r in rollouts for c in r.conversations
                   if c.kind == "memory"]
        store.add({"checkpoint": name, "file": str(f.path), "record": f.keep[position],
                   "index": samples[i].meta.get("index"), "bucket": list(f.buckets[position]), "metric": f.metric,
                   "scores": score_sample(samples[i], rollouts),
                   "errors": sum(r.error is not None for r in rollouts),
                   "predictions": [extract_answer(r.answer) for r in rollouts],
                   "answers": list(samples[i].answers), "document_tokens": read[i],
                   "chunks": sum(r.num_chunks for r in rollouts) / len(rollouts),
                   "memory_tokens": sum(updates) / len(updates) if updates else 0.0})
        progress.sample_done(f.chars[position], read[i])

    agent.run(tasks, group_size=cfg.rollouts, on_progress=lambda trajectory, chunks: progress.show(),
              keep_prompts=False, on_finish=on_finish)
