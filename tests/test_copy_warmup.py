"""Copy warm-up data: random strings and their repeats, deterministic, split across processes, resumable."""

import numpy as np
import pytest

from fixture_data import FILLER
from memagent_jax.rl.copy_warmup import (
    SEPARATOR,
    CopyBatches,
    CopyTaskConfig,
    CopyVocabulary,
    copy_sequence,
    copyable_ids,
    digit_ids,
)
from memagent_jax.rl.sft import end_of_turn_id
from memagent_jax.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(sp_tokenizer_dir):
    return load_tokenizer(sp_tokenizer_dir)


def test_ordinary_ids_exclude_special_tokens(tokenizer):
    ids = set(copyable_ids(tokenizer).tolist())
    assert not ids & ({tokenizer.eos_id, tokenizer.pad_id} | set(tokenizer.stop_ids))
    assert len(ids) > tokenizer.vocab_size // 2


def test_a_sequence_is_a_string_then_its_exact_repeat_with_loss_on_the_repeat(tokenizer):
    vocab = CopyVocabulary.build(tokenizer, end_of_turn_id(tokenizer))
    separator, end = tokenizer.encode(SEPARATOR), end_of_turn_id(tokenizer)
    config = CopyTaskConfig(min_tokens=5, max_tokens=9)
    rng = np.random.default_rng(0)
    lengths = set()
    for _ in range(50):
        seq = copy_sequence(rng, vocab, config)
        tokens = list(seq.tokens)
        n = (len(tokens) - len(separator) - 1) // 2
        lengths.add(n)
        assert tokens[n : n + len(separator)] == separator
        assert seq.prompt_len == n + len(separator)
        assert tokens[seq.prompt_len : -1] == tokens[:n] and tokens[-1] == end
    assert lengths == set(range(5, 10))


def test_digit_strings_and_filler_gaps(tokenizer):
    vocab = CopyVocabulary.build(tokenizer, end_of_turn_id(tokenizer))
    digits = set(digit_ids(tokenizer).tolist())
    assert len(digits) == 10 and {tokenizer.decode([d]) for d in digits} == set("0123456789")
    config = CopyTaskConfig(min_tokens=6, max_tokens=6, digit_fraction=0.5, max_gap_tokens=40)
    rng = np.random.default_rng(1)
    all_digits, gaps = 0, set()
    for _ in range(200):
        seq = copy_sequence(rng, vocab, config)
        tokens, separator = list(seq.tokens), list(vocab.separator)
        string, gap = tokens[:6], tokens[6:seq.prompt_len - len(separator)]
        assert tokens[seq.prompt_len - len(separator):seq.prompt_len] == separator
        assert tokens[seq.prompt_len:-1] == string
        all_digits += set(string) <= digits
        gaps.add(len(gap))
        assert gap == [] or tokenizer.decode(gap) in (FILLER + "\n") * 3  # a piece of the filler text
    assert 70 <= all_digits <= 130  # about half
    assert min(gaps) <= 2 and max(gaps) >= 38
    with pytest.raises(ValueError, match="digit_fraction"):
        CopyTaskConfig(digit_fraction=1.5)
    with pytest.raises(ValueError, match="max_gap_tokens"):
        CopyTaskConfig(max_gap_tokens=-1)


def test_batches_depend_on_seed_and_index_only_and_resume(tokenizer):
    end = end_of_turn_id(tokenizer)
    first = CopyBatches(tokenizer, end, 4, CopyTaskConfig(), seed=3)
    batches = [next(first) for _ in range(3)]
    resumed = CopyBatches(tokenizer, end, 4, CopyTaskConfig(), seed=3)
    resumed.set_state({"next_index": 2})
    assert [s.tokens for s in next(resumed)] == [s.tokens for s in batches[2]]
    assert first.get_state() == {"next_index": 3}
    other = CopyBatches(tokenizer, end, 4, CopyTaskConfig(), seed=4)
    assert [s.tokens for s in next(other)] != [s.tokens for s in batches[0]]


def test_processes_take_disjoint_slices_of_the_same_global_batch(tokenizer):
    end = end_of_turn_id(tokenizer)
    whole = next(CopyBatches(tokenizer, end, 6, CopyTaskConfig(), seed=1))
    parts = [next(CopyBatches(tokenizer, end, 6, CopyTaskConfig(), seed=1, process_index=p, process_count=3))
             for p in range(3)]
    assert [s.tokens for part in parts for s in part] == [s.tokens for s in whole]


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 5, "process_count": 2}, "multiple of the 2 processes"),
    ({"batch_size": 4, "process_index": 2, "process_count": 2}, "process_index"),
])
def test_bad_batch_layouts_are_refused(tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        CopyBatches(tokenizer, end_of_turn_id(tokenizer), config=CopyTaskConfig(), seed=0, **kwargs)


def test_bad_lengths_and_states_are_refused(tokenizer):
    with pytest.raises(ValueError, match="min_tokens"):
        CopyTaskConfig(min_tokens=10, max_tokens=4)
    batches = CopyBatches(tokenizer, end_of_turn_id(tokenizer), 2, CopyTaskConfig(), seed=0)
    with pytest.raises(ValueError, match="next_index"):
        batches.set_state({"next": 1})
