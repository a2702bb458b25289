"""MemAgent's workflow on the rollout engine: read chunk by chunk, overwrite the memory, answer at the end.

Each (sample, rollout) is an independent state machine. Whenever one of its conversations completes, its
next prompt goes straight to the engine, so documents of different lengths never wait for each other.
The G rollouts of a sample start from the identical first prompt, which the engine prefills once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import zlib
from typing import Callable, Hashable, Iterable, Sequence

from memagent_jax.agent.chunks import ChunkCache
from memagent_jax.agent.prompts import AgentPrompts
from memagent_jax.engine.engine import Engine
from memagent_jax.engine.requests import Completion, EngineConfig, Request
from memagent_jax.engine.sampling import SamplingParams
from memagent_jax.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    chunk_size: int = 5000  # document tokens per memory update
    max_memory_tokens: int = 1024
    max_answer_tokens: int = 1024
    max_question_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    # Where chunks end: "token" cuts every chunk_size tokens (the paper); "line" ends each chunk after its
    # last line break, so no line (a needle, a fact) is split between two memory updates.
    chunk_boundary: str = "token"

    def __post_init__(self) -> None:
        for name in ("chunk_size", "max_memory_tokens", "max_answer_tokens", "max_question_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"AgentConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.chunk_boundary not in CHUNK_BOUNDARIES:
            raise ValueError(f"AgentConfig.chunk_boundary must be one of {CHUNK_BOUNDARIES}, "
                             f"got {self.chunk_boundary!r}")

    SIZE_FIELDS = ("chunk_size", "max_memory_tokens", "max_answer_tokens", "max_question_tokens")
    # What a checkpoint keeps of the agent it was trained with: the sizes and how documents were cut.
    SAVED_FIELDS = SIZE_FIELDS + ("chunk_boundary",)

    def save_sizes(self, directory: "os.PathLike | str") -> None:
        """Writes the sizes and chunk boundary a model was trained with next to its checkpoint."""
        sizes = {name: getattr(self, name) for name in self.SAVED_FIELDS}
        (pathlib.Path(directory) / AGENT_SIZES_FILE).write_text(json.dumps(sizes, indent=2) + "\n")

    def line_ends(self, tokenizer: Tokenizer) -> frozenset[int] | None:
        """The ids a chunk may end after under this config's chunk boundary (None: every chunk_size)."""
        return tokenizer.line_end_ids() if self.chunk_boundary == "line" else None


CHUNK_BOUNDARIES = ("token", "line")
AGENT_SIZES_FILE = "memagent_agent.json"


def load_sizes(directory: "os.PathLike | str") -> dict[str, int | str]:
    """The agent sizes (and chunk boundary) saved with a checkpoint ({} when it has none, e.g. a plain HF
    model; older checkpoints have no chunk_boundary)."""
    path = pathlib.Path(directory) / AGENT_SIZES_FILE
    if not path.is_file():
        return {}
    sizes = json.loads(path.read_text())
    unknown = set(sizes) - set(AgentConfig.SAVED_FIELDS)
    numbers = {k: v for k, v in sizes.items() if k in AgentConfig.SIZE_FIELDS}
    if unknown or not all(isinstance(v, int) and v > 0 for v in numbers.values()):
        raise ValueError(f"{path}: expected positive integers for {AgentConfig.SIZE_FIELDS}, got {sizes}")
    if sizes.get("chunk_boundary", "token") not in CHUNK_BOUNDARIES:
        raise ValueError(f"{path}: chunk_boundary must be one of {CHUNK_BOUNDARIES}, got {sizes['chunk_boundary']!r}")
    return sizes


@dataclasses.dataclass
class AgentTask:
    """One sample: a question and its document as a stream of token-id pieces (any sizes)."""

    sample_id: Hashable
    question: str
    document_tokens: Callable[[], Iterable[Sequence[int]]]  # called once per sample, streamed lazily
    answers: tuple[str, ...] = ()
    question_ids: Sequence[int] | None = None  # when already tokenized (the data pipeline does it)


@dataclasses.dataclass
class Conversation:
    kind: str  # "memory" or "final"
    prompt: list[int]  # empty when the agent runs with keep_prompts=False (answering, not training)
    response: list[int]
    logprobs: list[float]
    finish_reason: str
    prompt_len: int = 0


@dataclasses.dataclass
class Trajectory:
    sample_id: Hashable
    rollout: int
    conversations: list[Conversation] = dataclasses.field(default_factory=list)
    memories: list[str] = dataclasses.field(default_factory=list)  # readable memory after each chunk
    answer: str = ""
    error: str | None = None

    @property
    def num_chunks(self) -> int:
        return sum(c.kind == "memory" for c in self.conversations)


@dataclasses.dataclass
class _Rollout:
    task_index: int
    rollout: int
    trajectory: Trajectory
    memory: tuple[int, ...]
    next_chunk: int = 0
    done: bool = False


def _seed(base: int, sample_id: Hashable, rollout: int, turn: int) -> int:
    """A request's sampling seed from stable inputs only, so reruns reproduce every rollout exactly."""
    return zlib.crc32(repr((base, sample_id, rollout, turn)).encode()) & 0xFFFFFFFF


