"""rediss:// and Redis ACL users, end to end: a private redis-server with TLS
only and an ACL user (the default user off), the sandbox and a real
`celery -A worker worker`, all given GRANTS_REDIS_URL =
rediss://grants:s3cret@127.0.0.1:N/0?ssl_ca_certs=...; the broker and the
ledger/results store both ride on that URL."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import redis

from devstack.localstack import Stack
from producers.publisher import Publisher
from tests.conftest import FAST
from tests.helpers import command, wait_final
from tests.tls_support import ACL_PASSWORD, ACL_USER, AclRedisServer, TlsFiles, TlsUnsupported, make_certs
from worker.keys import Keys
from worker.logs import Redactor
from worker.redis_conn import broker_ssl_options
from worker.results import Results
from worker.settings import Settings, connect

pytestmark = pytest.mark.integration


# --- servers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> TlsFiles:
    try:
        return make_certs(tmp_path_factory.mktemp("tls"))
    except FileNotFoundError as exc:
        pytest.skip(f"cannot make test certificates: {exc}")


def _start(server: AclRedisServer) -> AclRedisServer:
    try:
        return server.start()
    except TlsUnsupported as exc:
        server.stop()
        pytest.skip(f"this redis-server has no TLS support ({exc}); the plain-port ACL tests still run")
    except Exception:
        server.stop()
        raise


@pytest.fixture
def tls_server(tmp_path, tls_files):
    """TLS only (--port 0), default user off, user grants/s3cret; logs in tmp_path."""
    server = _start(AclRedisServer(tmp_path, tls=tls_files))
    yield server
    server.stop()


@pytest.fixture
def acl_server(tmp_path):
    """Plain port, default user off, user grants/s3cret; logs in tmp_path."""
    server = _start(AclRedisServer(tmp_path))
    yield server
    server.stop()


# --- the whole pipeline --------------------------------------------------------


def _grant_through(server: AclRedisServer, workdir: Path, project_id: int) -> Stack:
    """Sandbox + one celery worker on ``server.url``; publish, wait, check. Returns the stopped stack."""
    url = server.url
    assert ACL_PASSWORD in url
    stack = Stack(workdir, settings_env=dict(FAST))
    stack.redis = server  # Stack.env() hands server.url to every process as GRANTS_REDIS_URL
    publisher = None
    try:
        stack.start_sandbox()
        worker = stack.start_worker(concurrency=2)
        settings = Settings(redis_url=url)
        assert settings.effective_broker_url == url
        publisher = Publisher(settings)
        ids = [f"acl-{i}" for i in range(5)]
        assert publisher.publish_many(command(project_id, i, user=f"u{n % 2}") for n, i in enumerate(ids)) == 5
        results = Results(connect(url), Keys())
        records = wait_final(results, project_id, ids, timeout=20)
        assert {i: r["status"] for i, r in records.items()} == {i: "granted" for i in ids}
        assert stack.audit_counts(project_id) == {i: 1 for i in ids}
        results.redis.close()
        # The worker's "worker starting" line (its banner, in JSON mode) and its
        # "Connected to" line show the broker with the password masked (Celery
        # writes **; our log filter makes that ***). (The scheme shown is our
        # guarded transport's name, worker/broker.py.)
        masked = f"://{ACL_USER}:***@127.0.0.1:{server.port}/0"
        log = worker.log_text()
        assert f'"broker": "worker.broker:Transport{masked}"' in log
        assert f"Connected to worker.broker:Transport{masked}" in log
    finally:
        if publisher is not None:
            publisher.close()
        stack.stop()
    return stack


def _assert_no_password_in_logs(stack: Stack) -> None:
    logs = sorted(stack.workdir.glob("*.log"))
    names = {p.name for p in logs}
    assert {"sandbox.log", "w1.log"} <= names and any(n.startswith("redis-") for n in names), names
    for path in logs:
        assert ACL_PASSWORD not in path.read_text(errors="replace"), path.name


def test_grants_over_tls_with_an_acl_user(tls_server, tmp_path, project_id):
    assert tls_server.url.startswith(f"rediss://{ACL_USER}:{ACL_PASSWORD}@")
    stack = _grant_through(tls_server, tmp_path, project_id)
    _assert_no_password_in_logs(stack)


def test_grants_with_an_acl_user_on_a_plain_port(acl_server, tmp_path, project_id):
    assert acl_server.url.startswith(f"redis://{ACL_USER}:{ACL_PASSWORD}@")
    stack = _grant_through(acl_server, tmp_path, project_id)
    _assert_no_password_in_logs(stack)


# --- the server really enforces what the URL asks for ---------------------------


def _refused(url: str, error: type[Exception]) -> None:
    client = connect(url, patient=False)
    try:
        with pytest.raises(error):
            client.ping()
    finally:
        client.close()


def test_tls_server_refuses_the_default_user_a_wrong_password_and_plain_text(tls_server, tls_files):
    assert connect(tls_server.url, patient=False).ping()
    _refused(tls_server.url_for(user=None, password=None), redis.AuthenticationError)  # default user is off
    _refused(tls_server.url_for(password="wrong"), redis.AuthenticationError)
    # No plain-text port: a client without TLS gets no answer on the TLS port.
    _refused(f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{tls_server.port}/0", redis.ConnectionError)
    # ssl_cert_reqs=required really checks the certificate: without our CA it fails.
    no_ca = f"rediss://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{tls_server.port}/0?ssl_cert_reqs=required"
    _refused(no_ca, redis.ConnectionError)


def test_broker_checks_the_certificate_when_the_url_names_no_ca(tls_server, tls_files, monkeypatch):
    """Without ssl_* parameters in the URL, kombu uses broker_use_ssl, which
    would be CERT_NONE (no check at all) if broker_ssl_options gave nothing."""
    from worker.celery_app import create_app

    url = tls_server.url.split("?")[0]  # rediss://grants:s3cret@127.0.0.1:N/0
    app = create_app(Settings(redis_url=url))
    assert app.conf.broker_use_ssl["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    try:
        conn = app.connection_for_write()
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            conn.connect()  # our CA is not among the system's
        conn.release()
        monkeypatch.setenv("SSL_CERT_FILE", str(tls_files.ca))  # now it is
        conn = app.connection_for_write()
        conn.connect()
        assert conn.default_channel.client.ping()
        conn.release()
    finally:
        app.close()


def test_acl_server_refuses_the_default_user_and_a_wrong_password(acl_server):
    assert connect(acl_server.url, patient=False).ping()
    _refused(acl_server.url_for(user=None, password=None), redis.AuthenticationError)
    _refused(acl_server.url_for(password="wrong"), redis.AuthenticationError)


# --- URL handling without a server ---------------------------------------------


def test_broker_ssl_options_come_from_the_url_query(tls_files):
    url = f"rediss://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:6380/0?ssl_ca_certs={tls_files.ca}&ssl_cert_reqs=optional"
    assert broker_ssl_options(url) == {
        "ssl_cert_reqs": ssl.CERT_OPTIONAL,
        "ssl_ca_certs": str(tls_files.ca),
        "ssl_certfile": None,
        "ssl_keyfile": None,
    }
    # required is the default: kombu alone would fall back to CERT_NONE.
    assert broker_ssl_options("rediss://h:6380/0")["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    mtls = broker_ssl_options("rediss://h/0?ssl_certfile=/c.pem&ssl_keyfile=/k.pem&ssl_check_hostname=false")
    assert (mtls["ssl_certfile"], mtls["ssl_keyfile"], mtls["ssl_check_hostname"]) == ("/c.pem", "/k.pem", False)
    assert broker_ssl_options(f"redis://{ACL_USER}:{ACL_PASSWORD}@h:6379/0") is None
    with pytest.raises(ValueError, match="ssl_cert_reqs"):
        broker_ssl_options("rediss://h/0?ssl_cert_reqs=CERT_NONE")  # kombu's spelling; redis-py refuses it
    with pytest.raises(ValueError, match="socket_timeout"):
        broker_ssl_options("redis://h/0?socket_timeout=3")  # kombu's Connection would raise a TypeError


def test_kombu_reads_the_same_tls_settings_from_the_url(tls_files):
    from kombu import Connection

    url = f"rediss://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:6380/0?ssl_ca_certs={tls_files.ca}&ssl_cert_reqs=required"
    conn = Connection(url, ssl=broker_ssl_options(url))
    assert (conn.hostname, conn.port, conn.userid, conn.password) == ("127.0.0.1", 6380, ACL_USER, ACL_PASSWORD)
    assert conn.ssl["ssl_cert_reqs"] == ssl.CERT_REQUIRED and conn.ssl["ssl_ca_certs"] == str(tls_files.ca)
    assert conn.as_uri() == f"rediss://{ACL_USER}:**@127.0.0.1:6380/0"


def test_the_log_redactor_masks_rediss_credentials():
    url = f"rediss://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:6380/0?ssl_ca_certs=/ca.pem"
    assert Redactor([]).scrub(f"broker {url} down") == (
        f"broker rediss://{ACL_USER}:***@127.0.0.1:6380/0?ssl_ca_certs=/ca.pem down"
    )
    assert ACL_PASSWORD in Settings(redis_url=url).secrets()
    assert ACL_PASSWORD not in Redactor(Settings(redis_url=url).secrets()).scrub(f"auth {ACL_PASSWORD} failed")
