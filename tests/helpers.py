"""Builders and waits shared by the tests."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from devstack.localstack import REPO_ROOT, Stack, StackError, wait_until
from schemas.commands import GrantCommand
from schemas.kinds import GRANT
from schemas.records import FINAL_STATUSES
from worker.results import Results


def operation(
    purchase_id: str,
    *,
    user: str = "user-1",
    sku: str = "gem.pack",
    quantity: int = 1,
    amount: str = "2.99",
    **extra: Any,
) -> dict[str, Any]:
    """One Xsolla purchase operation, as a producer would send it."""
    return {
        "user": {"id": user},
        "items": [{"sku": sku, "quantity": quantity}],
        "purchase": {
            "amount": amount,
            "currency": "USD",
            "external_purchase_id": purchase_id,
            "external_purchase_date": "2026-11-21T10:00:00+00:00",
        },
        **extra,
    }


def command(project_id: int, purchase_id: str, **kw: Any) -> GrantCommand:
    return GrantCommand(project_id=project_id, operation=operation(purchase_id, **kw))


def wait_final(
    results: Results, project_id: int, purchase_ids: Iterable[str], timeout: float = 30.0, *, kind: str = GRANT
) -> dict[str, dict]:
    """Wait until every command of ``kind`` (its purchase or operation id) has a
    final outcome; returns records by id."""
    final = {s.value for s in FINAL_STATUSES}
    pending = list(purchase_ids)
    done: dict[str, dict] = {}

    def all_final() -> bool:
        nonlocal pending
        still = []
        for pid in pending:
            record = results.get(project_id, pid, kind)
            if record and record["status"] in final:
                done[pid] = record
            else:
                still.append(pid)
        pending = still
        return not pending

    try:
        wait_until(all_final, timeout, "final outcomes", interval=0.1)
    except StackError:
        states = {p: (results.get(project_id, p, kind) or {}).get("status") for p in pending[:10]}
        raise AssertionError(f"{len(pending)} purchases without an outcome after {timeout}s: {states}") from None
    return done


@contextmanager
def playfab_stack(workdir: Path, project_id: int, players: list[str], settings_env: dict[str, str]):
    """A stack with a worker whose project ``project_id`` is on the sandbox's
    PlayFab API, which knows these players (every other project on Xsolla)."""
    stack = Stack(workdir, settings_env=dict(settings_env))
    try:
        stack.start_redis()
        stack.start_sandbox()
        stack.settings_env["GRANTS_PROJECTS"] = json.dumps(
            {str(project_id): {"backend": "playfab", "base_url": f"{stack.sandbox_url}/playfab"}}
        )
        stack.start_worker(concurrency=2)
        httpx.post(f"{stack.sandbox_url}/sandbox/playfab/players", json={"PlayFabIds": players}).raise_for_status()
        yield stack
    finally:
        stack.stop()


def final_record(results: Results, project_id: int, record_id: str, kind: str = GRANT, timeout: float = 20.0) -> dict:
    """One command's record once its outcome is final."""
    return wait_final(results, project_id, [record_id], timeout, kind=kind)[record_id]


@contextmanager
def sandbox_process(tmp: Path, env: dict[str, str], *extra_args: str, secrets: tuple[str, ...] = ()):
    """A real `python -m sandbox` on a free port; yields its URL.

    Checks that it names no secret on start or exit, and that uvicorn logged
    no error while the tests used it.
    """
    root = Path(__file__).resolve().parent.parent
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))}
    stderr_path = tmp / "stderr.log"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox", "--port", "0", "--db", str(tmp / "sandbox.sqlite3"), *extra_args],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    assert proc.stdout is not None  # stdout=PIPE
    try:
        # Port 0: the server binds a free port and names it in its start line.
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        line = proc.stdout.readline().decode() if ready else ""
        match = re.search(r"listening on (http://\S+) ", line)
        assert match, f"no start line: {line!r}; stderr: {stderr_path.read_text()}"
        assert not any(secret in line for secret in secrets)
        url = match.group(1)
        wait_until(
            lambda: proc.poll() is not None or httpx.get(f"{url}/sandbox/health", timeout=1).status_code == 200,
            15,
            "the sandbox to become healthy",
        )
        assert proc.poll() is None, f"sandbox exited: {stderr_path.read_text()}"
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        rest = proc.stdout.read().decode()
        proc.stdout.close()
    log = stderr_path.read_text()
    assert "ERROR" not in log, log
    assert not any(secret in log or secret in rest for secret in secrets)


