"""Structured logs: JSON in production, readable on a terminal, never a secret.

Every process calls :func:`configure` once with its settings. The redactor
replaces any configured secret value wherever it appears (event text, fields,
exception text), and masks fields whose names say they hold one.
"""

from __future__ import annotations

import io
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, TextIO

import structlog

from worker.settings import Settings

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


# The process's own streams, as it started: logs are written there even
# after :func:`capture_prints` replaced ``sys.stdout`` and ``sys.stderr``.
_STDOUT: Any = sys.__stdout__
_STDERR: Any = sys.__stderr__


def log_format(settings: Settings, stream: TextIO | None = None) -> str:
    """``json`` or ``console``: GRANTS_LOG_FORMAT, ``auto`` deciding by the stream."""
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "console" if (stream or _STDERR).isatty() else "json"
    return fmt


def configure(settings: Settings, *, stream: TextIO | None = None) -> None:
    """Set up structlog, and stdlib logging for libraries (Celery, kombu,
    httpx), for this process: one format for both, so in JSON mode every line
    is a JSON object, a library's as much as ours."""
    stream = stream or _STDERR
    fmt = log_format(settings, stream)
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
    # Libraries log through stdlib: the same fields, redaction and renderer
    # (structlog's ProcessorFormatter), plus the logger's name.
    handler = logging.StreamHandler(stream)
    handler.addFilter(_StdlibRedactFilter(redactor))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.processors.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redactor,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.INFO))
    # httpx logs every request at INFO, with the URL: noise at our volume.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Python's warnings (DeprecationWarning and the like) become log lines.
    logging.captureWarnings(True)


class _LinesToLog(io.TextIOBase):
    """A text stream whose every line becomes one log record, so what a
    library prints (Celery's shutdown notices, a stray ``print``) is a log
    line in the format of the others."""

    def __init__(self, name: str, level: int, fallback: TextIO):
        self.logger = logging.getLogger(name)
        self.level = level
        self.fallback = fallback
        self._pending = ""
        # Per thread: another thread printing while this one logs is still a
        # log line (redacted), not raw text on the real stream.
        self._local = threading.local()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int | None:  # type: ignore[override]
        # None, not the real descriptor: Celery writes its notices (the
        # shutdown one) straight to a stream's descriptor when it has one.
        return None

    def write(self, text: str) -> int:
        if getattr(self._local, "emitting", False):  # logging itself failed and says so: say it plainly
            return self.fallback.write(text)
        self._pending += text
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        if self._pending:
            line, self._pending = self._pending, ""
            self._emit(line)

    def _emit(self, line: str) -> None:
        if not line.strip():
            return
        self._local.emitting = True
        try:
            self.logger.log(self.level, line.rstrip())
        finally:
            self._local.emitting = False


def capture_prints() -> None:
    """JSON mode in a worker: what is printed to stdout or stderr (Celery
    writes some notices to ``sys.__stdout__`` itself) becomes log lines
    (loggers ``stdout``, ``stderr``), written to the process's stderr."""
    sys.stdout = sys.__stdout__ = _LinesToLog("stdout", logging.INFO, _STDOUT)  # type: ignore[assignment,misc]
    sys.stderr = sys.__stderr__ = _LinesToLog("stderr", logging.WARNING, _STDERR)  # type: ignore[assignment,misc]


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
