"""The log redactor (secrets out of every event, field and exception) and the
throttle that says a recurring condition once per interval. No Redis."""

from __future__ import annotations

import io
import json
import logging

import structlog

from worker.logs import REDACTED, Redactor, Throttle, _StdlibRedactFilter

KEY = "xs-api-key-123"
TOKEN = "bp.token/with+regex*chars"


def test_scrub_replaces_every_configured_secret_wherever_it_is():
    redactor = Redactor([KEY, TOKEN, ""])
    text = f"401 from backend: Authorization: Basic {KEY}; bearer {TOKEN}; again {KEY}"
    assert (
        redactor.scrub(text)
        == f"401 from backend: Authorization: Basic {REDACTED}; bearer {REDACTED}; again {REDACTED}"
    )


def test_a_secret_containing_another_is_removed_whole():
    redactor = Redactor(["abc", "abcdef"])
    assert redactor.scrub("x abcdef y abc z") == f"x {REDACTED} y {REDACTED} z"


def test_secrets_are_matched_literally_not_as_patterns():
    redactor = Redactor(["a.b", TOKEN])
    assert redactor.scrub("axb a.b") == f"axb {REDACTED}"
    assert redactor.scrub("bp.tokenXwith+regex*chars") == "bp.tokenXwith+regex*chars"


def test_passwords_in_urls_are_masked_even_when_not_configured():
    redactor = Redactor([])
    assert redactor.scrub("connect redis://grants:s3cret@10.0.0.5:6379/0 failed") == (
        f"connect redis://grants:{REDACTED}@10.0.0.5:6379/0 failed"
    )
    assert redactor.scrub("rediss://:pw@host:6380/0") == f"rediss://:{REDACTED}@host:6380/0"
    assert redactor.scrub("http://host/path?a=b") == "http://host/path?a=b"  # nothing to mask
    assert redactor.scrub("no secret here") == "no secret here"


def test_event_fields_named_as_secrets_are_masked_and_values_scrubbed():
    redactor = Redactor([KEY])
    event = {
        "event": f"call failed with {KEY}",
        "password": "hunter2",
        "apiKey": "anything",
        "authorization": "Basic Zm9v",
        "token": "",  # nothing to hide: left as it is
        "attempt": 3,
        "headers": {"Authorization": "Bearer t", "accept": f"json {KEY}"},
        "errors": [f"echo {KEY}", 7],
        "exc": RuntimeError(f"body: {KEY}"),
    }
    out = redactor(None, "info", event)
    assert out == {
        "event": f"call failed with {REDACTED}",
        "password": REDACTED,
        "apiKey": REDACTED,
        "authorization": REDACTED,
        "token": "",
        "attempt": 3,
        "headers": {"Authorization": REDACTED, "accept": f"json {REDACTED}"},
        "errors": [f"echo {REDACTED}", 7],
        "exc": f"RuntimeError: body: {REDACTED}",
    }
    assert event["password"] == "hunter2"  # the caller's dict is not changed


def test_redactor_in_a_structlog_chain_keeps_the_secret_out_of_the_rendered_line():
    out = io.StringIO()
    log = structlog.wrap_logger(
        structlog.PrintLogger(file=out),
        processors=[Redactor([KEY]), structlog.processors.JSONRenderer()],
    )
    log.info("batch failed", error=f"403: key {KEY} refused", api_key=KEY, project_id=7)
    line = out.getvalue()
    assert KEY not in line
    assert json.loads(line) == {
        "event": "batch failed",
        "error": f"403: key {REDACTED} refused",
        "api_key": REDACTED,
        "project_id": 7,
    }


def test_stdlib_lines_of_libraries_are_scrubbed_with_their_arguments():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(_StdlibRedactFilter(Redactor([KEY])))
    logger = logging.getLogger("tests.unit.worker.test_logs.library")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("HTTP Request: %s %s", "POST", f"https://m:{KEY}@store.example/api")
    finally:
        logger.removeHandler(handler)
    assert out.getvalue() == f"HTTP Request: POST https://m:{REDACTED}@store.example/api\n"


class Clock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_throttle_lets_one_line_per_key_per_interval():
    clock = Clock(0.0)  # a monotonic clock may start near 0: the first line still goes
    throttle = Throttle(30.0, clock=clock)
    assert throttle("lane grant:7") is True
    assert throttle("lane grant:7") is False
    assert throttle("lane grant:8") is True  # another key has its own interval
    clock.now = 29.9
    assert throttle("lane grant:7") is False
    clock.now = 30.0
    assert throttle("lane grant:7") is True
    clock.now = 45.0  # measured from the last line let through, not the last asked
    assert throttle("lane grant:7") is False
    clock.now = 60.0
    assert throttle("lane grant:7") is True
    assert throttle("lane grant:8") is True
