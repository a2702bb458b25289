"""Synthetic tasks: deterministic in (seed, task, index), answers present, lengths within 2%, lazy."""

from __future__ import annotations

import pickle
import re
import time

import pytest

from fixture_data import FILLER, count_tokens, tiny_bpe_tokenizer, tiny_sp_tokenizer
from memagent_jax.data.haystack import HaystackDocument
from memagent_jax.data.multihop import MultiHopTask
from memagent_jax.data.niah import NeedleTask
from memagent_jax.data.synthetic import SyntheticSource
from memagent_jax.data.tasks import TASKS, make_task
from memagent_jax.data.vt import VT_HEAD, VariableTrackingTask
from memagent_jax.data.words import ADJECTIVES, NOUNS, word_split


@pytest.fixture(scope="module")
def sp(tmp_path_factory: pytest.TempPathFactory):
    return tiny_sp_tokenizer(tmp_path_factory.mktemp("sp"))


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory):
    return tiny_bpe_tokenizer(tmp_path_factory.mktemp("bpe"))


def _check_answers(sample) -> None:
    text = sample.document.text()
    if sample.answer_mode == "all":
        assert all(a in text for a in sample.answers), sample
    else:
        assert any(a in text for a in sample.answers), sample
    pieces = list(sample.document.iter_pieces())
    assert sample.document.spans
    for span in sample.document.spans:
        assert span.text in pieces[span.piece]
    found = " ".join(s.text for s in sample.document.spans)
    assert all(a in found for a in sample.answers[:1])  # the answer-bearing text is what the spans mark


@pytest.mark.parametrize("name", sorted(TASKS))
def test_same_sample_from_fresh_generators_and_any_order(sp, name: str) -> None:
    first = make_task(name, sp, 2000, seed=7)
    later = [first.sample(i) for i in (5, 2, 9)]
    again = make_task(name, sp, 2000, seed=7)
    assert [again.sample(i) for i in (9, 2, 5)] == later[::-1]
    assert list(again.sample(5).document.iter_pieces()) == list(later[0].document.iter_pieces())
    other_seed = make_task(name, sp, 2000, seed=8).sample(5)
    assert other_seed.answers != later[0].answers


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("target", [1000, 8000, 65_536])
def test_answers_present_and_length_within_2_percent(sp, name: str, target: int) -> None:
    task = make_task(name, sp, target)
    for i in range(3 if target < 65_536 else 1):
        sample = task.sample(i)
        _check_answers(sample)
        n = len(sp.encode(sample.document.text()))  # the whole text, tokenized at once
        # UUID needle lines are ~70 tokens of the test tokenizer: at 1K no choice of lines gets within 2%.
        tolerance = 0.04 if name == "niah_multikey_uuids" and target == 1000 else 0.02
        assert abs(n - target) <= tolerance * target, (name, target, n)
        assert sample.document.approx_tokens == n  # exact below exact_limit


@pytest.mark.parametrize("name", ["niah_multikey_needles", "multihop_qa", "vt"])
def test_token_stream_matches_whole_text_for_bpe_too(bpe, name: str) -> None:
    sample = make_task(name, bpe, 8000).sample(1)
    text = sample.document.text()
    chunks = list(sample.document.iter_tokens(bpe, 1000, piece_chars=3000))
    assert [i for c in chunks for i in c] == bpe.encode(text)
    assert abs(sum(map(len, chunks)) - 8000) <= 160
    _check_answers(sample)


@pytest.mark.parametrize("name", ["niah_multikey_uuids", "multihop_qa"])
def test_calibrated_lengths_for_long_targets(sp, name: str) -> None:
    # exact_limit below the target: the length comes from the calibrated mean unit length.
    task = make_task(name, sp, 100_000, exact_limit=1000)
    for i in range(2):
        sample = task.sample(i)
        assert not sample.document.skip
        n = count_tokens(sample.document, sp)
        assert abs(n - 100_000) <= 2000, n
        assert abs(sample.document.approx_tokens - n) <= 2000


