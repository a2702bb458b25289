"""Progress bars: whole sparse lines in logs, in-place redraws on a terminal, silence off process 0, and the
answer bar counting chunks answered."""

import io
import time

import jax

from memagent_jax.run.answering import ChunkProgress
from memagent_jax.run.progress import progress_bar


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_log_lines_are_whole_and_sparse():
    stream = io.StringIO()
    bar = progress_bar(1000, "train", unit="step", stream=stream, log_interval_s=3600)
    for i in range(1000):
        bar.set_postfix(loss=1.0 / (i + 1), refresh=False)
        bar.update(1)
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    # The first line when the bar starts and the last one at close; nothing between within the interval.
    assert len(lines) == 2
    assert lines[0].startswith("train:   0%") and "0/1000" in lines[0]
    assert lines[1].startswith("train: 100%") and "1000/1000" in lines[1] and "loss=0.001" in lines[1]
    assert "step/s" in lines[1] or "s/step" in lines[1]


def test_log_lines_come_every_interval():
    stream = io.StringIO()
    bar = progress_bar(5, "eval", stream=stream, log_interval_s=0.05)
    for _ in range(5):
        time.sleep(0.06)
        bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert [line.split("|")[2].split()[0] for line in lines[:6]] == ["0/5", "1/5", "2/5", "3/5", "4/5", "5/5"]


def test_a_resumed_bar_starts_at_its_step():
    stream = io.StringIO()
    bar = progress_bar(100, "rl", stream=stream, initial=40)
    bar.close()
    assert "40/100" in stream.getvalue().splitlines()[0]


def test_terminal_bar_redraws_in_place():
    stream = FakeTTY()
    bar = progress_bar(4, "eval", stream=stream)
    for _ in range(4):
        bar.update(1)
    bar.close()
    text = stream.getvalue()
    assert text.count("\r") >= 2 and text.count("\n") == 1 and text.endswith("\n")
    assert "4/4" in text.split("\r")[-1]


def test_silent_when_disabled_or_off_process_zero(monkeypatch):
    stream = FakeTTY()
    with progress_bar(10, stream=stream, enabled=False) as bar:
        bar.update(10)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    with progress_bar(10, stream=stream) as bar:
        bar.update(10)
    assert stream.getvalue() == ""


def test_answer_bar_counts_chunks_answered_not_bytes_read(capsys):
    # A small document is read whole before the first chunk is answered: 300 tokens in chunks of 50.
    progress = ChunkProgress(total_bytes=1200, chunk_size=50)
    progress.bytes_read = 1200
    progress.tokens_read(300)
    progress.chunk_done(1)
    progress.bar.refresh()
    first = capsys.readouterr().err.splitlines()[-1]
    assert "1/6" in first and " 17%" in first and "300 tokens read" in first
    for chunk in range(2, 7):
        progress.chunk_done(chunk)
    progress.close()
    assert "6/6" in capsys.readouterr().err.splitlines()[-1]


def test_answer_bar_total_is_extrapolated_from_the_share_read(capsys):
    progress = ChunkProgress(total_bytes=4000, chunk_size=50)
    progress.bytes_read = 1000  # a quarter of the file gave 100 tokens: about 400 in all, 8 chunks
    progress.tokens_read(100)
    progress.chunk_done(1)
    assert progress.bar.total == 8 and progress.bar.n == 1
    progress.close()
