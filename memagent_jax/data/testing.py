"""Small tokenizers for data tests: trained offline in well under a second from our own corpus."""

from __future__ import annotations

import json
import pathlib

from memagent_jax.data.corpus import tokenizer_corpus
from memagent_jax.tokenizer import Tokenizer, load_tokenizer, train_sentencepiece

__all__ = ["tiny_bpe_tokenizer", "tiny_sp_tokenizer"]

# The Qwen2 pre-tokenizer split (Llama 3's differs only in grouping up to 3 digits).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _texts(num_lines: int) -> list[str]:
    lines = list(tokenizer_corpus(num_lines))
    # Some multi-line text, so newline handling is learned as in documents.
    return lines + ["\n".join(lines[i : i + 5]) + "\n\n" for i in range(0, len(lines), 5)]


def tiny_sp_tokenizer(out_dir: str | pathlib.Path, vocab_size: int = 1000) -> Tokenizer:
    """Our SentencePiece default trained on ``tokenizer_corpus(2000)``."""
    train_sentencepiece(tokenizer_corpus(2000), out_dir, vocab_size=vocab_size)
    return load_tokenizer(out_dir)


def tiny_bpe_tokenizer(out_dir: str | pathlib.Path, vocab_size: int = 600) -> Tokenizer:
    """A byte-level BPE with Qwen2's pre-tokenizer, loaded through our HFTokenizer."""
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTok

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_texts(1000), trainer)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.save(str(out / "tokenizer.json"))
    config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return load_tokenizer(out)