def test_random_piece_access_matches_stream(sp) -> None:
    for name in ("multihop_qa", "niah_multikey", "niah_multivalue", "vt"):
        doc = make_task(name, sp, 3000).sample(4).document
        pieces = list(doc.iter_pieces())
        assert len(pieces) == doc.num_pieces
        for i in (0, 1, len(pieces) // 2, len(pieces) - 1, *(s.piece for s in doc.spans)):
            assert doc.piece(i) == pieces[i]
            assert list(doc.iter_pieces(i)) == pieces[i:]


def test_niah_format_and_questions(sp) -> None:
    s = make_task("niah_single", sp, 2000).sample(0)
    assert re.fullmatch(r"What is the special magic number for [a-z]+-[a-z]+ mentioned in the provided text\?",
                        s.question)
    assert len(s.answers) == 1 and re.fullmatch(r"\d{7}", s.answers[0])
    key = s.question.split(" for ")[1].split(" mentioned")[0]
    assert f"One of the special magic numbers for {key} is: {s.answers[0]}.\n" in s.document.text()
    assert s.document.text().count(FILLER) == s.document.num_units
    # RULER's head line opens the document (piece 0), singular for one asked value.
    assert s.document.piece(0) == ("A special magic number is hidden within the following text. Make sure to "
                                   "memorize it. I will quiz you about the number afterwards.\n")

    q = make_task("niah_multiquery", sp, 2000).sample(0)
    assert q.question.startswith("What are all the special magic numbers for ") and ", and " in q.question
    assert len(q.answers) == 4 and q.reward_answer == ", ".join(q.answers) and q.answer_mode == "all"
    assert q.document.piece(0).startswith("Some special magic numbers are hidden within the following text.")
    v = make_task("niah_multivalue", sp, 2000).sample(0)
    assert len(v.answers) == 4 and len(set(v.answers)) == 4
    assert len(v.document.spans) == 4
    k = make_task("niah_multikey_noise", sp, 2000).sample(0)
    assert len(k.answers) == 1 and len(k.meta["keys"]) == 4 and k.document.text().count("special magic") == 5
    # RULER's niah_multikey_2: every haystack line is a needle with another key.
    m = make_task("niah_multikey", sp, 2000).sample(0)
    lines = m.document.text().splitlines()[1:]
    assert all(line.startswith("One of the special magic numbers for ") for line in lines) and len(lines) > 50
    assert sum(f" for {m.meta['keys'][0]} is: " in line for line in lines) == 1

    u = make_task("niah_multikey_uuids", sp, 2000).sample(0)
    uuid = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    assert re.fullmatch(uuid, u.answers[0]) and re.fullmatch(uuid, u.meta["keys"][0])
    w = make_task("niah_single_words", sp, 2000).sample(0)
    assert w.question.startswith("What is the special magic word for ") and re.fullmatch(r"\S+-\S+", w.answers[0])


def test_distractor_needles_never_use_the_asked_key(sp) -> None:
    task = NeedleTask(sp, 20_000, num_keys=2, num_queries=1, haystack="needle")
    for i in range(3):
        s = task.sample(i)
        asked = s.meta["keys"][0]
        lines = [p for p in s.document.iter_pieces() if f" for {asked} is:" in p]
        assert len(lines) == 1 and s.answers[0] in lines[0]
        assert s.document.num_units > 300  # every unit is itself a needle


def test_variable_tracking_chain_in_order(sp) -> None:
    task = VariableTrackingTask(sp, 4000, num_chains=3, num_hops=3)
    s = task.sample(3)
    assert len(s.answers) == 4 and all(re.fullmatch(r"[A-Z]{5}", n) for n in s.answers)
    value = s.meta["value"]
    assert re.fullmatch(r"\d{5}", value)
    assert s.question == f"Find all variables that are assigned the value {value} in the text above."
    pieces = list(s.document.iter_pieces())
    where = [next(i for i, p in enumerate(pieces) if p.startswith(f"VAR {n} = ")) for n in s.answers]
    assert where == sorted(where)
    assert pieces[where[0]] == f"VAR {s.answers[0]} = {value}\n"
    for prev, name, i in zip(s.answers, s.answers[1:], where[1:]):
        assert pieces[i] == f"VAR {name} = VAR {prev} \n"  # RULER's trailing space
    assert sum(p.startswith("VAR ") for p in pieces) == 12  # 3 chains of 4


def test_variable_tracking_opens_with_rulers_worked_example(sp) -> None:
    s = make_task("vt", sp, 4000).sample(0)
    head = s.document.piece(0)
    example, real = head.split("\n\nMemorize and track", 1)
    assert example.startswith(VT_HEAD + "\n\n")
    assert real == " the chain(s) of variable assignment hidden in the following text.\n\n"
    answer = re.search(r"Question: Find all variables that are assigned the value (\d{5}) in the text above\. Answer: "
                       r"According to the chain\(s\) of variable assignment in the text above, 5 variables are "
                       r"assigned the value \1, they are:  ([A-Z]{3}(?: [A-Z]{3}){4})$", example)
    assert answer and answer.group(1) != s.meta["value"]  # the example tracks another value
    names = answer.group(2).split()
    assert re.search(rf"VAR {names[0]} = {answer.group(1)}\n", example)
    assert all(f"VAR {b} = VAR {a} \n" in example for a, b in zip(names, names[1:]))
    assert 150 < len(sp.encode(example)) <= 500  # RULER sizes its example to 500 tokens
    assert FILLER in example
    # The example takes at most half of the length: none in short documents, nor in vt_plain.
    assert make_task("vt", sp, 400).sample(0).document.piece(0) == VT_HEAD + "\n\n"
    assert make_task("vt_plain", sp, 400).sample(0).document.piece(0) == VT_HEAD + "\n\n"


def test_evaluation_keys_share_no_word_with_training_keys(sp) -> None:
    def splits_of(key: str) -> set[str]:
        """The splits of the (adjective, noun) readings of `key` (hyphens occur inside some words too)."""
        return {word_split(a) + "/" + word_split(key[len(a) + 1:]) for a in ADJECTIVES
                if key.startswith(a + "-") and key[len(a) + 1:] in NOUNS}

    for name in ("niah_multikey", "niah_single_words"):  # keys and word values, asked and distractors
        for split in ("train", "eval"):
            task = make_task(name, sp, 3000, key_split=split)
            keys = {k for i in range(3) for pair in re.findall(r"special magic \w+ for (\S+) is: (\S+)\.",
                                                              task.sample(i).document.text())
                    for k in pair if not k.isdigit()}
            assert len(keys) > (100 if name == "niah_multikey" else 3)
            assert all(splits_of(k) == {f"{split}/{split}"} for k in keys), [(k, splits_of(k)) for k in keys
                                                                            if splits_of(k) != {f"{split}/{split}"}]
    with pytest.raises(ValueError, match="key split"):
        make_task("niah_single", sp, 1000, key_split="test")


def test_multihop_needs_both_gold_paragraphs(sp) -> None:
    task = MultiHopTask(sp, 6000)
    seen = set()
    for i in range(12):
        s = task.sample(i)
        seen.add(s.meta["type"])
        a, b = (span.text for span in s.document.spans)
        answer = s.answers[0]
        # Exactly one gold paragraph states the answer and the other one names the question's subject.
        assert (answer in a) != (answer in b)
        subject = re.fullmatch(r"In (?:which|what) \w+ was (?:the \w+ of )?(.+) born\?", s.question).group(1)
        holder, other = (a, b) if answer in a else (b, a)
        assert subject in other and subject not in holder
        # No distractor reuses a gold paragraph's title.
        pieces = list(s.document.iter_pieces())
        titles = [p.split("\n")[1] for p in pieces]
        gold_titles = [titles[g - 1] for g in s.meta["gold_docs"]]
        assert all(titles.count(t) == 1 for t in gold_titles)
        assert all(p.startswith(f"Document {k + 1}:\n") for k, p in enumerate(pieces))
    assert seen == {"country", "year", "city"}


def test_source_and_laziness(sp) -> None:
    source = SyntheticSource(make_task("niah_single", sp, 1_000_000), num_samples=5, offset=10)
    assert len(source) == 5
    s = source[2]
    assert s.index == 12
    with pytest.raises(IndexError):
        source[5]
    assert isinstance(s.document, HaystackDocument)
    assert len(pickle.dumps(s)) < 4096  # a 1M-token document is a few hundred bytes until streamed
    assert pickle.loads(pickle.dumps(s)) == s


def test_bad_arguments(sp) -> None:
    with pytest.raises(ValueError, match="target_tokens"):
        make_task("vt", sp, 0)
    with pytest.raises(ValueError, match="num_queries"):
        NeedleTask(sp, 1000, num_keys=1, num_queries=2)
    with pytest.raises(ValueError, match="value_kind"):
        NeedleTask(sp, 1000, value_kind="colors")
    with pytest.raises(ValueError, match="question_types"):
        MultiHopTask(sp, 1000, question_types=("weather",))
    with pytest.raises(KeyError, match="unknown task"):
        make_task("nope", sp, 1000)
    with pytest.raises(IndexError):
        make_task("vt", sp, 1000).sample(-1)


def _stream_count(sample, tok, chunk_tokens: int = 5000) -> tuple[int, float]:
    """Token count of a document streamed chunk by chunk, and the seconds it took."""
    t0 = time.perf_counter()
    total = 0
    for chunk in sample.document.iter_tokens(tok, chunk_tokens):
        assert len(chunk) <= chunk_tokens
        total += len(chunk)
    return total, time.perf_counter() - t0


@pytest.mark.parametrize("name", ["niah_single", "multihop_qa"])
def test_one_million_tokens_stream_within_2_percent(sp, name: str) -> None:
    sample = make_task(name, sp, 1_000_000).sample(0)
    total, seconds = _stream_count(sample, sp)
    assert abs(total - 1_000_000) <= 20_000, total
    print(f"{name}: 1M-token document streamed in {seconds:.2f} s ({total} tokens)")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["niah_single", "niah_single_needles", "multihop_qa"])