def kombu_envelope(
    body: str, *, task: str | None, queue: str, content_type: str = "application/json", headers: Any = None
) -> bytes:
    """A broker message exactly as kombu's Redis transport stores it in the
    queue's list (body not base64-encoded, as the worker configures it), for
    hand-made messages."""
    import json
    import uuid

    if headers is None:
        headers = {"lang": "py", "task": task, "id": str(uuid.uuid4()), "retries": 0} if task else {}
    return json.dumps(
        {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": headers,
            "properties": {
                "correlation_id": str(uuid.uuid4()),
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": None,
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    ).encode()


def publish_raw(redis_client: Any, messages: list[Any], prefix: str = "grants") -> list[str]:
    """Publish command messages as a producer in another language would
    (one XADD each), bypassing our producer's validation: each element is a
    dict (sent as JSON) or the raw text of one entry's command field."""
    import json

    from schemas.stream import COMMAND_FIELD, command_stream

    return [
        redis_client.xadd(command_stream(prefix), {COMMAND_FIELD: m if isinstance(m, str) else json.dumps(m)})
        for m in messages
    ]


def redis_text(client: Any, pattern: str = "*") -> str:
    """Every value stored under ``pattern`` (hashes, strings, lists, streams,
    sets, sorted sets) as one text, to look for what must never be stored."""
    parts: list[str] = []
    for key in client.scan_iter(pattern):
        kind = client.type(key)
        if kind == "hash":
            parts += client.hvals(key)
        elif kind == "string":
            parts.append(client.get(key) or "")
        elif kind == "list":
            parts += client.lrange(key, 0, -1)
        elif kind == "stream":
            parts += [v for _, fields in client.xrange(key) for v in fields.values()]
        elif kind == "zset":
            parts += client.zrange(key, 0, -1)
        elif kind == "set":
            parts += list(client.smembers(key))
    return "\n".join(str(p) for p in parts)


def secret_forms(merchant_id: str, *secrets: str) -> list[str]:
    """Each secret raw, and the Xsolla key as an HTTP Basic credential."""
    import base64

    forms = [s for s in secrets if s]
    if secrets and secrets[0]:
        forms.append(base64.b64encode(f"{merchant_id}:{secrets[0]}".encode()).decode())
    return forms


def grants(
    stack: Any, *argv: str, expect: int | None = 0, stdin: str | None = None, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess:
    """Run the ``grants`` CLI (``python -m ops``) against ``stack``, as an
    operator would; asserts its exit code unless ``expect`` is None."""
    out = subprocess.run(
        [sys.executable, "-m", "ops", *argv],
        env=stack.env(**env),
        cwd=REPO_ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if expect is not None:
        assert out.returncode == expect, out.stdout + out.stderr
    return out


def xsolla_granted(request: httpx.Request) -> httpx.Response:
    """What Xsolla answers a purchase call that applied every operation (an
    httpx.MockTransport handler for the sender's unit tests)."""
    import json

    ops = json.loads(request.content)
    return httpx.Response(
        200,
        json={
            "count": len(ops),
            "operations": [
                {
                    "user": o["user"],
                    "purchase": {"external_purchase_id": o["purchase"]["external_purchase_id"]},
                    "items": [{**i, "balance": i["quantity"]} for i in o["items"]],
                }
                for o in ops
            ],
        },
    )
