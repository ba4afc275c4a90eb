"""A one-line progress display for long work, on terminals only."""

from __future__ import annotations

import sys
import time
from typing import IO


class Progress:
    """``label: 12,000/50,000 (24%) 8,300/s`` redrawn at most 10 times a second."""

    def __init__(
        self, label: str, total: int | None = None, stream: IO[str] | None = None, enabled: bool | None = None
    ):
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.started = time.monotonic()
        self._last_draw = 0.0
        self.count = 0

    def update(self, count: int, force: bool = False) -> None:
        self.count = count
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last_draw < 0.1):
            return
        self._last_draw = now
        rate = count / max(now - self.started, 1e-9)
        if self.total:
            pct = 100 * count / self.total
            text = f"{self.label}: {count:,}/{self.total:,} ({pct:.0f}%) {rate:,.0f}/s"
        else:
            text = f"{self.label}: {count:,} {rate:,.0f}/s"
        self.stream.write("\r\x1b[2K" + text)
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.update(self.count, force=True)
            self.stream.write("\n")
            self.stream.flush()
