"""Documents that stream piece by piece, and the sample type every data source yields.

A ``Document`` is a sequence of *pieces*: whole lines (synthetic haystacks) or whole ``Document {i}:``
paragraphs (HotpotQA-style contexts). Every boundary between two pieces comes right after a run of
newlines and right before a non-whitespace character. Documents of 10M tokens are never held whole:
``iter_text`` and ``iter_tokens`` generate pieces on the fly.

Tokenization guarantee (what ``iter_tokens`` promises the memory agent):
  the concatenation of the yielded token chunks equals ``tokenizer.encode(g)`` concatenated over the
  text groups ``g`` of ``iter_text(piece_chars)``, i.e. pieces are tokenized in groups that break only
  at piece boundaries. For tokenizers that never merge across "newline | non-space" -- our
  SentencePiece models (newline is a byte piece that never merges) and byte-level BPE with the
  Qwen2/Llama 3 pre-tokenizer regex (no pre-token contains a newline followed by a non-space) -- this
  equals ``tokenizer.encode(whole_text)``; the tests check it for both kinds on real documents.
  Chunks have exactly ``chunk_tokens`` tokens except the last, so a chunk may end mid-line.
"""

from __future__ import annotations

import abc
import bisect
import dataclasses
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol

__all__ = ["Document", "Sample", "Span", "TextDocument", "TextTokenizer", "split_pieces"]

AnswerMode = Literal["all", "any"]
DEFAULT_PIECE_CHARS = 16_384  # ~4K tokens a tokenizer call: big enough to amortise, small for memory


class TextTokenizer(Protocol):
    """The part of ``memagent_jax.tokenizer.Tokenizer`` the data code needs."""

    def encode(self, text: str, add_bos: bool = False) -> list[int]: ...


@dataclasses.dataclass(frozen=True)
class Span:
    """Answer-bearing text: ``text`` occurs inside piece number ``piece`` of the document. ``note`` is the piece
    of the answer it gives (a needle's value, a variable's name), which an ideal memory keeps (SFT's oracle
    memories, the retrieval warm-up's targets); empty: the memory keeps the text itself."""

    piece: int
    text: str
    note: str = ""

    @property
    def memory_text(self) -> str:
        return self.note or self.text


NOTE_SEPARATOR = ", "  # what Sample.reward_answer joins several answers with


def boxed_target(memory: str, sample: "Sample") -> str:
    """The answer to train: the memory as it stands when it lists exactly the sample's answers (notes in
    reading order; every answer is required, in any order), else the sample's canonical answer."""
    listed = memory.split(NOTE_SEPARATOR)
    if sample.answer_mode == "all" and len(listed) == len(sample.answers) and set(listed) == set(sample.answers):
        return memory
    return sample.reward_answer


def evidence_memory(notes: Sequence[str], noted: bool) -> str:
    """The memory that holds these evidence notes (reading order, repeats dropped): answer pieces (`noted`)
    joined as the answer joins them, so a final answer copies the memory as it stands; texts one per line."""
    return (NOTE_SEPARATOR if noted else "\n").join(dict.fromkeys(notes))


class Document(abc.ABC):
    """A lazily generated text, addressable by piece. Subclasses must be picklable and deterministic."""

    @property
    @abc.abstractmethod
    def num_pieces(self) -> int:
        """Number of pieces (lines or paragraphs)."""

    @abc.abstractmethod
    def iter_pieces(self, start: int = 0) -> Iterator[str]:
        """Pieces ``start, start+1, ...`` in order; concatenated they are the document text."""

    @property
    @abc.abstractmethod
    def approx_tokens(self) -> int:
        """Token length: exact or calibrated (see the generator), or chars/4 if no tokenizer was given."""

    @property
    def spans(self) -> tuple[Span, ...]:
        """Where the answer-bearing text sits (empty when unknown, e.g. read from a file)."""
        return ()

    def piece(self, i: int) -> str:
        if not 0 <= i < self.num_pieces:
            raise IndexError(f"piece {i} out of range [0, {self.num_pieces})")
        return next(self.iter_pieces(i))

    def iter_text(self, piece_chars: int = DEFAULT_PIECE_CHARS) -> Iterator[str]:
        """The text in groups of whole pieces of at most ``piece_chars`` characters (a single longer
        piece is yielded alone). Concatenated, the groups are the whole text."""
        group: list[str] = []
        size = 0
        for p in self.iter_pieces():
            if group and size + len(p) > piece_chars:
                yield "".join(group)
                group, size = [], 0
            group.append(p)
            size += len(p)
        if group:
            yield "".join(group)

    def iter_tokens(
        self, tokenizer: TextTokenizer, chunk_tokens: int, piece_chars: int = DEFAULT_PIECE_CHARS
    ) -> Iterator[list[int]]:
        """Token chunks of exactly ``chunk_tokens`` ids (the last may be shorter), in bounded memory."""
        if chunk_tokens <= 0:
            raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
        encode = _CachedEncoder(tokenizer)
        buf: list[int] = []
        for group in self.iter_text(piece_chars):
            buf.extend(encode(group))
            if len(buf) >= chunk_tokens:
                n_full = len(buf) // chunk_tokens * chunk_tokens
                for s in range(0, n_full, chunk_tokens):
                    yield buf[s : s + chunk_tokens]
                del buf[:n_full]
        if buf:
            yield buf

    def text(self, max_chars: int = 64 * 2**20) -> str:
        """The whole text; refuses beyond ``max_chars`` so a 10M-token document is not built by accident."""
        out: list[str] = []
        size = 0
        for p in self.iter_pieces():
            size += len(p)
            if size > max_chars:
                raise ValueError(f"document longer than max_chars={max_chars}; stream it with iter_text")
            out.append(p)
        return "".join(out)


