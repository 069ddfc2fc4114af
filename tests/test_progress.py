"""The progress display: plain lines for logs, a tqdm bar on a terminal, nothing when off."""

from __future__ import annotations

import io
import time

import pytest

from pipeline.progress import progress


def test_lines_mode_prints_plain_periodic_lines_with_rate_and_loss():
    out = io.StringIO()
    bar = progress(range(50), total=500, desc="fold 0 epoch 1/2", mode="lines", file=out)
    seen = []
    for item in bar:
        seen.append(item)
        bar.update(10, loss=2.0 - item / 50)
    text = out.getvalue()
    assert seen == list(range(50))
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert 9 <= len(lines) <= 11  # about every 10%
    assert all(line.startswith("fold 0 epoch 1/2: ") for line in lines)
    assert "500/500 img" in lines[-1] and "100%" in lines[-1]
    assert all("img/s" in line and "loss " in line for line in lines)
    assert bar.running_loss == pytest.approx(sum(2.0 - i / 50 for i in range(50)) / 50)


def test_lines_mode_without_updates_counts_items_and_ends_with_a_line():
    out = io.StringIO()
    assert list(progress(iter(range(7)), desc="x", mode="lines", file=out, unit="it")) == list(range(7))
    text = out.getvalue()
    assert "\r" not in text and text.splitlines()[-1].startswith("x: 7 it")


def test_auto_mode_on_a_non_terminal_gives_lines():
    out = io.StringIO()
    list(progress(range(20), 20, "auto", mode="auto", file=out))
    assert "\r" not in out.getvalue() and "20/20" in out.getvalue()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_mode_on_a_terminal_gives_a_bar_but_lines_under_parallel_make(monkeypatch):
    monkeypatch.delenv("MAKEFLAGS", raising=False)
    with progress(range(3), mode="auto", file=_Terminal()) as bar:
        assert bar.mode == "bar"
    monkeypatch.setenv("MAKEFLAGS", " -j2 --jobserver-auth=fifo:/tmp/GMfifo1")
    with progress(range(3), mode="auto", file=_Terminal()) as bar:
        assert bar.mode == "lines"


def test_off_prints_nothing(capsys):
    out = io.StringIO()
    bar = progress(range(30), 30, "quiet", mode="off", file=out)
    for _ in bar:
        bar.update(4, loss=1.0)
    assert out.getvalue() == ""
    list(progress(range(30), 30, "quiet", mode="off"))  # default stream: stderr
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_bar_mode_draws_a_tqdm_bar_with_rate_and_loss():
    out = io.StringIO()
    bar = progress(range(3), total=96, desc="train", mode="bar", file=out)
    for _ in bar:
        time.sleep(0.25)  # tqdm redraws at most every 0.2 s
        bar.update(32, loss=0.5)
    text = out.getvalue()
    assert "\r" in text and "img/s" in text
    assert "train" in text and "img" in text and "loss=0.5000" in text


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="report.progress"):
        progress(range(3), mode="loud")
