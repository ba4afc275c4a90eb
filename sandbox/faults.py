"""Failures the fake backends inject on purpose: latency, errors, drops, hangs, odd answers.

Every API call of every backend (Xsolla inventory, Backpack, PlayFab)
consults the faults once, after its latency and its auth check, in this order:

1. an outage in progress that covers the call (it answers 503);
2. the ``script``: one-shot actions, each consumed by one call. A call takes
   the first pending action, in script order, that matches it: one without
   ``path``, or one whose ``path`` is a substring of the call's URL path.
   Actions that do not match the call stay pending, in their order; a call
   that matches none goes on to the random rates;
3. random rates (``rate_5xx``, ``rate_429``, ``rate_drop``) drawn from a
   seeded ``random.Random``, so a benchmark's chaos is reproducible run to run.

The config (``latency_ms``, the rates, ``retry_after_s``, ``seed``,
``script``) is replaced whole at runtime with ``PUT /sandbox/faults``; keys
left out take their defaults (no fault). A bad config is refused with 422 and
a message naming the field (``script.0.status: ...``). ``GET /sandbox/faults``
shows the config with the script still pending (consumed actions are gone)
and ``outage_remaining_s`` (``outages``: each outage in progress, with its
``path``). Injections are counted per kind under ``faults`` in
``GET /sandbox/stats`` (``POST /sandbox/reset`` zeroes them).

Script actions
--------------

Any action may carry ``"path": "<substring>"``, e.g. ``"GrantItemsToUsers"``,
``"GetUserInventory"``, ``"/inventory/revoke"``, ``"/virtual_items"``: only a
call whose URL path contains it takes the action. Without ``path`` the next
call takes it.

Answered before anything is applied (the client may safely retry):

- ``{"status": N}``, N from 300 to 599: answer N with the backend's own error
  body: Xsolla ``{"statusCode": N, "errorCode": 0, "errorMessage": "[0401]:
  <reason phrase> (sandbox fault)"}``, Backpack ``{"message_id", "message":
  "HTTP N (sandbox fault)"}``, PlayFab's ApiErrorWrapper (429
  ``APIRequestLimitExceeded`` with ``retryAfterSeconds``, 500
  ``InternalServerError``, 502/504 ``DownstreamServiceUnavailable``, 503
  ``ServiceUnavailable``, any other ``UnknownError``). Options:

  - ``"retry_after": S`` (429 only): ``Retry-After: S``; a 429 without it
    sends the config's ``retry_after_s``;
  - ``"location": "<url>"`` (3xx only): the ``Location`` header every 3xx
    carries, default ``https://example.invalid/moved``;
  - ``"body": "<text>"``: answer exactly this body instead of the backend's
    error, ``application/json`` if it parses as JSON, else ``text/plain``
    (a proxy's ``Not Found``, Xsolla's own item 404, a 413 page);
  - ``"echo_headers": true``: the body (``text/plain``) is a status line and
    then every request header, ``name: value`` one a line, verbatim,
    credentials included (``authorization``, ``x-secretkey``), as a
    misconfigured proxy answers. ``body`` and ``echo_headers`` exclude each
    other.

- ``{"action": "outage", "seconds": S}``: this call answers 503, and so does
  every call for S seconds; with ``path``, only the calls whose path contains
  it (an outage of one backend while the others answer).

Applied first, then:

- ``{"action": "drop"}``: the connection is closed without a response;
- ``{"action": "hang", "seconds": S}``: the answer comes S seconds late;
- ``{"action": "apply", "status": N}``: the answer is N instead of the normal
  one, shaped as for ``{"status": N}`` (its options included): e.g. a 500
  after applying;
- ``{"action": "pad", "bytes": N}``: the normal answer with a ``"padding"``
  field of N bytes (``"xxx..."``) added to its JSON object. A JSON array
  (Backpack's answers) gets N bytes of whitespace instead, so it parses to
  the same items; an empty body (Backpack's 204) stays empty. N is at most
  256 MiB;
- ``{"action": "wrong_user"}``: the normal answer, but naming someone else
  (``"someone-else"``): each operation's ``user.id`` in an Xsolla inventory
  answer (purchase, reward, revoke), each result's ``PlayFabId`` in a
  PlayFab ``GrantItemsToUsers`` answer. Other answers, and error answers,
  are left as they are;
- ``{"action": "pass"}``: nothing; the call goes through untouched (a script
  can so target the Nth call).

Counted kinds (``faults`` in ``/sandbox/stats``): the status of an answer
given before applying, scripted or random (``"429"``, ``"503"``, ``"302"``);
``"outage"`` for each call an outage answered; ``"drop"``, ``"hang"``,
``"pad"``, ``"wrong_user"``, ``"pass"``; ``"apply.N"`` (e.g. ``"apply.500"``).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_LOCATION = "https://example.invalid/moved"
# Who a "wrong_user" answer names instead of the caller's user.
WRONG_USER_ID = "someone-else"
# A 50 MB answer is what the tests need; the cap keeps a typo from asking
# the sandbox for gigabytes of memory.
MAX_PAD_BYTES = 256 * 1024 * 1024

ActionName = Literal["drop", "hang", "outage", "pass", "apply", "pad", "wrong_user"]
# Actions whose answer a "status" (and its options) shapes.
_WITH_STATUS: frozenset[str | None] = frozenset({None, "apply"})


class ScriptAction(BaseModel):
    """One scripted one-shot fault; the module docstring lists the kinds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = Field(default=None, min_length=1)
    action: ActionName | None = None
    status: int | None = Field(default=None, ge=300, le=599)
    retry_after: int | None = Field(default=None, ge=0)
    location: str | None = Field(default=None, min_length=1)
    body: str | None = None
    echo_headers: bool = False
    seconds: float | None = Field(default=None, ge=0)
    # "bytes" in JSON; a field named bytes would shadow the builtin here.
    pad_bytes: int | None = Field(
        default=None, ge=0, le=MAX_PAD_BYTES, validation_alias="bytes", serialization_alias="bytes"
    )

    @model_validator(mode="after")
    def _fits_its_kind(self) -> ScriptAction:
        # Each message names the field, so a PUT's 422 says what to fix.
        action = self.action
        if action in _WITH_STATUS:
            if self.status is None:
                raise ValueError('"apply" needs "status"' if action else 'give "status" or "action"')
        elif self.status is not None:
            raise ValueError(f'"status" does not go with "action": "{action}"')
        needs_seconds = action in ("hang", "outage")
        if needs_seconds and self.seconds is None:
            raise ValueError(f'"{action}" needs "seconds"')
        if not needs_seconds and self.seconds is not None:
            raise ValueError('"seconds" only goes with "hang" or "outage"')
        if (action == "pad") != (self.pad_bytes is not None):
            raise ValueError('"pad" needs "bytes"' if action == "pad" else '"bytes" only goes with "pad"')
        if self.retry_after is not None and self.status != 429:
            raise ValueError('"retry_after" only goes with "status": 429')
        if self.location is not None and not (self.status is not None and 300 <= self.status < 400):
            raise ValueError('"location" only goes with a 3xx "status"')
        if self.status is None and (self.body is not None or self.echo_headers):
            raise ValueError('"body" and "echo_headers" only go with "status"')
        if self.body is not None and self.echo_headers:
            raise ValueError('give at most one of "body" and "echo_headers"')
        return self


