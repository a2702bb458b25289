"""Documents as streams of fixed-size token chunks, shared by the rollouts of one sample.

A document is tokenized once per sample, piece by piece, and cut into chunks of `chunk_size` tokens. The
G rollouts of a sample read the same chunks at their own pace; a chunk is kept only until every rollout
has read it, so host memory stays bounded by the spread between rollouts, not the document's length.
"""

from __future__ import annotations

import codecs
import os
from typing import Iterable, Iterator, Sequence

from memagent_jax.tokenizer import Tokenizer


def iter_rechunked(pieces: Iterable[Sequence[int]], size: int) -> Iterator[list[int]]:
    """Re-cuts a stream of token pieces of any sizes into chunks of exactly `size` (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    buffer: list[int] = []
    for piece in pieces:
        buffer.extend(piece)
        if len(buffer) >= size:
            cut = len(buffer) - len(buffer) % size
            for start in range(0, cut, size):
                yield buffer[start:start + size]
            buffer = buffer[cut:]
    if buffer:
        yield buffer


class ChunkCache:
    """Chunk i of one document for `readers` rollouts; dropped once every active reader has passed it."""

    def __init__(self, pieces: Iterable[Sequence[int]], chunk_size: int, readers: int):
        self._chunks = iter_rechunked(pieces, chunk_size)
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
