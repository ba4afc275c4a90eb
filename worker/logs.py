"""Structured logs: JSON in production, readable on a terminal, never a secret.

Every process calls :func:`configure` once with its settings. The redactor
replaces any configured secret value wherever it appears (event text, fields,
exception text), and masks fields whose names say they hold one.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

import structlog

REDACTED = "***"
_SECRET_FIELD = re.compile(r"(pass(word)?|secret|api_?key|token|authorization)", re.I)
# user:password@ inside any URL.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@", re.I)


class Redactor:
    """structlog processor removing secrets from an event dict (and ``scrub``
    for any text)."""

    def __init__(self, secrets: Iterable[str]):
        # Longest first, so a secret containing another is removed whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        # One pass over the text for all of them (the senders scrub every
        # answer they store: a loop per secret cost them 6% of their time).
        self._pattern = re.compile("|".join(map(re.escape, self.secrets))) if self.secrets else None

    def scrub(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(REDACTED, text)
        if "://" in text:
            text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
        return text

    def _value(self, key: str, value: Any) -> Any:
        if _SECRET_FIELD.search(key) and value:
            return REDACTED
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self._value(str(k), v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._value(key, v) for v in value]
        if isinstance(value, BaseException):
            return self.scrub(f"{type(value).__name__}: {value}")
        return value

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        return {k: self._value(k, v) for k, v in event.items()}


def configure(settings, *, stream=None) -> None:
    """Set up structlog (and stdlib logging for libraries) for this process."""
    stream = stream or sys.__stderr__
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    level = logging.getLevelName(settings.log_level.upper())
    if not isinstance(level, int):
        level = logging.INFO
    redactor = Redactor(settings.secrets())
    renderer = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    # Libraries (celery, kombu, httpx) log through stdlib: same redaction.
    handler = logging.StreamHandler(stream)
    handler.addFilter(_StdlibRedactFilter(redactor))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.INFO))
    # httpx logs every request at INFO, with the URL: noise at our volume.
    logging.getLogger("httpx").setLevel(logging.WARNING)


class Throttle:
    """Lets one line per key through per interval: a condition that hits every
    batch (a wrong endpoint, Redis out of memory) is said loudly once per
    interval by each process, not once per command."""

    def __init__(self, interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}

    def __call__(self, key: str) -> bool:
        """True if a line for ``key`` may be written now."""
        now = self.clock()
        if now - self._last.get(key, -self.interval_s) < self.interval_s:
            return False
        self._last[key] = now
        return True


class _StdlibRedactFilter(logging.Filter):
    def __init__(self, redactor: Redactor):
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor.scrub(record.getMessage())
        record.args = None
        return True