def check_fits(prompts: AgentPrompts, cfg: AgentConfig, engine_cfg: EngineConfig) -> None:
    """Raises ValueError when the longest prompt or conversation of the workflow exceeds the engine's limits."""
    longest_prompt = (prompts.memory_update.fixed_length() + cfg.max_question_tokens
                      + max(cfg.max_memory_tokens, len(prompts.initial_memory)) + cfg.chunk_size)
    if longest_prompt > engine_cfg.max_prompt_len:
        raise ValueError(
            f"a memory-update prompt can reach {longest_prompt} tokens (template, question "
            f"{cfg.max_question_tokens}, memory {cfg.max_memory_tokens}, chunk {cfg.chunk_size}) but the "
            f"engine's max_prompt_len is {engine_cfg.max_prompt_len}")
    if longest_prompt + cfg.max_memory_tokens > engine_cfg.max_seq_len:
        raise ValueError(f"prompt plus memory ({longest_prompt + cfg.max_memory_tokens} tokens) exceeds "
                         f"the engine's max_seq_len={engine_cfg.max_seq_len}")


class MemoryAgent:
    """Runs MemAgent trajectories for batches of samples with G rollouts each on one engine."""

    def __init__(self, engine: Engine, tokenizer: Tokenizer, config: AgentConfig = AgentConfig(),
                 prompts: AgentPrompts | None = None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.config = config
        self.prompts = prompts or AgentPrompts.build(tokenizer)
        check_fits(self.prompts, config, engine.config)

    def _params(self, max_tokens: int, seed: int) -> SamplingParams:
        cfg = self.config
        return SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                              max_new_tokens=max_tokens, stop_ids=tuple(self.tokenizer.stop_ids), seed=seed)

    def run(self, tasks: Sequence[AgentTask], group_size: int = 1,
            on_progress: Callable[[Trajectory, int], None] | None = None,
            keep_prompts: bool = True,
            on_finish: Callable[[Trajectory], None] | None = None) -> list[Trajectory]:
        """All trajectories, ordered by (task, rollout). `on_progress(trajectory, chunks_done)` is called
        after every memory update (for progress bars); `on_finish(trajectory)` as soon as one trajectory is
        done (answered or failed), so evaluation can save it before the rest of the batch ends. Training
        needs every conversation's prompt; answering does not, and `keep_prompts=False` keeps host memory
        flat on very long documents."""
        self._keep_prompts = keep_prompts
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        questions = [self._question_ids(task) for task in tasks]
        line_ends = self.config.line_ends(self.tokenizer)
        caches = [ChunkCache(task.document_tokens(), self.config.chunk_size, readers=group_size, line_ends=line_ends)
                  for task in tasks]
        rollouts = [
            _Rollout(t, r, Trajectory(task.sample_id, r), self.prompts.initial_memory)
            for t, task in enumerate(tasks) for r in range(group_size)
        ]
        waiting: dict[Hashable, _Rollout] = {}
        for index, state in enumerate(rollouts):
            self._submit_next(index, state, tasks, questions, caches, waiting)
        while waiting:
            completions = self.engine.step()
            if not completions and not self.engine.has_work():
                raise RuntimeError("the engine stopped with agent requests outstanding")
            for completion in completions:
                index, state = waiting.pop(completion.request_id)
                self._on_completion(state, completion, caches, on_progress)
                if not state.done:
                    self._submit_next(index, state, tasks, questions, caches, waiting)
                elif on_finish is not None:
                    on_finish(state.trajectory)
        return [state.trajectory for state in rollouts]

    def _question_ids(self, task: AgentTask) -> list[int]:
        ids = list(task.question_ids) if task.question_ids is not None else self.tokenizer.encode(task.question)
        if len(ids) > self.config.max_question_tokens:
            raise ValueError(f"sample {task.sample_id!r}: the question has {len(ids)} tokens, more than "
                             f"max_question_tokens={self.config.max_question_tokens}")
        return ids

    def _submit_next(self, index: int, state: _Rollout, tasks: Sequence[AgentTask], questions: list[list[int]],
                     caches: list[ChunkCache], waiting: dict) -> None:
        task = tasks[state.task_index]
        chunk = caches[state.task_index].get(state.next_chunk)
        turn = len(state.trajectory.conversations)
        slots = {"prompt": questions[state.task_index], "memory": state.memory}
        if chunk is not None:
            prompt = self.prompts.memory_update.assemble({**slots, "chunk": chunk})
            params = self._params(self.config.max_memory_tokens, _seed(self.config.seed, task.sample_id,
                                                                        state.rollout, turn))
        else:
            prompt = self.prompts.final_answer.assemble(slots)
            params = self._params(self.config.max_answer_tokens, _seed(self.config.seed, task.sample_id,
                                                                        state.rollout, turn))
        request_id = (index, turn)
        waiting[request_id] = (index, state)
        state.trajectory.conversations.append(Conversation(
            "memory" if chunk is not None else "final", prompt if self._keep_prompts else [], [], [], "pending",
            prompt_len=len(prompt)))
        self.engine.submit(Request(request_id, prompt, params))

    def _on_completion(self, state: _Rollout, completion: Completion, caches: list[ChunkCache],
                       on_progress: Callable[[Trajectory, int], None] | None) -> None:
        trajectory = state.trajectory
        conversation = trajectory.conversations[-1]
        conversation.response = list(completion.tokens)
        conversation.logprobs = list(completion.logprobs)
        conversation.finish_reason = completion.finish_reason
        if not completion.ok:
            trajectory.error = completion.error
            state.done = True
            caches[state.task_index].finish_reader(state.next_chunk)
            return
        content = [t for t in completion.tokens if t not in self.tokenizer.stop_ids]
        if conversation.kind == "memory":
            caches[state.task_index].advance(state.next_chunk)
            state.next_chunk += 1
            state.memory = tuple(content)
            trajectory.memories.append(self.tokenizer.decode(content))
            if on_progress is not None:
                on_progress(trajectory, state.next_chunk)
        else:
            trajectory.answer = self.tokenizer.decode(content)
            state.done = True