class _CachedEncoder:
    """Encodes text, reusing the ids of recently seen identical groups (noise haystacks repeat a lot)."""

    def __init__(self, tokenizer: TextTokenizer, size: int = 8):
        self._tok, self._size = tokenizer, size
        self._cache: OrderedDict[str, list[int]] = OrderedDict()

    def __call__(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self._tok.encode(text)
            self._cache[text] = ids
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(text)
        return ids


# A piece boundary: after a run of newlines, before a non-whitespace character.
_BOUNDARY = re.compile(r"(?<=\n)(?=\S)")


def split_pieces(text: str) -> list[int]:
    """Start offsets of the pieces of ``text`` (always begins with 0)."""
    return [0] + [m.start() for m in _BOUNDARY.finditer(text) if m.start() > 0]


class TextDocument(Document):
    """A document backed by a string (short documents and documents read from files)."""

    def __init__(self, text: str, spans: Sequence[Span] = (), approx_tokens: int | None = None):
        self._text = text
        self._starts = split_pieces(text) if text else []
        self._spans = tuple(spans)
        self._approx = approx_tokens if approx_tokens is not None else (len(text) + 3) // 4

    @classmethod
    def with_answers(cls, text: str, answers: Sequence[str], approx_tokens: int | None = None) -> "TextDocument":
        """Locate each answer's first occurrence (if any) and record it as a span."""
        return cls.with_spans_of(text, answers, approx_tokens)

    @classmethod
    def with_spans_of(cls, text: str, snippets: Sequence[str], approx_tokens: int | None = None) -> "TextDocument":
        """Locate each snippet's first occurrence (if any; e.g. an evidence sentence) and record it as a span."""
        doc = cls(text, approx_tokens=approx_tokens)
        spans = []
        for snippet in snippets:
            pos = text.find(snippet) if snippet else -1
            if pos >= 0:
                spans.append(Span(bisect.bisect_right(doc._starts, pos) - 1, snippet))
        doc._spans = tuple(spans)
        return doc

    @property
    def num_pieces(self) -> int:
        return len(self._starts)

    @property
    def approx_tokens(self) -> int:
        return self._approx

    @property
    def spans(self) -> tuple[Span, ...]:
        return self._spans

    def iter_pieces(self, start: int = 0) -> Iterator[str]:
        bounds = self._starts + [len(self._text)]
        for i in range(start, len(self._starts)):
            yield self._text[bounds[i] : bounds[i + 1]]

    def text(self, max_chars: int = 64 * 2**20) -> str:
        return self._text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TextDocument) and (self._text, self._spans) == (other._text, other._spans)

    def __hash__(self) -> int:
        return hash((self._text, self._spans))

    def __repr__(self) -> str:
        return f"TextDocument({len(self._text)} chars, {self.num_pieces} pieces)"


@dataclasses.dataclass(frozen=True, eq=True)
class Sample:
    """One question over one (possibly very long) document.

    ``answers``: ground-truth strings. ``answer_mode`` says how they combine: "all" -- every string must
    appear (RULER string_match_all: multi-value/multi-query needles, variable tracking); "any" -- the
    strings are alternatives (HotpotQA). The GRPO reward is ``verify.answer_reward(response, answers,
    answer_mode)``: for "all", every answer in the box, in any order.
    """

    index: int
    task: str
    question: str
    answers: tuple[str, ...]
    document: Document
    answer_mode: AnswerMode = "any"
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=True, hash=False)

    def __post_init__(self) -> None:
        if self.answer_mode not in ("all", "any"):
            raise ValueError(f"answer_mode must be 'all' or 'any', got {self.answer_mode!r}")
        if not self.answers:
            raise ValueError("a sample needs at least one answer")

    @property
    def reward_answer(self) -> str:
        """The one string a policy should put in \\boxed{}: all answers comma-joined in their canonical
        (stored) order for "all", the first alternative for "any"."""
        return NOTE_SEPARATOR.join(self.answers) if self.answer_mode == "all" else self.answers[0]

    @property
    def ground_truth(self) -> list[str]:
        """The ground truth of a MemAgent training record (``reward_model.ground_truth``): the alternatives, or
        for "all" the answers joined in their stored order. The reward itself takes an "all" sample's answers in
        any order (verify.answer_reward); records keep answers and answer mode beside this (data/records.py)."""
        return [self.reward_answer] if self.answer_mode == "all" else list(self.answers)
