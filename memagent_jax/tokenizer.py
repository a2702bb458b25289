"""Tokenizers: one interface over two backends.

* ``SentencePieceTokenizer``: the embedded tiny CPU default, trained from our own synthetic text by
  ``train_sentencepiece`` (ChatML markers ``<|im_start|>``/``<|im_end|>`` are single tokens).
* ``HFTokenizer``: a real checkpoint folder (Qwen2.5, Llama 3) with ``tokenizer.json`` (read with the
  ``tokenizers`` library) and the chat template from ``tokenizer_config.json``.

Two encoding paths, on purpose:

* ``encode(text)`` is for data (documents, questions, answers). Special-token strings that occur in
  the text (``"<|im_end|>"`` inside a document) are encoded as ordinary text pieces, never as control
  ids, so data cannot end a turn or forge a role header.
* Template text (``render_chat`` output and the literal parts around slots) maps special-token
  strings to their special ids, exactly as ``transformers``' ``apply_chat_template(tokenize=True)``.
  Message contents rendered by ``encode_chat`` therefore *do* get control ids if they contain
  special-token strings (the Hugging Face default); pass untrusted text through
  ``encode_chat_with_slots`` slots, which are encoded with ``encode``.
"""

from __future__ import annotations

import abc
import datetime
import functools
import io
import json
import os
import pathlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "HFTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "train_sentencepiece",
]

