"""Packing: every conversation lands in its own segment with the right targets, masks and data."""

import numpy as np
import pytest

from memagent_jax.rl.packing import TrainSequence, assign_rows, micro_batches, pack


def _sequences(seed, lengths, prompt_lens):
    rng = np.random.default_rng(seed)
    out = []
    for n, p in zip(lengths, prompt_lens):
        tokens = list(map(int, rng.integers(1, 100, n)))
        out.append(TrainSequence(tokens, p, advantage=float(rng.normal()),
                                 sampler_logprobs=list(rng.normal(size=n - p))))
    return out


def test_each_sequence_is_recoverable_from_its_segment():
    seqs = _sequences(0, [10, 3, 17, 6, 8, 2], [4, 1, 9, 5, 2, 1])
    batch, stats = pack(seqs, row_len=20, max_segments=4, rows_multiple=2)
    assert batch["tokens"].shape[0] % 2 == 0 and stats.rows == batch["tokens"].shape[0]
    found = 0
    for row in range(stats.rows):
        for segment in range(1, 5):
            where = np.flatnonzero(batch["segment_ids"][row] == segment)
            if not where.size:
                continue
            assert np.array_equal(where, np.arange(where[0], where[-1] + 1)), "segments are contiguous"
            inputs = batch["tokens"][row, where]
            match = [s for s in seqs if list(s.tokens[:-1]) == list(inputs)]
            assert len(match) == 1
            seq = match[0]
            found += 1
            assert list(batch["targets"][row, where]) == list(seq.tokens[1:])
            assert list(batch["positions"][row, where]) == list(range(len(where)))
            mask = batch["loss_mask"][row, where]
            # Targets from the first response token on carry loss, prompt targets do not.
            assert list(mask) == [0.0] * (seq.prompt_len - 1) + [1.0] * (len(seq.tokens) - seq.prompt_len)
            np.testing.assert_allclose(batch["advantages"][row, where][mask > 0], seq.advantage, rtol=1e-6)
            np.testing.assert_allclose(batch["sampler_logp"][row, where][mask > 0], seq.sampler_logprobs,
                                       rtol=1e-6)
    assert found == len(seqs)
    assert stats.loss_tokens == sum(len(s.tokens) - s.prompt_len for s in seqs) == batch["loss_mask"].sum()
    assert stats.real_tokens == sum(len(s.tokens) - 1 for s in seqs)
    assert stats.padding_fraction == pytest.approx(1 - stats.real_tokens / (stats.rows * 20))


def test_first_fit_decreasing_and_segment_limit():
    assert assign_rows([5, 4, 3, 2, 1], 6, 8) == [[0, 4], [1, 3], [2]]
    assert assign_rows([1, 1, 1, 1], 10, 2) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="longer than the packed row"):
        assign_rows([3, 11], 10, 4)


def test_micro_batches_pad_to_a_power_of_two_with_empty_ones():
    seqs = _sequences(1, [9] * 5, [3] * 5)
    batch, stats = pack(seqs, row_len=10, max_segments=2, rows_multiple=1)
    assert stats.rows == 5
    micro = micro_batches(batch, 1)
    assert micro["tokens"].shape == (8, 1, 10)
    assert micro["loss_mask"][5:].sum() == 0
    np.testing.assert_array_equal(micro["tokens"][:5, 0], batch["tokens"])


def test_bad_sequences_are_refused():
    with pytest.raises(ValueError, match="needs a prompt and a response"):
        TrainSequence([1, 2, 3], 3)
    with pytest.raises(ValueError, match="sampler log-probs"):
        TrainSequence([1, 2, 3], 1, sampler_logprobs=[0.0])
    with pytest.raises(ValueError, match="finite"):
        TrainSequence([1, 2, 3], 1, advantage=float("nan"))