class FaultConfig(BaseModel):
    """The whole fault configuration; every field defaults to "no fault"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: float = Field(default=0, ge=0)
    rate_5xx: float = Field(default=0, ge=0, le=1)
    rate_429: float = Field(default=0, ge=0, le=1)
    # Retry-After is delta-seconds, an integer by RFC 9110.
    retry_after_s: int = Field(default=0, ge=0)
    rate_drop: float = Field(default=0, ge=0, le=1)
    seed: int = 0
    script: list[ScriptAction] = Field(default_factory=list)

    @model_validator(mode="after")
    def _rates_fit(self) -> FaultConfig:
        # One uniform draw is split into bands, so the bands must fit in [0, 1).
        if self.rate_5xx + self.rate_429 + self.rate_drop > 1:
            raise ValueError("rate_5xx + rate_429 + rate_drop must be at most 1")
        return self


class Injection(NamedTuple):
    """What to do to one API call.

    ``action`` ``"answer"``: answer ``status`` and apply nothing. Every other
    action applies the request first: ``"drop"`` the connection, ``"hang"``
    ``hang_s`` seconds, ``"apply"`` then answer ``status``, ``"pad"`` the
    answer with ``pad_bytes``, ``"wrong_user"`` rewrite who the answer
    names. A status answer carries ``retry_after`` (when not None) as
    Retry-After and ``location`` (when not None) as Location; its body is
    ``body`` verbatim, the request headers (``echo_headers``), or else the
    backend's own error body.
    """

    action: Literal["answer", "drop", "hang", "apply", "pad", "wrong_user"]
    status: int = 0
    retry_after: int | None = None
    location: str | None = None
    body: str | None = None
    echo_headers: bool = False
    hang_s: float = 0.0
    pad_bytes: int = 0


_OUTAGE = Injection("answer", 503)
_DROP = Injection("drop")


class Faults:
    """The current fault config plus its runtime state (script, outages, RNG, counts)."""

    def __init__(self, **config: Any) -> None:
        """Start with ``FaultConfig(**config)``; e.g. ``Faults(rate_5xx=0.1, seed=7)``."""
        self.counts: Counter[str] = Counter()
        self.replace(FaultConfig(**config))

    def replace(self, config: FaultConfig) -> None:
        """Make ``config`` current: reseed, reload the script, end any outage."""
        self.config = config
        self._rng = random.Random(config.seed)
        self._script: list[ScriptAction] = list(config.script)
        # (monotonic end, path substring or None for every call)
        self._outages: list[tuple[float, str | None]] = []

    @property
    def latency_s(self) -> float:
        """Delay added to every API call, in seconds."""
        return self.config.latency_ms / 1000.0

    def snapshot(self) -> dict[str, Any]:
        """The config as ``PUT /sandbox/faults`` takes it, with the script still
        pending (consumed actions are gone), the outage time left and the
        outages in progress."""
        now = time.monotonic()
        data = self.config.model_dump(exclude_none=True)
        data["script"] = [a.model_dump(exclude_defaults=True, by_alias=True) for a in self._script]
        outages = [(until - now, path) for until, path in self._outages if until > now]
        data["outage_remaining_s"] = max((left for left, _ in outages), default=0.0)
        data["outages"] = [{"path": path, "remaining_s": left} for left, path in outages]
        return data

    def reset_counts(self) -> None:
        """Forget what was injected so far."""
        self.counts.clear()

    def next(self, path: str) -> Injection | None:
        """Decide the fault for one API call to ``path`` (None: behave
        normally) and count it."""
        if self._outages and self._in_outage(path):
            self.counts["outage"] += 1
            return _OUTAGE
        if self._script:
            for index, action in enumerate(self._script):
                if action.path is None or action.path in path:
                    del self._script[index]
                    return self._from_script(action)
        cfg = self.config
        if cfg.rate_5xx or cfg.rate_429 or cfg.rate_drop:
            # A single draw per call, split into bands, so a given seed yields
            # the same sequence of faults whatever the rates' order of checks.
            r = self._rng.random()
            if r < cfg.rate_5xx:
                self.counts["503"] += 1
                return _OUTAGE
            r -= cfg.rate_5xx
            if r < cfg.rate_429:
                self.counts["429"] += 1
                return Injection("answer", 429, retry_after=cfg.retry_after_s)
            r -= cfg.rate_429
            if r < cfg.rate_drop:
                self.counts["drop"] += 1
                return _DROP
        return None

    def _in_outage(self, path: str) -> bool:
        now = time.monotonic()
        self._outages = [(until, p) for until, p in self._outages if until > now]
        return any(p is None or p in path for _, p in self._outages)

    def _from_script(self, action: ScriptAction) -> Injection | None:
        kind = action.action
        if kind is None or kind == "apply":
            status = action.status or 0
            retry = action.retry_after
            if status == 429 and retry is None:
                retry = self.config.retry_after_s
            location = action.location
            if 300 <= status < 400 and location is None:
                location = DEFAULT_LOCATION
            self.counts[f"apply.{status}" if kind else str(status)] += 1
            return Injection("apply" if kind else "answer", status, retry, location, action.body, action.echo_headers)
        self.counts[kind] += 1
        if kind == "outage":
            # This call is its first victim.
            self._outages.append((time.monotonic() + float(action.seconds or 0.0), action.path))
            return _OUTAGE
        if kind == "hang":
            return Injection("hang", hang_s=float(action.seconds or 0.0))
        if kind == "pad":
            return Injection("pad", pad_bytes=action.pad_bytes or 0)
        if kind == "pass":
            return None
        return Injection(kind)
