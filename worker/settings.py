"""Typed configuration, parsed once at process start from ``GRANTS_*``
variables, and the Redis clients it leads to.

Nothing else in the worker, producers or CLI reads the environment: entry
points build a :class:`Settings` and pass it down (the sandbox, a separate
program, reads its own in ``sandbox/server.py``). This module imports
nothing else of the worker, so a producer embedding ``producers`` loads
only this, ``schemas`` and redis-py.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Literal

import redis
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry

from schemas.kinds import KINDS

# The most commands per call any backend takes (schemas/kinds.py; Xsolla's
# 50: it silently ignores operations past the 50th).
MAX_BATCH = max(n for k in KINDS.values() for n in k.per_call.values())


BackendName = Literal["xsolla", "playfab"]


class ProjectBackend(BaseModel):
    """Where one project's commands go, overriding that backend's defaults.

    ``GRANTS_PROJECTS='{"9001": {"backend": "playfab",
    "base_url": "https://9001.playfabapi.com", "secret_file": "/run/secrets/pf9001"}}'``
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # None: the backend's defaults, not one project's (what Backpack gets).
    backend: BackendName | None = None
    base_url: str | None = None
    # The project's credential (PlayFab title secret key; Xsolla API key), from a file.
    secret_file: Path | None = None
    # The project's own call budget (overrides GRANTS_MAX_CALLS_PER_S / _CALL_BURST).
    max_calls_per_s: float | None = Field(None, gt=0)
    call_burst: float | None = Field(None, ge=1)

    def secret(self, default: SecretStr) -> str:
        """The project's credential: its secret file if it has one, else the backend's."""
        if self.secret_file is not None:
            return self.secret_file.read_text().strip()
        return default.get_secret_value()


