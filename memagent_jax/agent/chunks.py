"""Documents as streams of fixed-size token chunks, shared by the rollouts of one sample.

A document is tokenized once per sample, piece by piece, and cut into chunks of `chunk_size` tokens. The
paper cuts every `chunk_size` tokens, mid-line or even mid-number; with `line_ends` a chunk ends instead
after the last line break that fits (see `iter_rechunked`), so no line is split between two memory updates. The
G rollouts of a sample read the same chunks at their own pace; a chunk is kept only until every rollout
has read it, so host memory stays bounded by the spread between rollouts, not the document's length.
"""

from __future__ import annotations

import codecs
import os
from typing import AbstractSet, Iterable, Iterator, Sequence

from memagent_jax.tokenizer import Tokenizer


def iter_rechunked(pieces: Iterable[Sequence[int]], size: int,
                   line_ends: AbstractSet[int] | None = None) -> Iterator[list[int]]:
    """Re-cuts a stream of token pieces of any sizes into chunks of at most `size` tokens.

    Without `line_ends` every chunk but the last has exactly `size` tokens. With `line_ends` (the ids whose
    text ends in a newline, `Tokenizer.line_end_ids()`), a chunk ends after the last such id among its
    first `size` tokens, as long as that keeps at least half of them (a longer line is still cut at `size`),
    and the last two chunks share the tail, so no document ends with a chunk of a few tokens. Either way
    the chunks depend only on the token stream, never on how it was split into pieces: re-cutting chunks
    under the same policy returns them unchanged."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    buffer: list[int] = []
    if line_ends is None:
        for piece in pieces:
            buffer.extend(piece)
            if len(buffer) >= size:
                cut = len(buffer) - len(buffer) % size
                for start in range(0, cut, size):
                    yield buffer[start:start + size]
                buffer = buffer[cut:]
        if buffer:
            yield buffer
        return
    for piece in pieces:
        buffer.extend(piece)
        start = 0
        # Cut only while more than 1.5 chunks are in hand: the stream may end within them, and then they are
        # shared out below.
        while len(buffer) - start > size + size // 2:
            end = _line_cut(buffer, start, size, line_ends)
            yield buffer[start:end]
            start = end
        del buffer[:start]
    if len(buffer) > size:
        # Two chunks for the last (size, 1.5 size] tokens, the first ending near the middle: both hold at
        # least ~size/4 tokens and at most size (the window's lower half reaches len - size).
        end = _line_cut(buffer, 0, min(size, len(buffer) // 2 + size // 4), line_ends)
        yield buffer[:end]
        del buffer[:end]
    if buffer:
        yield buffer


def _line_cut(tokens: Sequence[int], start: int, size: int, line_ends: AbstractSet[int]) -> int:
    """Where the chunk from `start` ends: after its last line end, if that keeps >= size/2 tokens."""
    shortest = max(1, size // 2)
    for index in range(start + size - 1, start + shortest - 2, -1):
        if tokens[index] in line_ends:
            return index + 1
    return start + size


class ChunkCache:
    """Chunk i of one document for `readers` rollouts; dropped once every active reader has passed it."""

    def __init__(self, pieces: Iterable[Sequence[int]], chunk_size: int, readers: int,
                 line_ends: AbstractSet[int] | None = None):
        self._chunks = iter_rechunked(pieces, chunk_size, line_ends)
        self._kept: dict[int, list[int]] = {}
        self._passed: dict[int, int] = {}
        self._loaded = 0
        self._exhausted = False
        self._readers = readers

    def get(self, index: int) -> list[int] | None:
        """Chunk `index`, or None when the document has fewer chunks."""
        while self._loaded <= index and not self._exhausted:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._exhausted = True
                break
            self._kept[self._loaded] = chunk
            self._passed[self._loaded] = 0
            self._loaded += 1
        if index < self._loaded and index not in self._kept:
            raise RuntimeError(f"chunk {index} was requested after every reader had passed it")
        return self._kept.get(index)

    def advance(self, index: int) -> None:
        """One reader has finished chunk `index`."""
        self._passed[index] = self._passed.get(index, 0) + 1
        self._drop_passed()

    def finish_reader(self, index: int) -> None:
        """A reader stopped at chunk `index` and will read no further."""
        self._readers -= 1
        self._drop_passed()

    def _drop_passed(self) -> None:
        for index in [i for i, n in self._passed.items() if n >= self._readers]:
            self._kept.pop(index, None)
            del self._passed[index]

    @property
    def num_kept(self) -> int:
        return len(self._kept)


_REPLACED = [0]  # invalid bytes seen by the handler below (read as deltas; decoding is single-threaded)


def _count_and_replace(error: UnicodeDecodeError) -> tuple[str, int]:
    _REPLACED[0] += error.end - error.start
    return "\ufffd", error.end


codecs.register_error("memagent_count_replace", _count_and_replace)


def iter_text_file(path: str | os.PathLike, piece_chars: int = 1 << 16) -> Iterator[tuple[str, int]]:
    """Streams a text file as (text, replaced) pieces in bounded memory: bytes that are not UTF-8 become
    U+FFFD and `replaced` counts those bytes. Pieces end at a newline when there is one, so that piecewise
    tokenization matches whole-text tokenization."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="memagent_count_replace")
    pending = ""
    with open(path, "rb") as handle:
        while True:
            raw = handle.read(piece_chars)
            final = not raw
            before = _REPLACED[0]
            text = pending + decoder.decode(raw, final=final)
            replaced = _REPLACED[0] - before
            if final:
                if text or replaced:
                    yield text, replaced
                return
            cut = text.rfind("\n") + 1
            if cut == 0 and len(text) >= piece_chars:
                cut = len(text)  # a very long line: cut anyway to keep memory bounded
            pending = text[cut:]
            if cut or replaced:
                yield text[:cut], replaced


def iter_token_pieces(texts: Iterable[str], tokenizer: Tokenizer) -> Iterator[list[int]]:
    """Tokenizes a text stream piece by piece (pieces ending at newlines tokenize as the whole would, for
    tokenizers whose newline never merges with its neighbours, like the project's SentencePiece models)."""
    for text in texts:
        if text:
            yield tokenizer.encode(text)