# ChatML, as used by Qwen. Raw string: the template itself holds the '\n' escapes, like HF configs.
DEFAULT_CHAT_TEMPLATE = (
    r"{% for message in messages %}"
    r"{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    r"{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SP_MODEL_FILE = "tokenizer.model"
HF_TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where newer transformers versions save the template

# SentencePiece ids, fixed so every trained model agrees.
_SP_PAD, _SP_UNK, _SP_BOS, _SP_EOS = 0, 1, 2, 3
_SP_SPECIAL_PIECES = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"}
_CHATML_MARKERS = ("<|im_start|>", "<|im_end|>")
# Markers that end an assistant turn in the chat formats we support (ChatML, Llama 3).
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>")

# Slot sentinels use Unicode private-use characters: not whitespace (so `trim` in a template leaves them
# alone), not special-token text, and absent from real data (checked anyway).
_SENTINEL_OPEN, _SENTINEL_CLOSE = "\ue000", "\ue001"


# --------------------------------------------------------------------------------------------------
# Small helpers


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"invalid JSON in {path}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"invalid JSON in {path}: expected an object at the top level")
    return data


def _token_content(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string, a dict with "content", or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"unrecognised special token entry: {value!r}")


def _alternation(strings: Iterable[str]) -> re.Pattern[str] | None:
    # Longest first, so a token that is a prefix of another never wins.
    ordered = sorted(set(strings), key=len, reverse=True)
    return re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None


def _split_keep(pattern: re.Pattern[str] | None, text: str) -> Iterator[tuple[str, bool]]:
    """Yield (piece, is_match) for the pieces of `text` around and at matches of `pattern`."""
    if pattern is None:
        if text:
            yield text, False
        return
    pos = 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            yield text[pos : m.start()], False
        yield m.group(), True
        pos = m.end()
    if pos < len(text):
        yield text[pos:], False


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_text(text: str) -> str:
    """`text`, or ValueError: a lone surrogate is not Unicode text, and the backends fail on it obscurely."""
    if (bad := _SURROGATE.search(text)) is not None:
        raise ValueError(f"text holds a lone surrogate U+{ord(bad.group()):04X} at position {bad.start()}: "
                         f"not valid Unicode, cannot be tokenized")
    return text


def _decodable_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
    """The ids that have text. Ids past the vocabulary have none (a model's embedding may be padded past its
    tokenizer's ids, so it can sample them); a negative id is a caller's bug and raises ValueError."""
    out = []
    for i in map(int, ids):
        if i < 0:
            raise ValueError(f"token id {i} out of range [0, {vocab_size})")
        if i < vocab_size:
            out.append(i)
    return out


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters; chat templates expect plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def _compile_template(source: str) -> jinja2.Template:
    # Chat templates from checkpoint folders are untrusted code: always sandboxed. The options and globals
    # match what Hugging Face templates are written against.
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


# --------------------------------------------------------------------------------------------------
# Interface


class Tokenizer(abc.ABC):
    """Text <-> ids, plus chat-template rendering. See the module docstring for the two encoding paths."""

    vocab_size: int  # size of the id space (max id + 1, including added/special tokens)
    bos_id: int | None
    eos_id: int
    pad_id: int
    stop_ids: tuple[int, ...]  # ids that end a generated turn

    # Set by subclasses: template source (None if the folder has none), where it came from (for errors),
    # and the special-token strings the template may reference (bos_token, eos_token, ...).
    _chat_template: str | None
    _template_origin: str
    _template_tokens: dict[str, str]

    @abc.abstractmethod
    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Encode data text. Special-token strings in `text` become plain text pieces.

        `add_bos` prepends bos if the tokenizer has one (Qwen2.5 has none; then it is a no-op).
        """

    @abc.abstractmethod
    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Decode ids to text, dropping special tokens if `skip_special`. Ids >= vocab_size decode to nothing
        (padded embedding rows); a negative id raises ValueError."""

    @abc.abstractmethod
    def _encode_template_text(self, text: str) -> list[int]:
        """Encode template-produced text: special-token strings become their special ids."""

    def line_end_ids(self) -> frozenset[int]:
        """Ids whose text ends with a newline: where a document chunk may end on a line boundary
        (`agent.chunks.iter_rechunked`). Computed once per tokenizer by decoding every id alone."""
        cached = getattr(self, "_line_end_ids", None)
        if cached is None:
            texts = self._decode_each(range(self.vocab_size))
            cached = frozenset(i for i, text in enumerate(texts) if text.endswith("\n"))
            if not cached:
                raise ValueError("this tokenizer has no token that ends with a newline: chunks cannot end at lines")
            self._line_end_ids = cached
        return cached

    def _decode_each(self, ids: Iterable[int]) -> list[str]:
        """Each id decoded on its own (backends with a batch decoder override this)."""
        return [self.decode([i]) for i in ids]

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render `messages` with the chat template, as `apply_chat_template(tokenize=False)` does."""
        if self._chat_template is None:
            raise ValueError(f"no chat template: {self._template_origin} has no 'chat_template'")
        # Like transformers: drop None-valued keys, which many templates would print as "None".
        clean = [{k: v for k, v in m.items() if v is not None} for m in messages]
        return _compile_template(self._chat_template).render(
            messages=clean,
            add_generation_prompt=add_generation_prompt,
            tools=None,
            documents=None,
            **self._template_tokens,
        )

    def encode_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered chat (no implicit bos: templates that want it write it themselves)."""
        return self._encode_template_text(self.render_chat(messages, add_generation_prompt))

    def encode_chat_with_slots(
        self,
        messages: list[dict[str, str]],
        slots: Mapping[str, Sequence[int]],
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """Like `encode_chat`, but each `{name}` in a message content is replaced by `slots[name]` ids.

        The slot ids are spliced in as given, never decoded and re-tokenized. The literal text around a
        slot is encoded separately, so where a tokenizer would merge across the slot boundary the result
        can differ from encoding the substituted text (a space before the slot; with Qwen/Llama
        byte-level BPE also a slot text ending in punctuation before a newline, as "?\n" is one
        pre-token). With newlines around the slot and slot text that starts and ends with a letter or
        digit, the two agree exactly. Either way the ids decode to the same text.
        """
        if not slots:
            return self.encode_chat(messages, add_generation_prompt)
        names = list(slots)
        sentinels = {name: f"{_SENTINEL_OPEN}{i}{_SENTINEL_CLOSE}" for i, name in enumerate(names)}
        placeholder = re.compile("|".join(re.escape("{" + n + "}") for n in names))

        expected = 0
        marked = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, str):
                if _SENTINEL_OPEN in content or _SENTINEL_CLOSE in content:
                    raise ValueError("message content contains reserved private-use characters U+E000/U+E001")
                content, n = placeholder.subn(lambda m: sentinels[m.group()[1:-1]], content)
                expected += n
                message = {**message, "content": content}
            marked.append(message)
        used = {name for name in names if any(sentinels[name] in str(m.get("content")) for m in marked)}
        if missing := [name for name in names if name not in used]:
            raise ValueError(f"slots {missing} do not appear as {{name}} in any message content")

        rendered = self.render_chat(marked, add_generation_prompt)
        by_sentinel = {sentinels[name]: name for name in names}
        found = 0
        ids: list[int] = []
        for piece, is_slot in _split_keep(_alternation(by_sentinel), rendered):
            if is_slot:
                ids.extend(int(i) for i in slots[by_sentinel[piece]])
                found += 1
            else:
                ids.extend(self._encode_template_text(piece))
        if found != expected:
            raise ValueError(
                f"the chat template changed the slot placeholders ({expected} in messages, {found} rendered)"
            )
        return ids


# --------------------------------------------------------------------------------------------------
# SentencePiece backend


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model, normally one written by `train_sentencepiece`.

    The chat template is `chat_template` if given, else the one in a tokenizer_config.json next to the
    model, else `DEFAULT_CHAT_TEMPLATE`.
    """

    def __init__(self, model_path: str | os.PathLike, chat_template: str | None = None):
        import sentencepiece as spm

        path = pathlib.Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"missing SentencePiece model: {path}")
        self.model_path = path
        self._sp = spm.SentencePieceProcessor(model_file=str(path))

        config_path = path.parent / CONFIG_FILE
        config = _read_json(config_path) if config_path.is_file() else {}
        if chat_template is not None:
            self._chat_template, self._template_origin = chat_template, "the chat_template argument"
        else:
            self._chat_template = config.get("chat_template") or DEFAULT_CHAT_TEMPLATE
            self._template_origin = str(config_path)

        sp = self._sp
        self.vocab_size = sp.get_piece_size()
        unk = sp.unk_id()
        self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
        if sp.eos_id() < 0:
            raise ValueError(f"SentencePiece model {path} has no eos piece")
        self.eos_id = sp.eos_id()
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else self.eos_id

        # Control pieces (<s>, </s>, <pad>) are never produced from text by SentencePiece itself.
        control = {sp.id_to_piece(i): i for i in range(self.vocab_size) if sp.is_control(i)}
        # User-defined pieces (ChatML markers) ARE matched in text by SentencePiece; encode() escapes them.
        user_strings = set(_CHATML_MARKERS) | {
            s for s in (_token_content(t) for t in config.get("additional_special_tokens", [])) if s
        }
        user = {s: sp.piece_to_id(s) for s in user_strings if sp.piece_to_id(s) != unk}
        self._special_ids: dict[str, int] = {**control, **user}
        self._special_id_set = frozenset(self._special_ids.values())
        self._user_pattern = _alternation(user)
        self._template_pattern = _alternation(self._special_ids)

        stops = [self.eos_id] + [user[m] for m in _END_OF_TURN_TOKENS if m in user]
        self.stop_ids = tuple(dict.fromkeys(stops))
        self._template_tokens = {
            name: sp.id_to_piece(i)
            for name, i in (("bos_token", self.bos_id), ("eos_token", self.eos_id), ("pad_token", self.pad_id))
            if i is not None
        }

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = [self.bos_id] if add_bos and self.bos_id is not None else []
        for piece, is_marker in _split_keep(self._user_pattern, _check_text(text)):
            if is_marker:
                # Split the marker so SentencePiece cannot match it: "<" + "|im_end|>" as plain pieces.
                ids += self._sp.encode(piece[:1]) + self._sp.encode(piece[1:])
            else:
                ids += self._sp.encode(piece)
        return ids

    def _encode_template_text(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece, is_special in _split_keep(self._template_pattern, _check_text(text)):
            ids += [self._special_ids[piece]] if is_special else self._sp.encode(piece)
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        # SentencePiece renders control ids as "", so specials are written here, between decoded runs.
        out: list[str] = []
        run: list[int] = []
        for i in _decodable_ids(ids, self.vocab_size):
            if i in self._special_id_set:
                if run:
                    out.append(self._sp.decode(run))
                    run = []
                if not skip_special:
                    out.append(self._sp.id_to_piece(i))
            else:
                run.append(i)
        if run:
            out.append(self._sp.decode(run))
        return "".join(out)


def _sentences(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    # One line per sentence: newlines then never join a piece (they encode as the <0x0A> byte piece), so
    # slot boundaries at newlines tokenize the same either way. Over-long lines are cut rather than
    # dropped, because SentencePiece silently skips sentences above max_sentence_length.
    for text in texts:
        for line in text.split("\n"):
            for start in range(0, len(line), max_chars):
                yield line[start : start + max_chars]


def train_sentencepiece(
    texts: Iterable[str],
    output_dir: str | os.PathLike,
    vocab_size: int = 2048,
    model_type: str = "bpe",
    *,
    chat_template: str = DEFAULT_CHAT_TEMPLATE,
    character_coverage: float = 1.0,
    digit_group: int = 1,
) -> pathlib.Path:
    """Train a SentencePiece model from `texts`; write output_dir/tokenizer.model and tokenizer_config.json.

    The corpus is streamed to the trainer and never written to disk. Deterministic: the same texts give
    byte-identical models. `vocab_size` is an upper bound: a corpus too small to fill it gives a smaller
    vocabulary instead of an error. Returns the model path.

    `digit_group`: numbers tokenize as groups of this many digits from the left (1 = digit by digit, as
    Qwen2.5; Llama 3 uses groups of up to 3), the last group shorter. Every group is a piece of its own, so
    a digit never merges with the punctuation around it.
    """
    import sentencepiece as spm

    if digit_group not in (1, 2, 3):
        raise ValueError(f"digit_group must be 1, 2 or 3 (digits per number piece), got {digit_group}")
    # All digit strings up to the group length as user-defined pieces: SentencePiece matches them longest
    # first, left to right, before its own segmentation (which then never sees a digit).
    digit_pieces = [f"{n:0{width}d}" for width in range(1, digit_group + 1) for n in range(10 ** width)]
    if digit_group > 1 and vocab_size < len(digit_pieces) + 512:  # room for 256 bytes, characters and words
        raise ValueError(f"digit_group={digit_group} reserves {len(digit_pieces)} digit pieces: vocab_size must be "
                         f"at least {len(digit_pieces) + 512}, got {vocab_size}")

    out = pathlib.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    max_chars = 8192  # at most 4 UTF-8 bytes a character: fits max_sentence_length below
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_sentences(texts, max_chars),
        model_writer=model,  # no model_prefix: the proto then holds no output path, so bytes are reproducible
        model_type=model_type,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        pad_id=_SP_PAD,
        unk_id=_SP_UNK,
        bos_id=_SP_BOS,
        eos_id=_SP_EOS,
        pad_piece=_SP_SPECIAL_PIECES["pad"],
        unk_piece=_SP_SPECIAL_PIECES["unk"],
        bos_piece=_SP_SPECIAL_PIECES["bos"],
        eos_piece=_SP_SPECIAL_PIECES["eos"],
        user_defined_symbols=list(_CHATML_MARKERS) + (digit_pieces if digit_group > 1 else []),
        byte_fallback=True,  # any Unicode is encodable
        split_digits=digit_group == 1,
        character_coverage=character_coverage,
        # Lossless round trip: no NFKC, no whitespace collapsing, no implicit leading space (which
        # would also be added to every separately encoded piece of a template).
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        # Determinism: use every sentence in order (no sampling/shuffling); the thread count is
        # recorded in the model proto and changes the merge order, so it is fixed.
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        max_sentence_length=4 * max_chars,
        minloglevel=2,
    )
    model_path = out / SP_MODEL_FILE
    model_path.write_bytes(model.getvalue())
    config = {
        "tokenizer_class": "SentencePieceTokenizer",
        "bos_token": _SP_SPECIAL_PIECES["bos"],
        "eos_token": _SP_SPECIAL_PIECES["eos"],
        "pad_token": _SP_SPECIAL_PIECES["pad"],
        "unk_token": _SP_SPECIAL_PIECES["unk"],
        "additional_special_tokens": list(_CHATML_MARKERS),
        "chat_template": chat_template,
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return model_path


# --------------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json backend


class HFTokenizer(Tokenizer):
    """A Hugging Face checkpoint folder: tokenizer.json + tokenizer_config.json (+ generation_config.json)."""

    def __init__(self, directory: str | os.PathLike):
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as _RustTokenizer

        folder = pathlib.Path(directory)
        if not folder.is_dir():
            raise FileNotFoundError(f"missing tokenizer folder: {folder}")
        self.directory = folder
        tok_path = folder / HF_TOKENIZER_FILE
        config_path = folder / CONFIG_FILE
        if not tok_path.is_file():
            raise FileNotFoundError(f"missing file: {tok_path}")
        config = _read_json(config_path)
        try:
            self._tok = _RustTokenizer.from_file(str(tok_path))
        except Exception as err:  # the Rust parser raises a bare Exception and does not name the file
            raise ValueError(f"cannot load {tok_path}: {err}") from err

        # Tokens listed only in tokenizer_config.json (rare) are added so both files agree.
        for id_str, entry in (config.get("added_tokens_decoder") or {}).items():
            content = _token_content(entry)
            if content is None or self._tok.token_to_id(content) is not None:
                continue
            token = AddedToken(content, special=bool(entry.get("special", True)), normalized=False)
            if entry.get("special", True):
                self._tok.add_special_tokens([token])
            else:
                self._tok.add_tokens([token])
            if self._tok.token_to_id(content) != int(id_str):
                raise ValueError(f"{config_path}: added token {content!r} does not fit id {id_str}")

        # A second instance for data: encode_special_tokens makes special-token strings plain text.
        # (With the default instance, encode(..., add_special_tokens=False) still matches them.)
        self._data_tok = _RustTokenizer.from_str(self._tok.to_str())
        self._data_tok.encode_special_tokens = True

        vocab = self._tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1

        def token_id(key: str) -> int | None:
            content = _token_content(config.get(key))
            if content is None:
                return None
            tid = self._tok.token_to_id(content)
            if tid is None:
                raise ValueError(f"{config_path}: {key} {content!r} is not in {tok_path}")
            return tid

        gen_eos: list[int] = []
        gen_path = folder / GENERATION_CONFIG_FILE
        if gen_path.is_file():
            value = _read_json(gen_path).get("eos_token_id")
            gen_eos = [value] if isinstance(value, int) else [int(v) for v in (value or [])]

        self.bos_id = token_id("bos_token")
        eos = token_id("eos_token")
        if eos is None:
            if not gen_eos:
                raise ValueError(f"{config_path} has no eos_token (and no eos_token_id in {gen_path})")
            eos = gen_eos[0]
        self.eos_id = eos
        pad = token_id("pad_token")
        self.pad_id = self.eos_id if pad is None else pad  # Llama 3 has no pad token

        special = {t.content for t in self._tok.get_added_tokens_decoder().values() if t.special}
        turn_ends = [vocab[t] for t in _END_OF_TURN_TOKENS if t in special]
        self.stop_ids = tuple(dict.fromkeys([self.eos_id, *gen_eos, *turn_ends]))

        template = config.get("chat_template")
        if isinstance(template, list):  # multiple named templates: use the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        self._template_origin = str(config_path)
        if template is None and (folder / CHAT_TEMPLATE_FILE).is_file():
            template = (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
        self._chat_template = template
        # What transformers passes to templates (its special_tokens_map): strings, None left out.
        self._template_tokens = {
            key: content
            for key in ("bos_token", "eos_token", "unk_token", "pad_token")
            if (content := _token_content(config.get(key))) is not None
        }

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self._data_tok.encode(_check_text(text), add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos and self.bos_id is not None else ids

    def _encode_template_text(self, text: str) -> list[int]:
        return self._tok.encode(_check_text(text), add_special_tokens=False).ids

    def _decode_each(self, ids: Iterable[int]) -> list[str]:
        return self._tok.decode_batch([[int(i)] for i in ids], skip_special_tokens=True)

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        # No clean_up_tokenization_spaces: transformers ignores it for BPE tokenizers (Qwen, Llama 3) too.
        return self._tok.decode(_decodable_ids(ids, self.vocab_size), skip_special_tokens=skip_special)


# --------------------------------------------------------------------------------------------------


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A folder with tokenizer.json -> HFTokenizer; a folder with tokenizer.model, or a .model file ->
    SentencePieceTokenizer. tokenizer.json wins when a folder has both (it is the complete description)."""
    p = pathlib.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such tokenizer path: {p}")
    if p.is_file():
        if p.name == HF_TOKENIZER_FILE:
            return HFTokenizer(p.parent)
        if p.suffix == ".model":
            return SentencePieceTokenizer(p)
        raise ValueError(f"not a tokenizer file (expected {HF_TOKENIZER_FILE} or a .model file): {p}")
    if (p / HF_TOKENIZER_FILE).is_file():
        return HFTokenizer(p)
    if (p / SP_MODEL_FILE).is_file():
        return SentencePieceTokenizer(p / SP_MODEL_FILE)
    raise FileNotFoundError(f"no {HF_TOKENIZER_FILE} or {SP_MODEL_FILE} in {p}")