class Settings(BaseSettings):
    """Every knob of the service. See README "Configuration"."""

    model_config = SettingsConfigDict(env_prefix="GRANTS_", extra="ignore")

    # --- Redis: ledger, buffers, results store; and the Celery broker.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # How long one Redis call waits out an outage (reconnecting) before it
    # raises: a restart with AOF takes a few seconds; a producer's publish
    # raises PublishFailed after this.
    redis_retry_s: float = Field(40.0, ge=0)
    broker_url: str | None = None  # defaults to redis_url
    key_prefix: str = "grants"

    # --- Xsolla inventory API.
    xsolla_base_url: str = "https://store.xsolla.com/api"
    xsolla_merchant_id: str = ""
    xsolla_api_key: SecretStr = SecretStr("")
    # A file holding the key (Docker/Kubernetes secrets); wins over the variable.
    xsolla_api_key_file: Path | None = None
    # Resend a batch whose answer was lost? Only safe if the backend ignores a
    # repeated external_purchase_id, which Xsolla does not document.
    xsolla_idempotent: bool = False

    # --- PlayFab (legacy Admin economy API).
    playfab_base_url: str = "https://titleId.playfabapi.com"
    playfab_secret_key: SecretStr = SecretStr("")
    playfab_secret_key_file: Path | None = None
    playfab_catalog_version: str | None = None

    # --- Xsolla Backpack (backpack.* commands, any project of the merchant).
    backpack_base_url: str = "https://api.xsolla.com"
    backpack_merchant_id: str = ""  # defaults to GRANTS_XSOLLA_MERCHANT_ID
    backpack_token: SecretStr = SecretStr("")
    backpack_token_file: Path | None = None
    backpack_host_id: str = ""

    # --- Which backend serves which project (JSON); the rest go to the default.
    default_backend: BackendName = "xsolla"
    projects: dict[int, ProjectBackend] = Field(default_factory=dict)

    # --- Batching.
    # The longest a command waits for its batch to fill (not the usual wait:
    # see eager_inflight).
    flush_interval_ms: int = Field(200, ge=1, le=60_000)
    # A partial batch is sent at once while fewer than this many of its
    # lane's calls are in flight; while a call is in flight, arrivals
    # accumulate into fuller batches (0: always wait for a full batch or the
    # flush interval).
    eager_inflight: int = Field(1, ge=0)
    # Calls per second to one backend for one project, across all workers (a
    # token bucket in Redis); None: no budget. call_burst: calls that may go
    # at once (default: one second's worth, at least 1).
    max_calls_per_s: float | None = Field(None, gt=0)
    call_burst: float | None = Field(None, ge=1)
    # At most this many commands per call, below each backend's own limit.
    batch_size: int = Field(MAX_BATCH, ge=1, le=MAX_BATCH)
    # Batches taken but not finished, across all workers. Bounds broker depth
    # and Redis leases; raise it with the number of worker processes.
    max_inflight_batches: int = Field(64, ge=1)
    # Of those, at most this many for one project and kind (default: half), so
    # a project that is rate limited and backing off cannot starve the others.
    max_inflight_per_lane: int | None = Field(None, ge=1)

    # --- HTTP.
    http_connect_timeout_s: float = Field(3.0, gt=0)
    http_read_timeout_s: float = Field(10.0, gt=0)
    http_write_timeout_s: float = Field(5.0, gt=0)
    http_max_connections: int = Field(20, ge=1)

    # --- Retries of calls that certainly did not apply (connect, 429, 5xx).
    retry_max_attempts: int = Field(10, ge=1)
    retry_base_s: float = Field(0.5, gt=0)
    retry_max_backoff_s: float = Field(30.0, gt=0)

    # --- Recovery.
    sweep_interval_ms: int = Field(100, ge=10)
    # How long a taken batch may sit in the broker before the sweeper sends it
    # again (a lost dispatch); duplicates of a dispatch are harmless.
    dispatch_lease_s: float = Field(10.0, gt=0)
    # Broker redelivery of unacked messages of a dead worker. Must exceed the
    # longest task (one HTTP call: connect + write + read timeouts).
    visibility_timeout_s: int = Field(60, ge=5)

    # --- Pool processes per `celery worker` (None: two per core, at least 4).
    worker_concurrency: int | None = Field(None, ge=1)

    # --- Results.
    result_retention_days: float = Field(30.0, gt=0)
    # How long a refund or chargeback can arrive after its grant: what a
    # revoke needs of a granted purchase is kept this long (chargebacks come
    # months later); past it a revoke is refused as rejected, never a noop.
    refund_window_days: float = Field(180.0, gt=0)
    # How long a purchase id is remembered (a compact claim, outliving the
    # record): a repeat published within it is a duplicate, never a new grant.
    dedupe_retention_days: float = Field(400.0, gt=0)

    # --- Producers.
    publish_chunk_size: int = Field(1000, ge=1, le=10_000)

    # --- Logs.
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _keys_from_files(self) -> Settings:
        for path_field, key_field in (
            ("xsolla_api_key_file", "xsolla_api_key"),
            ("playfab_secret_key_file", "playfab_secret_key"),
            ("backpack_token_file", "backpack_token"),
        ):
            path = getattr(self, path_field)
            if path is not None:
                object.__setattr__(self, key_field, SecretStr(path.read_text().strip()))
        return self

    def redis_client(self, *, patient: bool = True, decode: bool = True) -> redis.Redis:
        """A client for the ledger and results store, as configured."""
        return connect(self.redis_url, patient=patient, decode=decode, retry_s=self.redis_retry_s)

    def backend_of(self, project_id: int) -> ProjectBackend:
        """The backend (and its overrides) that serves ``project_id``."""
        return self.projects.get(project_id) or ProjectBackend(backend=self.default_backend)

    def project_backend(self, project_id: int) -> BackendName:
        """The name of the backend that serves ``project_id``'s grants and revokes."""
        return self.backend_of(project_id).backend or self.default_backend

    def call_budget(self, project_id: int) -> tuple[float, float] | None:
        """(calls per second, burst) for a project's backend calls, or None."""
        project = self.projects.get(project_id)
        rate = (project.max_calls_per_s if project else None) or self.max_calls_per_s
        if rate is None:
            return None
        burst = (project.call_burst if project else None) or self.call_burst or max(1.0, rate)
        return rate, burst

    @property
    def lane_inflight_cap(self) -> int:
        return self.max_inflight_per_lane or max(1, self.max_inflight_batches // 2)

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def result_ttl_ms(self) -> int:
        return int(self.result_retention_days * 86_400_000)

    @property
    def refund_ttl_ms(self) -> int:
        return int(self.refund_window_days * 86_400_000)

    @property
    def claim_ttl_ms(self) -> int:
        """Never shorter than the records: a claim must outlive its record."""
        return int(max(self.dedupe_retention_days, self.result_retention_days) * 86_400_000)

    @property
    def http_call_budget_s(self) -> float:
        """Longest one backend call can take before httpx gives up."""
        return self.http_connect_timeout_s + self.http_write_timeout_s + self.http_read_timeout_s

    def secrets(self) -> list[str]:
        """Values that must never be printed or stored, in every form a backend
        might echo them back: raw, and the base64 of an HTTP Basic credential
        (``Bearer <token>`` and ``X-SecretKey: <key>`` hold the raw value)."""
        xsolla_keys = [self.xsolla_api_key.get_secret_value()]
        found = [self.playfab_secret_key.get_secret_value(), self.backpack_token.get_secret_value()]
        for project in self.projects.values():
            if project.secret_file is not None and project.secret_file.exists():
                backend = project.backend or self.default_backend
                (xsolla_keys if backend == "xsolla" else found).append(project.secret(SecretStr("")))
        for key in filter(None, xsolla_keys):
            found.append(key)
            found.append(base64.b64encode(f"{self.xsolla_merchant_id}:{key}".encode()).decode())
        for url in (self.redis_url, self.broker_url or ""):
            password = _url_password(url)
            if password:
                found.append(password)
        return [s for s in found if s]


def _url_password(url: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).password
    except ValueError:
        return None


# Reconnects back off from 50 ms up to 1 s between attempts. Every script is
# idempotent, so a call retried after a lost reply is safe.
RECONNECT_BACKOFF_CAP_S = 1.0


def reconnect_retry(retry_s: float) -> Retry:
    """redis-py's retry policy that waits out about ``retry_s`` of outage."""
    # The first five waits (50 ms doubling to 800 ms) sum to 1.55 s; then 1 s each.
    attempts = 1 if retry_s <= 0 else max(1, int(retry_s - 1.55) + 5)
    return Retry(ExponentialBackoff(cap=RECONNECT_BACKOFF_CAP_S, base=0.05), attempts)


def connect(url: str, *, patient: bool = True, decode: bool = True, retry_s: float = 40.0) -> redis.Redis:
    """A client for ``url`` (redis:// or rediss://) that decodes to str
    (``decode=False``: returns bytes), riding out ``retry_s`` of outage.

    ``patient=False`` fails fast instead (CLI look-ups, health checks).
    """
    retry = reconnect_retry(retry_s if patient else 0)
    return redis.Redis.from_url(
        url,
        decode_responses=decode,
        retry=retry,
        retry_on_error=[ConnectionError, TimeoutError],
        socket_connect_timeout=2,
        socket_timeout=10,
        health_check_interval=30,
    )
