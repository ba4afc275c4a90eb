"""Failures the fake Xsolla injects on purpose: latency, errors, drops, hangs.

Consulted once per API call, in this order:

1. an outage in progress (every call answers 503 until it ends);
2. the ``script``: one-shot actions consumed first-in first-out, one per call,
   so a test can say "the next call gets a 429, the one after is dropped";
3. random rates drawn from a seeded ``random.Random``, so a benchmark's chaos
   is reproducible run to run.

The config can be replaced at runtime (``PUT /sandbox/faults``); what was
injected is counted per kind for ``/sandbox/stats``.
"""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

class ScriptAction(BaseModel):
    """One scripted one-shot fault.

    Either ``{"status": N}`` (answer N before applying; for 429 with
    ``Retry-After: retry_after``, default the config's ``retry_after_s``) or
    ``{"action": "drop"}`` (apply, then close the connection without a
    response), ``{"action": "hang", "seconds": S}`` (apply, wait S seconds,
    then answer normally) or ``{"action": "outage", "seconds": S}`` (every API
    call, this one included, answers 503 for S seconds).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: int | None = Field(default=None, ge=400, le=599)
    retry_after: int | None = Field(default=None, ge=0)
    action: Literal["drop", "hang", "outage"] | None = None
    seconds: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_kind(self) -> ScriptAction:
        if (self.status is None) == (self.action is None):
            raise ValueError('give exactly one of "status" or "action"')
        if self.action in ("hang", "outage") and self.seconds is None:
            raise ValueError(f'"{self.action}" needs "seconds"')
        if self.retry_after is not None and self.status != 429:
            raise ValueError('"retry_after" only goes with "status": 429')
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

    ``status`` set: answer it (with ``retry_after`` as Retry-After when not
    None) and apply nothing. Otherwise apply, then ``drop`` the connection or
    wait ``hang_s`` seconds before answering.
    """

    status: int | None = None
    retry_after: int | None = None
    drop: bool = False
    hang_s: float = 0.0


class Faults:
    """The current fault config plus its runtime state (script queue, outage, RNG)."""

    def __init__(self, **config: Any) -> None:
        """Start with ``FaultConfig(**config)``; e.g. ``Faults(rate_5xx=0.1, seed=7)``."""
        self.counts: Counter[str] = Counter()
        self.replace(FaultConfig(**config))

    def replace(self, config: FaultConfig) -> None:
        """Make ``config`` current: reseed, reload the script, end any outage."""
        self.config = config
        self._rng = random.Random(config.seed)
        self._script: deque[ScriptAction] = deque(config.script)
        self._outage_until = 0.0

    @property
    def latency_s(self) -> float:
        """Delay added to every API call, in seconds."""
        return self.config.latency_ms / 1000.0

    def snapshot(self) -> dict[str, Any]:
        """The config as ``PUT /sandbox/faults`` takes it, with the script still
        pending (consumed actions are gone) and the outage time left."""
        data = self.config.model_dump(exclude_none=True)
        data["script"] = [a.model_dump(exclude_none=True) for a in self._script]
        data["outage_remaining_s"] = max(0.0, self._outage_until - time.monotonic())
        return data

    def reset_counts(self) -> None:
        """Forget what was injected so far."""
        self.counts.clear()

    def next(self) -> Injection | None:
        """Decide the fault for one API call (None: behave normally) and count it."""
        now = time.monotonic()
        if now < self._outage_until:
            self.counts["outage"] += 1
            return Injection(status=503)
        if self._script:
            return self._from_script(self._script.popleft(), now)
        cfg = self.config
        if cfg.rate_5xx or cfg.rate_429 or cfg.rate_drop:
            # A single draw per call, split into bands, so a given seed yields
            # the same sequence of faults whatever the rates' order of checks.
            r = self._rng.random()
            if r < cfg.rate_5xx:
                self.counts["503"] += 1
                return Injection(status=503)
            r -= cfg.rate_5xx
            if r < cfg.rate_429:
                self.counts["429"] += 1
                return Injection(status=429, retry_after=cfg.retry_after_s)
            r -= cfg.rate_429
            if r < cfg.rate_drop:
                self.counts["drop"] += 1
                return Injection(drop=True)
        return None

    def _from_script(self, action: ScriptAction, now: float) -> Injection:
        if action.status is not None:
            self.counts[str(action.status)] += 1
            if action.status == 429:
                retry = action.retry_after
                return Injection(
                    status=429,
                    retry_after=self.config.retry_after_s if retry is None else retry,
                )
            return Injection(status=action.status)
        if action.action == "drop":
            self.counts["drop"] += 1
            return Injection(drop=True)
        if action.action == "hang":
            self.counts["hang"] += 1
            return Injection(hang_s=float(action.seconds or 0.0))
        # outage: this call is its first victim.
        self._outage_until = now + float(action.seconds or 0.0)
        self.counts["outage"] += 1
        return Injection(status=503)
