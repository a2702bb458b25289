"""Continuous batching over a paged KV cache.

Requests wait in a queue; a request is admitted when a decode slot is free and its prompt's pages can be
allocated (full pages equal to an earlier prompt's are shared, not recomputed). Admitted prompts are
prefilled in chunks, several sequences per call; then each sequence decodes in its slot until it stops,
and its slot and pages go to the next request at once. When pages run out mid-decode the newest sequence
is preempted (its pages released) and later recomputed from its prompt plus what it already generated.
"""

from __future__ import annotations

import collections
import dataclasses
import numbers
from typing import Hashable, Iterable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from memagent_jax.engine.kv_cache import NULL_PAGE, KVCache, PagePool, init_kv_cache
from memagent_jax.engine.requests import Completion, EngineConfig, Request
from memagent_jax.engine.sampling import pack_slot_sampling, sample_tokens
from memagent_jax.engine.steps import DecodeBatch, PrefillBatch, make_copy_page_fn, make_decode_fn, make_prefill_fn
from memagent_jax.model.transformer import Transformer


@dataclasses.dataclass
class _Sequence:
    request: Request
    tokens: list[int]  # prompt + generated so far
    prompt_len: int
    slot: int
    pages: list[int] = dataclasses.field(default_factory=list)
    shared_pages: int = 0  # leading pages reused from the prefix index (must be ready before prefill)
    computed: int = 0  # tokens whose KV is in the cache
    generated: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    cached_prompt_tokens: int = 0
    preemptions: int = 0
    admitted_at: int = 0

    @property
    def in_prefill(self) -> bool:
        return self.computed < len(self.tokens) - (1 if self.generated_in_slot else 0)

    # After prefill the newest token (sampled, not yet computed) is the one decode feeds in.
    generated_in_slot: bool = False


# The fewest rows a decode block computes: fewer compiled variants, and on accelerators a decode step of
# 16 rows costs what one of 1 row does (it reads the same weights).
DECODE_MIN_ROWS = 16


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _table_width(pages: int, limit: int) -> int:
    """Page-table columns for a call: the smallest of 2^k or 3 * 2^(k-1) that holds `pages`.

    Attention reads every column, so a tight width saves work, while the two bucket shapes per octave keep
    the number of compiled variants logarithmic in the longest sequence.
    """
    width = max(4, _next_power_of_two(pages))
    if width >= 8 and pages <= width * 3 // 4:
        width = width * 3 // 4
    return min(width, limit)


@dataclasses.dataclass
class _PromptRecord:
    """A prefilled prompt kept for identical prompts that arrive later: its pages (held) and the logits
    after its last token, from which a newcomer samples its first token without any prefill."""

    pages: list[int]
    logits: np.ndarray


@dataclasses.dataclass
class EngineStats:
    compilations: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    prefill_tokens: int = 0  # prompt tokens computed
    cached_tokens: int = 0  # prompt tokens reused from shared pages
    decode_tokens: int = 0
    preemptions: int = 0
    prefill_calls: int = 0
    decode_calls: int = 0
    forked: int = 0  # requests that started from an identical prompt's pages and logits
    weight_updates: int = 0


