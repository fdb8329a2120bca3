"""Progress of long work (training epochs, sampling iterations) for the CLI and the API.

On a terminal a tqdm bar (rate, ETA, the numbers the caller passes); elsewhere (a log file, CI) a plain line at most
every ``every`` seconds; nothing when quiet. Callers update it at points where reading numbers from the device is
already paid for, so progress never adds a host synchronisation per step.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1:15``; ``3725`` -> ``1:02:05``."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """``update(done, **numbers)`` with the absolute position; ``close()`` at the end (also as a context manager)."""

    def __init__(self, total: int, desc: str, unit: str = "it", quiet: bool = False, stream: TextIO | None = None,
                 every: float = 30.0) -> None:
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        if not quiet and _isatty(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=False, dynamic_ncols=True,
                            mininterval=0.2)

    def due(self) -> bool:
        """Whether an update now would be shown: callers compute costly numbers (a device read) only then."""
        if self.quiet:
            return False
        interval = 0.2 if self.bar is not None else self.every
        return time.perf_counter() - self.last >= interval

    def update(self, done: int, **numbers: float | str) -> None:
        if self.quiet:
            return
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in numbers.items()}
        now = time.perf_counter()
        if self.bar is not None:
            self.last = now
            self.bar.update(done - self.bar.n)
            if shown:
                self.bar.set_postfix(shown, refresh=False)
            return
        if now - self.last < self.every and done < self.total:
            return
        self.last = now
        elapsed = now - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        extra = "".join(f", {k} {v}" for k, v in shown.items())
        left = f", {format_seconds(eta)} left" if eta == eta and done < self.total else ""
        print(f"{self.desc}: {done}/{self.total} {self.unit} ({rate:.3g} {self.unit}/s{left}{extra})",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
