"""Progress display for long loops: a tqdm bar on a terminal, plain lines in a log, or nothing.

    bar = progress(loader, total=len(loader.dataset), desc="fold 0 epoch 1/8", mode=cfg.report.progress)
    for images, targets in bar:
        loss = ...
        bar.update(len(targets), loss=loss.item())   # images done and this batch's mean loss

Modes (``report.progress``):

* ``auto``: ``bar`` when the stream (stderr by default) is a terminal, else ``lines``; also
  ``lines`` under a parallel ``make -jN`` (a jobserver in MAKEFLAGS), where several processes
  share the terminal and their bars would overwrite each other;
* ``bar``: a tqdm bar with the rate in units per second and the running mean loss as postfix;
* ``lines``: one plain line every ~10% of `total` (or every `every_seconds` when the total is
  unknown or progress is slow) and one at the end; no carriage returns, so log files and CI
  output stay readable;
* ``off``: nothing.

Without any :meth:`Progress.update` call each item counts as one unit, so
``progress(range(n), n, "x")`` works as a plain wrapper too. A loop that reports an item only after the
next one is fetched (training reads a batch's loss one step late) passes ``counted=True``: iterating then
counts nothing and does not end the display; the loop's updates count, and leaving its ``with`` block ends it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TextIO

__all__ = ["progress", "Progress", "PROGRESS_MODES"]

PROGRESS_MODES = ("auto", "bar", "lines", "off")


def _resolve_mode(mode: str, file: TextIO) -> str:
    if mode not in PROGRESS_MODES:
        raise ValueError(f"report.progress: '{mode}' is not one of: {', '.join(PROGRESS_MODES)}")
    if mode != "auto":
        return mode
    if "--jobserver" in os.environ.get("MAKEFLAGS", ""):
        return "lines"
    isatty = getattr(file, "isatty", None)
    try:
        return "bar" if isatty is not None and isatty() else "lines"
    except (ValueError, OSError):  # a closed or odd stream
        return "lines"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Iterate over it; call :meth:`update` with units done (and a loss) to drive the display."""

    def __init__(self, iterable: Iterable, total: int | None = None, desc: str = "", mode: str = "auto",
                 unit: str = "img", file: TextIO | None = None, every_seconds: float = 30.0,
                 every_fraction: float = 0.1, counted: bool = False):
        self.iterable = iterable
        self.file = file if file is not None else sys.stderr
        self.mode = _resolve_mode(mode, self.file)
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total, self.desc, self.unit = total, desc, unit
        self.every_seconds, self.every_fraction = every_seconds, every_fraction
        self.n = 0
        self.loss_sum, self.loss_count = 0.0, 0
        self._manual = self._counted = counted
        self._closed = False
        self._start = time.monotonic()
        self._last_line_time = self._start
        self._last_line_n = 0
        self._bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.file, leave=False,
                             dynamic_ncols=True, mininterval=0.2)

    # ---- driving ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator:
        if self._counted:                 # the caller counts and closes: its last update follows the last item
            yield from self.iterable
            return
        try:
            for item in self.iterable:
                before = self.n
                yield item
                if not self._manual and self.n == before:
                    self._advance(1)
        finally:
            self.close()

    def update(self, n: int = 1, loss: float | None = None) -> None:
        """`n` more units done; `loss` (their mean) joins the running mean shown as postfix."""
        self._manual = True
        if loss is not None:
            self.loss_sum += float(loss) * n
            self.loss_count += n
        self._advance(n)

    @property
    def running_loss(self) -> float | None:
        return self.loss_sum / self.loss_count if self.loss_count else None

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self._start
        return self.n / elapsed if elapsed > 0 else 0.0

    def _advance(self, n: int) -> None:
        self.n += n
        if self._bar is not None:
            if self.running_loss is not None:
                self._bar.set_postfix(loss=f"{self.running_loss:.4f}", refresh=False)
            self._bar.update(n)
        elif self.mode == "lines" and self._line_due():
            self._line()

    def _line_due(self) -> bool:
        now = time.monotonic()
        if now - self._last_line_time >= self.every_seconds:
            return True
        if self.total:
            step = max(1, round(self.total * self.every_fraction))
            return self.n // step > self._last_line_n // step
        return False

    def _line(self) -> None:
        elapsed = time.monotonic() - self._start
        parts = []
        if self.total:
            parts.append(f"{100 * self.n / self.total:3.0f}% {self.n}/{self.total} {self.unit}")
        else:
            parts.append(f"{self.n} {self.unit}")
        parts.append(f"{self.rate:.1f} {self.unit}/s")
        if self.running_loss is not None:
            parts.append(f"loss {self.running_loss:.4f}")
        parts.append(f"{_clock(elapsed)} elapsed")
        prefix = f"{self.desc}: " if self.desc else ""
        print(prefix + ", ".join(parts), file=self.file, flush=True)
        self._last_line_time, self._last_line_n = time.monotonic(), self.n

    def close(self) -> None:
        """End the display (the final line in ``lines`` mode); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines" and self.n != self._last_line_n:
            self._line()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(iterable: Iterable, total: int | None = None, desc: str = "", mode: str = "auto",
             unit: str = "img", file: TextIO | None = None, every_seconds: float = 30.0,
             counted: bool = False) -> Progress:
    """Wrap `iterable` with a progress display; see the module docstring for the modes and `counted`."""
    return Progress(iterable, total=total, desc=desc, mode=mode, unit=unit, file=file,
                    every_seconds=every_seconds, counted=counted)
