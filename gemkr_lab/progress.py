"""Progress of long work: a bar on a terminal, plain lines in a log (a leaf: imports nothing of gemkr_lab).

`tqdm(...)` is a drop-in for `tqdm.auto.tqdm` as this package calls it (`disable=None`: decide by the
terminal). Where the bar would be hidden because stderr is not a terminal (a file, a pipe, nohup, Slurm, CI),
it prints lines to stdout instead, which is what a user tails: one when another tenth of the total is done (at
most one a second) or `GEMKR_LAB_PROGRESS_SECONDS` (default 30) have passed since the last, and one at the end:

    regions: 60/120 images (50%), 4.1 s, 14.6 images/s, ETA 4 s
    regions: 120/120 images (100%) done in 8.2 s, 14.6 images/s

`disable=True` shows nothing; `disable=False` forces tqdm's bar.
"""

import os
import sys
import time
from typing import Any

INTERVAL_ENV = "GEMKR_LAB_PROGRESS_SECONDS"
MIN_GAP_SECONDS = 1.0


def tqdm(iterable: Any = None, *args: Any, disable: bool | None = None, **kwargs: Any) -> Any:
    """On a terminal (or when forced) tqdm's bar; where the bar would not show, `LineProgress`."""
    if disable is None and not _is_terminal(sys.stderr):
        return LineProgress(iterable, *args, **kwargs)
    from tqdm.auto import tqdm as bar

    return bar(iterable, *args, disable=disable, **kwargs)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def interval_seconds() -> float:
    """The longest time between two lines (`GEMKR_LAB_PROGRESS_SECONDS`, default 30)."""
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, "30")))
    except ValueError:
        return 30.0


def duration(seconds: float) -> str:
    """`8.2 s`, `4 min 05 s`, `2 h 03 min`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class LineProgress:
    """The part of tqdm's interface this package uses (iterate, `update`, `write`, postfix, context), as lines."""

    def __init__(
        self,
        iterable: Any = None,
        desc: str | None = None,
        total: float | None = None,
        unit: str = "it",
        file: Any = None,
        **_: Any,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.desc, self.total, self.unit = iterable, desc or "progress", total, unit
        self.file = file  # None: sys.stdout at the time of writing (pytest's capture swaps it)
        self.n = 0
        self.disable = False
        self.postfix = ""
        self.start = self._last = time.monotonic()
        self._tenth = 0
        self._closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        """Count `n` more; print a line when due."""
        self.n += n
        now = time.monotonic()
        tenth = int(10 * self.n / self.total) if self.total else 0
        new_tenth = tenth > self._tenth and now - self._last >= MIN_GAP_SECONDS
        if (new_tenth or now - self._last >= interval_seconds()) and not (self.total and self.n >= self.total):
            self._tenth = tenth
            self._emit(self.line(now))

    def line(self, now: float | None = None, done: bool = False) -> str:
        """The progress line as of `now`."""
        elapsed = (now if now is not None else time.monotonic()) - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        count = (
            f"{self.n:g}/{self.total:g} {self.unit} ({100 * self.n / self.total:.0f}%)"
            if self.total
            else (f"{self.n:g} {self.unit}")
        )
        if done:
            text = f"{self.desc}: {count} done in {duration(elapsed)}, {rate:.3g} {self.unit}/s"
        else:
            text = f"{self.desc}: {count}, {duration(elapsed)}, {rate:.3g} {self.unit}/s"
            if self.total and rate > 0:
                text += f", ETA {duration(max(self.total - self.n, 0) / rate)}"
        return text + (f", {self.postfix}" if self.postfix else "")

    def close(self) -> None:
        """The closing line (once)."""
        if not self._closed:
            self._closed = True
            self._emit(self.line(done=True))

    def write(self, text: str) -> None:
        """A message of its own, as `tqdm.write`."""
        self._emit(text)

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        """Text appended to the next lines."""
        self.postfix = str(text)

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        """`key=value` pairs appended to the next lines."""
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        """Rename the work."""
        self.desc = desc or self.desc

    def refresh(self) -> None:
        """Nothing to redraw."""

    def _emit(self, text: str) -> None:
        self._last = time.monotonic()
        print(text, file=self.file or sys.stdout, flush=True)