class Engine:
    """Generates completions for token-id requests with a model on a paged KV cache."""

    def __init__(self, model: Transformer, config: EngineConfig = EngineConfig()):  # noqa: B008 (frozen: safe to share)
        self.config = config
        self.model_config = model.cfg
        if config.max_seq_len > model.cfg.max_position_embeddings:
            raise ValueError(f"max_seq_len={config.max_seq_len} exceeds the model's "
                             f"max_position_embeddings={model.cfg.max_position_embeddings}")
        self._graphdef, self._state = nnx.split(model)
        self._shardings = jax.tree.map(lambda x: x.sharding, self._state)
        self.pool = PagePool(config.num_pages, config.page_size)
        # The cache lives where the steps will return it (replicated over the weights' mesh); a cache on
        # another sharding would make the second call of every step compile again.
        weights = jax.tree.leaves(self._state)[0].sharding
        cache_sharding = NamedSharding(weights.mesh, PartitionSpec()) if isinstance(weights, NamedSharding) else None
        self.cache: KVCache = init_kv_cache(model.cfg, config.num_pages, config.page_size, cache_sharding)
        self.stats = EngineStats()
        self._prefill = make_prefill_fn(self._graphdef, self._count_trace)
        self._copy_page = make_copy_page_fn(self._count_trace)
        self._sample = jax.jit(sample_tokens)
        self._records: collections.OrderedDict[tuple[int, ...], _PromptRecord] = collections.OrderedDict()
        self._prefilling: collections.Counter = collections.Counter()  # prompt -> sequences prefilling it
        self._decode = make_decode_fn(self._graphdef, config.decode_steps, config.attention_backend,
                                      self._count_trace)
        self._waiting: collections.deque[_Sequence | Request] = collections.deque()
        self._running: dict[int, _Sequence] = {}  # slot -> sequence
        self._free_slots = list(range(config.max_slots))
        self._finished: list[Completion] = []
        self._admissions = 0

    def _count_trace(self, name: str) -> None:
        self.stats.compilations[name] += 1  # runs at trace time only: one count per compilation

    # -- public API -------------------------------------------------------------------------------

    @property
    def weights(self) -> nnx.State:
        """The parameters the engine generates with (in its rollout layout)."""
        return self._state

    def update_weights(self, state: nnx.State, owned: bool = False) -> None:
        """New parameters (e.g. after a training step) for the next requests; same structure and shapes.

        The arrays are moved device-to-device onto the engine's own (rollout) shardings, which may differ
        from the trainer's, and every cached prompt is dropped: its KV was computed with the old weights.
        owned=True: `state` is a fresh copy nobody else uses (e.g. from rollout_layout), so arrays already on
        the engine's shardings are taken as they are instead of copied again.
        Must be called between batches, with no request in flight."""
        if self._waiting or self._running:
            raise RuntimeError("update_weights needs an idle engine: requests are still waiting or running")
        if jax.tree.structure(state) != jax.tree.structure(self._state):
            raise ValueError("update_weights: the new state's structure differs from the engine's model")
        for new, old in zip(jax.tree.leaves(state), jax.tree.leaves(self._state)):
            if new.shape != old.shape:
                raise ValueError(f"update_weights: shape {new.shape} where the engine has {old.shape}")
        # Cast to the engine's dtypes too (e.g. float32 training copy, bfloat16 rollout copy): a new dtype
        # would recompile every step.
        state = jax.tree.map(lambda new, old: new.astype(old.dtype) if new.dtype != old.dtype else new,
                             state, self._state)
        # Otherwise a copy even when the layouts match: the trainer donates its buffers to the next update.
        self._state = jax.device_put(state, self._shardings, may_alias=True if owned else False)
        while self._records:
            _, record = self._records.popitem(last=False)
            self.pool.release(record.pages)
        self.pool.forget_prefixes()
        self.stats.weight_updates += 1

    def submit(self, request: Request) -> None:
        """Queues a request; an invalid one completes at once with finish_reason "error"."""
        error = self._validate(request)
        if error is not None:
            self._finished.append(Completion(request.request_id, [], [], "error",
                                             prompt_len=len(request.prompt), error=error))
            return
        self._waiting.append(request)

    def has_work(self) -> bool:
        return bool(self._waiting or self._running or self._finished)

    def step(self) -> list[Completion]:
        """One scheduling round: admit, prefill one chunk per prefilling sequence, decode one block."""
        self._admit()
        self._run_prefill()
        self._run_decode()
        done, self._finished = self._finished, []
        return done

    def generate(self, requests: Iterable[Request]) -> list[Completion]:
        """Runs requests to completion; returns completions in request order."""
        requests = list(requests)
        ids = [r.request_id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("request ids must be unique")
        for request in requests:
            self.submit(request)
        results: dict[Hashable, Completion] = {}
        while len(results) < len(requests):
            if not self.has_work():
                raise RuntimeError("engine stalled with unfinished requests")
            for completion in self.step():
                results[completion.request_id] = completion
        return [results[i] for i in ids]

    # -- validation -------------------------------------------------------------------------------

    def _validate(self, request: Request) -> str | None:
        cfg = self.config
        prompt = request.prompt
        if len(prompt) == 0:
            return "empty prompt"
        if len(prompt) > cfg.max_prompt_len:
            return f"prompt of {len(prompt)} tokens exceeds max_prompt_len={cfg.max_prompt_len}"
        if len(prompt) >= cfg.max_seq_len:
            return f"prompt of {len(prompt)} tokens leaves no room to generate (max_seq_len={cfg.max_seq_len})"
        vocab = self.model_config.vocab_size
        # int() would truncate 1.5 and parse "7", or raise out of submit for None: refuse them here.
        not_ints = [t for t in prompt if isinstance(t, bool) or not isinstance(t, numbers.Integral)]
        if not_ints:
            return f"prompt token ids must be ints, got {not_ints[:5]!r}"
        bad = [t for t in prompt if not 0 <= int(t) < vocab]
        if bad:
            return f"prompt token ids out of range [0, {vocab}): {bad[:5]}"
        try:
            request.params.validate(vocab)
        except ValueError as err:
            return str(err)
        if len(request.params.stop_ids) > cfg.max_stop_ids:
            return f"{len(request.params.stop_ids)} stop ids exceed max_stop_ids={cfg.max_stop_ids}"
        need = -(-(len(prompt) + 1) // cfg.page_size)
        if need > cfg.num_pages - 1:
            return f"prompt needs {need} pages but the cache has {cfg.num_pages - 1}"
        # A sequence that outgrows the whole cache would preempt itself and be re-admitted forever.
        longest = min(len(prompt) + request.params.max_new_tokens, cfg.max_seq_len)
        need = max(need, (longest - 2) // cfg.page_size + 1)  # the last generated token is never written
        if need > cfg.num_pages - 1:
            return (f"prompt of {len(prompt)} tokens with max_new_tokens={request.params.max_new_tokens} needs up "
                    f"to {need} pages but the cache has {cfg.num_pages - 1}")
        return None

    # -- admission --------------------------------------------------------------------------------

    def _admit(self) -> None:
        forked: list[tuple[_Sequence, np.ndarray]] = []
        try:
            self._admit_into(forked)
        finally:
            self._sample_first_tokens(forked)

    def _admit_into(self, forked: list[tuple[_Sequence, np.ndarray]]) -> None:
        index = 0
        while index < len(self._waiting) and self._free_slots:
            item = self._waiting[index]
            if isinstance(item, Request) and self.config.prefix_caching:
                key = tuple(item.prompt)
                if key in self._records:
                    if not self._fork(item, key, forked):
                        return  # no pages for it yet: wait, keeping the queue's order
                    del self._waiting[index]
                    continue
                if self._prefilling[key]:
                    index += 1  # an identical prompt is being prefilled: fork from it next round
                    continue
            seq = item if isinstance(item, _Sequence) else _Sequence(item, list(item.prompt), len(item.prompt), -1)
            if not self._allocate_prompt(seq):
                return  # first in line waits for pages; keep order (no overtaking)
            del self._waiting[index]
            if self.config.prefix_caching and not seq.generated:
                self._prefilling[tuple(seq.tokens)] += 1
            self._start(seq)

    def _start(self, seq: _Sequence) -> None:
        seq.slot = self._free_slots.pop(0)
        seq.admitted_at = self._admissions
        self._admissions += 1
        self._running[seq.slot] = seq

    def _allocate(self, count: int) -> list[int] | None:
        """Fresh pages; kept prompt records give theirs back before anyone waits or is preempted."""
        pages = self.pool.allocate(count)
        while pages is None and self._records:
            _, record = self._records.popitem(last=False)
            self.pool.release(record.pages)
            pages = self.pool.allocate(count)
        return pages

    def _fork(self, request: Request, key: tuple[int, ...], forked: list[tuple[_Sequence, np.ndarray]]) -> bool:
        """Starts a request whose prompt equals a recorded one: shares its full pages, copies its last
        partial page, and samples the first token from its logits, so nothing is prefilled again."""
        size = self.config.page_size
        record = self._records[key]
        self._records.move_to_end(key)
        full = len(key) // size
        shared = record.pages[:full]
        self.pool.retain(shared)
        fresh = self._allocate(-(-(len(key) + 1) // size) - full)
        if fresh is None:
            self.pool.release(shared)
            return False
        if len(key) % size:
            self.cache = self._copy_page(self.cache, np.int32(record.pages[full]), np.int32(fresh[0]))
        seq = _Sequence(request, list(key), len(key), -1, pages=shared + fresh, computed=len(key),
                        cached_prompt_tokens=len(key))
        self.stats.cached_tokens += len(key)
        self.stats.forked += 1
        self._start(seq)
        forked.append((seq, record.logits))
        return True

    def _sample_first_tokens(self, forked: list[tuple[_Sequence, np.ndarray]]) -> None:
        """First tokens of forked sequences, sampled together in one call of [2^k, vocab] rows (a few
        shapes, each compiled once; a full [slots, vocab] block cost ~100 ms at a 152K vocabulary on CPU)."""
        if not forked:
            return
        rows = min(self.config.max_slots, _next_power_of_two(len(forked)))
        logits = np.zeros((rows, forked[0][1].shape[-1]), np.float32)
        for row, (_, row_logits) in enumerate(forked):
            logits[row] = row_logits
        params = [seq.request.params for seq, _ in forked] + [None] * (rows - len(forked))
        tokens, logprobs = self._sample(logits, pack_slot_sampling(params, rows), np.zeros(rows, np.int32))
        tokens, logprobs = np.asarray(tokens), np.asarray(logprobs)
        for row, (seq, _) in enumerate(forked):
            self._append(seq, int(tokens[row]), float(logprobs[row]))

    def _record_prompt(self, seq: _Sequence, logits: np.ndarray) -> None:
        key = tuple(seq.tokens[: seq.prompt_len])
        self._prefilling[key] -= 1
        if self._prefilling[key] <= 0:
            del self._prefilling[key]
        if key in self._records:
            return
        pages = seq.pages[: -(-seq.prompt_len // self.config.page_size)]
        self.pool.retain(pages)
        self._records[key] = _PromptRecord(pages, logits)
        while len(self._records) > self.config.max_slots:  # a small recent window is all that pays off
            _, old = self._records.popitem(last=False)
            self.pool.release(old.pages)

    def _allocate_prompt(self, seq: _Sequence) -> bool:
        size = self.config.page_size
        tokens = seq.tokens
        shared: list[int] = []
        parents: list[int] = []
        if self.config.prefix_caching:
            # At least the last token is computed, so its logits exist to sample from.
            shared, parents = self.pool.match_prefix(tokens, len(tokens) - 1)
        # Pages for the prompt plus the first generated token's position.
        total = -(-(len(tokens) + 1) // size)
        # Retain the matched pages first: allocating may otherwise evict one of them.
        self.pool.retain(shared)
        fresh = self._allocate(total - len(shared)) if total > len(shared) else []
        if fresh is None:
            self.pool.release(shared)
            return False
        seq.pages = shared + fresh
        seq.shared_pages = len(shared)
        seq.computed = len(shared) * size
        seq.generated_in_slot = False
        reused = len(shared) * size
        seq.cached_prompt_tokens += reused if not seq.generated else 0
        self.stats.cached_tokens += reused
        if self.config.prefix_caching:
            parent = parents[-1] if parents else 0
            for index in range(len(shared), len(tokens) // size):
                parent = self.pool.register(seq.pages[index], parent, tokens[index * size:(index + 1) * size])
        return True

    # -- prefill ----------------------------------------------------------------------------------

    def _page_table(self, seqs: Sequence[_Sequence | None], rows: int, needed_pages: int) -> np.ndarray:
        """[rows, width] page ids; only the first `needed_pages` of each sequence are ever read."""
        width = _table_width(needed_pages, self.config.max_pages_per_seq)
        table = np.full((rows, width), NULL_PAGE, np.int32)
        for row, seq in enumerate(seqs):
            if seq is not None:
                used = seq.pages[:width]
                table[row, : len(used)] = used
        return table

    def _run_prefill(self) -> None:
        cfg = self.config
        ready = [
            s for s in sorted(self._running.values(), key=lambda s: s.admitted_at)
            if s.in_prefill and all(self.pool.is_ready(p) for p in s.pages[: s.shared_pages])
        ]
        # Sequences starting from position 0 go together: their attention reads no pages back.
        fresh = [s for s in ready if s.computed == 0]
        rest = [s for s in ready if s.computed > 0]
        for kind, seqs in ((True, fresh), (False, rest)):
            while seqs:
                group, seqs = seqs[: cfg.prefill_batch], seqs[cfg.prefill_batch:]
                self._prefill_group(group, kind)

    def _prefill_group(self, group: list[_Sequence], fresh: bool) -> None:
        cfg = self.config
        pieces = [(s, s.computed, min(len(s.tokens), s.computed + cfg.prefill_chunk)) for s in group]
        width = min(cfg.prefill_chunk, max(cfg.page_size, _next_power_of_two(max(e - b for _, b, e in pieces))))
        rows = min(cfg.prefill_batch, _next_power_of_two(len(group)))
        tokens = np.zeros((rows, width), np.int32)
        positions = np.zeros((rows, width), np.int32)
        valid = np.zeros((rows, width), bool)
        last = np.zeros(rows, np.int32)
        step = np.zeros(rows, np.int32)
        for row, (seq, begin, end) in enumerate(pieces):
            n = end - begin
            tokens[row, :n] = seq.tokens[begin:end]
            positions[row, :n] = np.arange(begin, end)
            valid[row, :n] = True
            last[row] = n - 1
            step[row] = len(seq.generated)
        params = [s.request.params for s, _, _ in pieces] + [None] * (rows - len(pieces))
        needed = -(-max(end for _, _, end in pieces) // cfg.page_size)
        table = self._page_table([p[0] for p in pieces], rows, needed)
        batch = PrefillBatch(tokens, positions, valid, table, last, pack_slot_sampling(params, rows), step)
        sampled, logprobs, logits, self.cache = self._prefill(self._state, self.cache, batch, fresh)
        self.stats.prefill_calls += 1
        sampled, logprobs = np.asarray(sampled), np.asarray(logprobs)
        for row, (seq, begin, end) in enumerate(pieces):
            seq.computed = end
            self.stats.prefill_tokens += end - begin
            self.pool.mark_ready(seq.pages[: end // cfg.page_size])
            if end == len(seq.tokens):
                if cfg.prefix_caching and not seq.generated:
                    self._record_prompt(seq, np.asarray(logits[row]))
                self._append(seq, int(sampled[row]), float(logprobs[row]))

    # -- decode -----------------------------------------------------------------------------------

    def _append(self, seq: _Sequence, token: int, logprob: float) -> None:
        """Records a generated token; finishes the sequence when it stops or reaches its limit."""
        seq.generated.append(token)
        seq.logprobs.append(logprob)
        seq.tokens.append(token)
        seq.generated_in_slot = True
        params = seq.request.params
        if token in params.stop_ids:
            self._finish(seq, "stop")
        elif len(seq.generated) >= params.max_new_tokens or len(seq.tokens) >= self.config.max_seq_len:
            self._finish(seq, "length")

    def _finish(self, seq: _Sequence, reason: str) -> None:
        self.pool.release(seq.pages)
        seq.pages = []
        del self._running[seq.slot]
        self._free_slots.append(seq.slot)
        self._free_slots.sort()
        self._finished.append(Completion(
            seq.request.request_id, seq.generated, seq.logprobs, reason, prompt_len=seq.prompt_len,
            cached_prompt_tokens=seq.cached_prompt_tokens, preemptions=seq.preemptions,
        ))

    def _budget(self, seq: _Sequence) -> int:
        left = seq.request.params.max_new_tokens - len(seq.generated)
        room = self.config.max_seq_len - len(seq.tokens)
        return max(0, min(self.config.decode_steps, left, room))

    def _reserve_decode_pages(self, decoding: list[_Sequence]) -> list[_Sequence]:
        """Makes sure every decoding sequence has pages for the positions this block writes; preempts
        the newest sequences when pages run out. Returns the sequences that stay."""
        size = self.config.page_size
        keep = sorted(decoding, key=lambda s: s.admitted_at)
        index = 0
        while index < len(keep):
            seq = keep[index]
            last_position = len(seq.tokens) - 1 + self._budget(seq) - 1
            need = last_position // size + 1 - len(seq.pages)
            if need <= 0:
                index += 1
                continue
            pages = self._allocate(need)
            if pages is not None:
                seq.pages.extend(pages)
                index += 1
                continue
            victim = keep.pop()  # the newest decoding sequence gives its pages back
            self._preempt(victim)
        return keep

    def _preempt(self, seq: _Sequence) -> None:
        self.pool.release(seq.pages)
        seq.pages = []
        seq.computed = 0
        seq.preemptions += 1
        self.stats.preemptions += 1
        del self._running[seq.slot]
        self._free_slots.append(seq.slot)
        self._free_slots.sort()
        self._waiting.appendleft(seq)  # recomputed first when pages free up

    def _run_decode(self) -> None:
        cfg = self.config
        decoding = [s for s in self._running.values() if not s.in_prefill]
        if not decoding:
            return
        decoding = self._reserve_decode_pages(decoding)
        if not decoding:
            return
        # Rows up to the highest busy slot, in power-of-two buckets of at least DECODE_MIN_ROWS: slots are
        # taken lowest first, so 16 sequences on a 64-slot engine compute 16 rows, not 64. (Rows are
        # independent of each other; only XLA's rounding of a matmul may differ with the row count.)
        slots = min(cfg.max_slots, max(DECODE_MIN_ROWS, _next_power_of_two(1 + max(s.slot for s in decoding))))
        by_slot: list[_Sequence | None] = [None] * slots
        for seq in decoding:
            by_slot[seq.slot] = seq
        tokens = np.zeros(slots, np.int32)
        positions = np.zeros(slots, np.int32)
        active = np.zeros(slots, bool)
        budget = np.zeros(slots, np.int32)
        stop_ids = np.full((slots, cfg.max_stop_ids), -1, np.int32)
        step = np.zeros(slots, np.int32)
        for seq in decoding:
            s = seq.slot
            tokens[s] = seq.tokens[-1]
            positions[s] = len(seq.tokens) - 1
            active[s] = True
            budget[s] = self._budget(seq)
            stops = seq.request.params.stop_ids
            stop_ids[s, : len(stops)] = stops
            step[s] = len(seq.generated)
        params = [s.request.params if s is not None else None for s in by_slot]
        needed = max(-(-int(positions[s.slot] + budget[s.slot]) // cfg.page_size) for s in decoding)
        table = self._page_table(by_slot, slots, needed)
        batch = DecodeBatch(tokens, positions, active, budget, table, stop_ids, pack_slot_sampling(params, slots),
                            step)
        out, self.cache = self._decode(self._state, self.cache, batch)
        self.stats.decode_calls += 1
        out_tokens, out_logprobs, emitted = (np.asarray(a) for a in out)
        for seq in decoding:
            s = seq.slot
            for k in range(cfg.decode_steps):
                if not emitted[k, s] or seq.slot not in self._running or self._running[seq.slot] is not seq:
                    break
                seq.computed += 1  # the token fed at this step is now in the cache
                self.stats.decode_tokens += 1
                self._append(seq, int(out_tokens[k, s]), float(out_logprobs[k, s]))
