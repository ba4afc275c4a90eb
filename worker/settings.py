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
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import redis
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialBackoff
from redis.connection import parse_url
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel

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
    # With GRANTS_REDIS_SENTINELS set, the URL's host is not used: its
    # scheme (rediss: TLS), user, password, database and ssl_* parameters are,
    # for the primary the sentinels name.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The password for Redis (and its sentinels), from a file: wins over one in the URL.
    redis_password_file: Path | None = None
    # Sentinel: "host:port,host:port" and the name of the primary they watch.
    # Producers, workers, the CLI and (unless GRANTS_BROKER_URL is set) the
    # Celery broker follow a failover without a restart.
    redis_sentinels: Annotated[list[str], NoDecode] = Field(default_factory=list)
    redis_sentinel_master: str = "grants"
    # A write that must survive a failover is confirmed by this many replicas
    # (WAIT) before anyone acts on it: an accepted publish, a batch's begin
    # before its call, an outcome before it is reported. 0: no waiting.
    redis_min_replicas: int = Field(0, ge=0)
    redis_replica_timeout_ms: int = Field(1000, ge=1)
    # Redis must never evict (an evicted claim is a double grant): start-up
    # refuses any maxmemory-policy but noeviction, unless this says otherwise.
    redis_allow_eviction: bool = False
    # How long one Redis call waits out an outage (reconnecting) before it
    # raises: a restart with AOF takes a few seconds; a producer's publish
    # raises PublishFailed after this.
    redis_retry_s: float = Field(40.0, ge=0)
    broker_url: str | None = None  # defaults to the Redis above (its sentinels too)
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
    # The worker's /metrics, /livez and /readyz (worker/monitor.py); off when unset.
    metrics_port: int | None = Field(None, ge=1, le=65535)
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _host_ports(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        for hp in value or []:
            host, _, port = str(hp).rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{hp!r}: a sentinel is host:port")
        return value

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
        """A client for the ledger and results store, as configured: the URL,
        or the primary its sentinels name (followed across a failover)."""
        retry_s = self.redis_retry_s if patient else 0
        if not self.redis_sentinels:
            return connect(self.redis_url, decode=decode, retry_s=retry_s, password=self.redis_password())
        sentinel = Sentinel(self.sentinel_hosts(), sentinel_kwargs=self._sentinel_kwargs(), **self._primary_kwargs())
        return sentinel.master_for(
            self.redis_sentinel_master,
            decode_responses=decode,
            retry=reconnect_retry(retry_s),
            retry_on_error=[ConnectionError, TimeoutError],
            **_TIMEOUTS,
        )

    def redis_client_async(self) -> AsyncRedis:
        """:meth:`redis_client` for asyncio code (decoding to str)."""
        retry = reconnect_retry(self.redis_retry_s, aio=True)
        common: dict[str, Any] = {"retry": retry, "retry_on_error": [ConnectionError, TimeoutError], **_TIMEOUTS}
        if not self.redis_sentinels:
            extra = {"password": self.redis_password()} if self.redis_password() else {}
            return AsyncRedis.from_url(self.redis_url, decode_responses=True, **common, **extra)
        sentinel = AsyncSentinel(
            self.sentinel_hosts(), sentinel_kwargs=self._sentinel_kwargs(), **self._primary_kwargs()
        )
        return sentinel.master_for(self.redis_sentinel_master, decode_responses=True, **common)

    def redis_password(self) -> str | None:
        """GRANTS_REDIS_PASSWORD_FILE's password, else None (the URL's, if any)."""
        if self.redis_password_file is None:
            return None
        return self.redis_password_file.read_text().strip()

    def sentinel_hosts(self) -> list[tuple[str, int]]:
        return [(hp.rpartition(":")[0], int(hp.rpartition(":")[2])) for hp in self.redis_sentinels]

    def _primary_kwargs(self) -> dict[str, Any]:
        """Credentials, database and TLS for the primary, from the URL (its host aside)."""
        kwargs = {k: v for k, v in parse_url(self.redis_url).items() if k not in ("host", "port", "connection_class")}
        if self.redis_url.startswith("rediss://"):
            kwargs["ssl"] = True
        if self.redis_password():
            kwargs["password"] = self.redis_password()
        return kwargs

    def _sentinel_kwargs(self) -> dict[str, Any]:
        """The sentinels take the same password and TLS as the primary."""
        primary = self._primary_kwargs()
        return {k: v for k, v in primary.items() if k.startswith("ssl") or k in ("password", "username")} | _TIMEOUTS

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
        """GRANTS_BROKER_URL, else the Redis above (as kombu's sentinel:// URLs
        when it is reached through sentinels; see broker_transport_options)."""
        if self.broker_url:
            return self.broker_url
        if not self.redis_sentinels:
            return self.redis_url
        parts = urlsplit(self.redis_url)
        password = self.redis_password() or parts.password
        auth = f"{parts.username or ''}:{password}@" if password else ""
        db = parts.path or "/0"
        # (TLS goes in broker_use_ssl, from GRANTS_REDIS_URL: worker/celery_app.py)
        return ";".join(f"sentinel://{auth}{hp}{db}" for hp in self.redis_sentinels)

    def broker_transport_options(self) -> dict[str, Any]:
        """kombu's options for the broker URL: the sentinel master's name and
        the sentinels' own credentials, when the broker is reached through them."""
        if self.broker_url or not self.redis_sentinels:
            return {}
        return {"master_name": self.redis_sentinel_master, "sentinel_kwargs": self._sentinel_kwargs()}

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
        if self.redis_password():
            found.append(self.redis_password() or "")
        return [s for s in found if s]


def _url_password(url: str) -> str | None:
    """The password a Redis URL carries: in its netloc, or as redis-py also
    takes it, a ``password`` query parameter."""
    from urllib.parse import parse_qs, unquote, urlsplit

    try:
        parts = urlsplit(url)
        in_query = parse_qs(parts.query).get("password") or []
        # As redis-py reads it: percent-decoded.
        return unquote(parts.password) if parts.password else (in_query[0] if in_query else None)
    except ValueError:
        return None


# Reconnects back off from 50 ms up to 1 s between attempts. Every script is
# idempotent, so a call retried after a lost reply is safe.
RECONNECT_BACKOFF_CAP_S = 1.0


def reconnect_retry(retry_s: float, *, aio: bool = False) -> Retry | AsyncRetry:
    """redis-py's retry policy that waits out about ``retry_s`` of outage
    (``aio``: the one asyncio clients take)."""
    # The first five waits (50 ms doubling to 800 ms) sum to 1.55 s; then 1 s each.
    attempts = 1 if retry_s <= 0 else max(1, int(retry_s - 1.55) + 5)
    return (AsyncRetry if aio else Retry)(ExponentialBackoff(cap=RECONNECT_BACKOFF_CAP_S, base=0.05), attempts)


# Seconds: a connection attempt, a reply (longer than any script or XREAD
# block), and the idle time after which a pooled connection is pinged first.
_TIMEOUTS = {"socket_connect_timeout": 2, "socket_timeout": 10, "health_check_interval": 30}


def connect(
    url: str, *, patient: bool = True, decode: bool = True, retry_s: float = 40.0, password: str | None = None
) -> redis.Redis:
    """A client for ``url`` (redis:// or rediss://) that decodes to str
    (``decode=False``: returns bytes), riding out ``retry_s`` of outage.

    ``patient=False`` fails fast instead (CLI look-ups, health checks).
    """
    retry = reconnect_retry(retry_s if patient else 0)
    extra = {"password": password} if password else {}
    return redis.Redis.from_url(
        url, decode_responses=decode, retry=retry, retry_on_error=[ConnectionError, TimeoutError], **_TIMEOUTS, **extra
    )


class UnsafeRedis(RuntimeError):
    """Redis is configured in a way that can grant a purchase twice."""


def check_eviction(client: redis.Redis, *, allow: bool) -> str | None:
    """Refuse a Redis that evicts keys when full (an evicted dedupe claim is
    a double grant): raises :class:`UnsafeRedis` for any ``maxmemory-policy``
    but ``noeviction``, unless ``allow`` (GRANTS_REDIS_ALLOW_EVICTION).

    Returns a warning to log when the policy cannot be read, else None. The
    policy is read from INFO first: managed Redis services often refuse
    CONFIG but answer INFO.
    """
    try:
        policy = client.info("memory").get("maxmemory_policy")
        if policy is None:
            policy = (client.config_get("maxmemory-policy") or {}).get("maxmemory-policy")
    except redis.ResponseError as exc:  # NOPERM, or CONFIG renamed away
        return judge_eviction(None, allow=allow, why=str(exc))
    return judge_eviction(policy, allow=allow)


async def check_eviction_async(client: AsyncRedis, *, allow: bool) -> str | None:
    """:func:`check_eviction` for an asyncio client."""
    try:
        policy = (await client.info("memory")).get("maxmemory_policy")
        if policy is None:
            policy = ((await client.config_get("maxmemory-policy")) or {}).get("maxmemory-policy")
    except redis.ResponseError as exc:
        return judge_eviction(None, allow=allow, why=str(exc))
    return judge_eviction(policy, allow=allow)


def judge_eviction(policy: str | None, *, allow: bool, why: str = "not reported") -> str | None:
    """The verdict on a ``maxmemory-policy`` (None: it could not be read)."""
    if policy is None:
        return (
            f"could not read Redis's maxmemory-policy ({why}): make sure it is noeviction, "
            "since an evicted dedupe claim is a double grant"
        )
    if policy != "noeviction" and not allow:
        raise UnsafeRedis(
            f"Redis's maxmemory-policy is {policy!r}: when full, Redis would delete keys, and a deleted "
            "dedupe claim means the next repeat of that purchase is granted again. Set maxmemory-policy "
            "to noeviction on Redis (CONFIG SET maxmemory-policy noeviction, and in redis.conf), or set "
            "GRANTS_REDIS_ALLOW_EVICTION=true to run anyway at that risk."
        )
    return None