def test_ten_million_tokens_stream_within_2_percent(sp, name: str) -> None:
    import tracemalloc

    sample = make_task(name, sp, 10_000_000).sample(0)
    tracemalloc.start()
    total, seconds = _stream_count(sample, sp)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert abs(total - 10_000_000) <= 200_000, total
    assert peak < 64 * 2**20, peak  # bounded: a 10M-token text alone would be ~40 MB of str
    print(f"{name}: 10M tokens in {seconds:.1f} s, peak traced memory {peak / 2**20:.1f} MiB")


def test_mixture_interleaves_tasks_round_robin():
    from memagent_jax.data.mixture import MixtureSource

    class _Listing:
        def __init__(self, name, n):
            self.items = [f"{name}{i}" for i in range(n)]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    # Round robin until the longer source is read once; the shorter one cycles.
    mix = MixtureSource([_Listing("a", 3), _Listing("b", 5)])
    assert len(mix) == 10
    assert [mix[i] for i in range(10)] == ["a0", "b0", "a1", "b1", "a2", "b2", "a0", "b3", "a1", "b4"]
    with pytest.raises(IndexError):
        mix[10]
    with pytest.raises(ValueError, match="at least one"):
        MixtureSource([])


def test_digit_needles_are_single_digits():
    from memagent_jax.data.tasks import make_task

    class _Chars:
        def encode(self, text, add_bos=False):
            return [ord(c) for c in text]

    task = make_task("niah_single_digit", _Chars(), 400)
    for index in range(5):
        sample = task.sample(index)
        (answer,) = sample.answers
        assert len(answer) == 1 and answer.isdigit()
        assert f"is: {answer}." in sample.document.text()
