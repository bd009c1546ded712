"""A one-line progress report on stderr for long loops over images."""

from __future__ import annotations

import sys
import time


class Progress:
    """One status line: rewritten in place on a terminal, printed every `interval` s otherwise."""

    def __init__(self, total: int, label: str, enabled: bool = True, interval: float = 10.0):
        self.total, self.label, self.enabled, self.interval = total, label, enabled, interval
        self.done = 0
        self.start = self.last = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, done: int) -> None:
        self.done = done
        now = time.perf_counter()
        finished = done >= self.total
        if not self.enabled or not (self.tty or finished or now - self.last >= self.interval):
            return
        self.last = now
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        line = (
            f"eval {self.label}: {done}/{self.total} images, {rate:.2f} img/s, "
            f"elapsed {elapsed:.0f}s, eta {eta:.0f}s"
        )
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if finished else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
