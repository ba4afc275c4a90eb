"""Throwaway TLS material and a private redis-server with an ACL user (and,
when asked, TLS only) for tests/test_tls_acl.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from devstack.localstack import RedisServer, Service, StackError, free_port, redis_binary, wait_until
from worker.settings import connect

ACL_USER = "grants"
ACL_PASSWORD = "s3cret"


class TlsUnsupported(Exception):
    """This redis-server was built without TLS."""


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {out.stderr.strip()}")


def make_certs(directory: Path) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1 signed by it (EC P-256, 2 days).

    Uses the ``openssl`` binary: the ``cryptography`` package is not a
    dependency of this project.
    """
    if shutil.which("openssl") is None:
        raise FileNotFoundError("no openssl binary on PATH")
    directory.mkdir(parents=True, exist_ok=True)
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *curve,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=grants-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )
    _openssl(
        "req", "-new", *curve, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=directory
    )
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        str(int.from_bytes(os.urandom(8), "big")),
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
        cwd=directory,
    )
    return TlsFiles(ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key")


# What a redis-server built without TLS says about --tls-port (7.0: an unknown
# directive; 7.2+: no "tls" connection type).
_NO_TLS = re.compile(r"Bad directive|Missing implement|not supported|not compiled|unknown", re.I)


class AclRedisServer(RedisServer):
    """A private redis-server (AOF on) whose only user is ``grants``/``s3cret``;
    with ``tls`` it listens on a TLS port only, with no plain-text port.

    A RedisServer (what ``Stack.redis`` holds) with its own command line:
    ``__init__`` builds the argv itself and hands it to ``Service``."""

    def __init__(self, workdir: Path, tls: TlsFiles | None = None):
        self.port = free_port()
        self.tls = tls
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [
            redis_binary(),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ]
        if tls:
            argv += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(tls.cert),
                "--tls-key-file",
                str(tls.key),
                "--tls-ca-cert-file",
                str(tls.ca),
                "--tls-auth-clients",
                "no",
            ]
        else:
            argv += ["--port", str(self.port)]
        argv += ["--user", "default", "off", "--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all"]
        Service.__init__(self, f"redis:{self.port}", argv, dict(os.environ), workdir / f"redis-{self.port}.log")

    def url_for(self, user: str | None = ACL_USER, password: str | None = ACL_PASSWORD) -> str:
        auth = f"{quote(user or '', safe='')}:{quote(password, safe='')}@" if password else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        ca = quote(str(self.tls.ca), safe="/")
        return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={ca}&ssl_cert_reqs=required"

    @property
    def url(self) -> str:
        """The ``grants`` user's URL (what Stack.env() hands to every process)."""
        return self.url_for()

    def start(self) -> AclRedisServer:
        Service.start(self)  # RedisServer.start pings without credentials
        client = connect(self.url, patient=False)
        try:
            wait_until(lambda: not self.alive() or client.ping(), 15, f"redis-server on port {self.port}")
            if not self.alive():
                log = self.log_text()
                if self.tls and "tls" in log.lower() and _NO_TLS.search(log):
                    raise TlsUnsupported(log.strip().splitlines()[-3:])
                raise StackError(f"redis-server on port {self.port} exited: {log[-2000:]}")
            wait_until(lambda: client.info("persistence").get("loading") == 0, 30, "redis AOF load")
        finally:
            client.close()
        return self

    def shutdown(self) -> None:
        """A clean stop (AOF flushed), as the ``grants`` user."""
        client = connect(self.url, patient=False)
        try:
            client.shutdown()
        except redis.ConnectionError:
            pass  # SHUTDOWN closes the connection under us
        finally:
            client.close()
        if self.proc is not None:
            self.proc.wait(timeout=15)
