"""The sandbox (fake Xsolla inventory API) over real HTTP.

One real server per module: ``python -m sandbox --port 0`` in a subprocess
(uvicorn, uvloop, httptools), spoken to with httpx. Each test uses its own
project_id so tests never see each other's inventories; faults, the
idempotent switch and the stats counters are reset before each test.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import sandbox_process

ROOT = Path(__file__).resolve().parents[3]
MERCHANT_ID = "424242"
API_KEY = "sandbox-test-key-not-a-secret"

_project_ids = itertools.count(1000)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("sandbox")
    env = {
        **os.environ,
        "GRANTS_XSOLLA_MERCHANT_ID": MERCHANT_ID,
        "GRANTS_XSOLLA_API_KEY": API_KEY,
    }
    with sandbox_process(tmp, env, secrets=(API_KEY,)) as url:
        yield url


@pytest.fixture
def admin(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=5) as client:
        client.put("/sandbox/faults", json={}).raise_for_status()
        client.put("/sandbox/config", json={"idempotent": False}).raise_for_status()
        client.post("/sandbox/reset").raise_for_status()
        yield client


@pytest.fixture
def api(base_url: str, admin: httpx.Client) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, auth=(MERCHANT_ID, API_KEY), timeout=5) as client:
        yield client


@pytest.fixture
def project() -> int:
    return next(_project_ids)


def purchase(epid: str, user: str = "u1", items: list[tuple[str, int]] | None = None) -> dict[str, Any]:
    return {
        "user": {"id": user},
        "items": [{"sku": s, "quantity": q} for s, q in (items or [("gold", 5)])],
        "purchase": {
            "amount": "2.99",
            "currency": "USD",
            "external_purchase_id": epid,
            "external_purchase_date": "2024-05-01T12:00:00+00:00",
        },
    }


def grant(user: str, items: list[tuple[str, int]]) -> dict[str, Any]:
    return {"user": {"id": user}, "items": [{"sku": s, "quantity": q} for s, q in items]}


def url(project: int, kind: str = "purchase") -> str:
    return f"/v2/project/{project}/inventory/{kind}"


def counts(admin: httpx.Client, project: int, kind: str = "purchase") -> dict[str, int]:
    r = admin.get("/sandbox/audit/counts", params={"project_id": project, "kind": kind})
    r.raise_for_status()
    return r.json()["counts"]


def balance(admin: httpx.Client, project: int, user: str, sku: str) -> Any:
    rows = admin.get("/sandbox/balances", params={"project_id": project, "user_id": user}).json()
    return next((b["quantity"] for b in rows["balances"] if b["sku"] == sku), 0)


def audit(admin: httpx.Client, project: int) -> list[dict[str, Any]]:
    return admin.get("/sandbox/audit", params={"project_id": project}).json()["entries"]


# --------------------------------------------------------------------- auth


def test_missing_credentials_401_wrong_403(base_url: str, admin: httpx.Client, project: int) -> None:
    body = [purchase("a1")]
    r = httpx.post(base_url + url(project), json=body)
    assert r.status_code == 401
    assert r.json()["statusCode"] == 401
    r = httpx.post(base_url + url(project), json=body, auth=(MERCHANT_ID, "wrong"))
    assert r.status_code == 403
    assert r.json()["statusCode"] == 403
    r = httpx.post(base_url + url(project), json=body, auth=("999", API_KEY))
    assert r.status_code == 403
    assert audit(admin, project) == []


# --------------------------------------------------------------- validation


def test_invalid_body_422_names_the_field(api: httpx.Client, admin: httpx.Client, project: int) -> None:
    bad = purchase("b2")
    bad["purchase"]["currency"] = "DOLLARS"
    r = api.post(url(project), json=[purchase("b1"), bad])
    assert r.status_code == 422
    err = r.json()
    assert err["statusCode"] == 422 and err["errorCode"] == 1102
    assert err["errorMessage"].startswith("[0401]: 1.purchase.currency: ")
    assert audit(admin, project) == []  # the valid first operation is not applied either

    r = api.post(url(project), json={"not": "an array"})
    assert r.status_code == 422 and r.json()["errorMessage"].startswith("[0401]: body: ")
    r = api.post(url(project, "reward"), json=[{"user": {"id": "u"}, "items": [], "extra": 1}])
    assert r.status_code == 422 and "0.items" in r.json()["errorMessage"]


def test_only_first_50_operations_are_applied(api: httpx.Client, admin: httpx.Client, project: int) -> None:
    ops = [purchase(f"p{i:02d}") for i in range(51)]
    r = api.post(url(project), json=ops)
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 50 and len(body["operations"]) == 50
    assert [o["purchase"]["external_purchase_id"] for o in body["operations"]] == [f"p{i:02d}" for i in range(50)]
    assert counts(admin, project) == {f"p{i:02d}": 1 for i in range(50)}
    assert balance(admin, project, "u1", "gold") == 250
    stats = admin.get("/sandbox/stats").json()
    assert stats["operations_received"] == 51
    assert stats["operations_processed"] == 50
    assert stats["ignored_operations"] == 1
    assert stats["max_operations_per_call"] == 51
    zeroed = admin.put("/sandbox/reset", json={}).json()  # PUT works like POST
    assert zeroed["calls"] == 0 and zeroed["ignored_operations"] == 0
    assert counts(admin, project) == {f"p{i:02d}": 1 for i in range(50)}  # data stays


def test_unknown_sku_with_catalog_404_and_nothing_applied(api: httpx.Client, admin: httpx.Client, project: int) -> None:
    admin.put(f"/sandbox/projects/{project}/catalog", json=["gold", "gem"]).raise_for_status()
    r = api.post(url(project), json=[purchase("c1"), purchase("c2", items=[("gem", 1), ("sword", 1)])])
    assert r.status_code == 404
    assert r.json() == {
        "statusCode": 404,
        "errorCode": 4001,
        "errorMessage": "[0401]: Item with sku = 'sword' not found",
    }
    assert audit(admin, project) == []
    assert api.post(url(project), json=[purchase("c1", items=[("gem", 2)])]).status_code == 200
    # Removing the catalog makes every SKU exist again.
    admin.put(f"/sandbox/projects/{project}/catalog", content=b"null").raise_for_status()
    assert api.post(url(project), json=[purchase("c3", items=[("sword", 1)])]).status_code == 200


# ------------------------------------------------------- applying, balances


def test_idempotent_mode_applies_a_repeat_once(api: httpx.Client, admin: httpx.Client, project: int) -> None:
    admin.put("/sandbox/config", json={"idempotent": True}).raise_for_status()
    first = api.post(url(project), json=[purchase("i1")])
    again = api.post(url(project), json=[purchase("i1"), purchase("i2")])
    assert first.status_code == again.status_code == 200
    assert first.json()["operations"][0]["items"][0]["balance"] == 5
    # The repeat is still reported, with the current balance.
    assert again.json()["count"] == 2
    assert [o["items"][0]["balance"] for o in again.json()["operations"]] == [5, 10]
    assert counts(admin, project) == {"i1": 1, "i2": 1}
    assert balance(admin, project, "u1", "gold") == 10
    assert admin.get("/sandbox/stats").json()["idempotent"] is True


def test_non_idempotent_mode_applies_a_repeat_twice(api: httpx.Client, admin: httpx.Client, project: int) -> None:
    for _ in range(2):
        assert api.post(url(project), json=[purchase("n1")]).status_code == 200
    assert counts(admin, project) == {"n1": 2}
    assert balance(admin, project, "u1", "gold") == 10


def test_balances_accumulate_across_kinds(api: httpx.Client, admin: httpx.Client, project: int) -> None:
    r = api.post(
        url(project), json=[purchase("x1", items=[("gold", 5), ("gem", 1)]), purchase("x2", items=[("gold", 3)])]
    )
    assert r.json()["operations"] == [
        {
            "user": {"id": "u1"},
            "purchase": {"external_purchase_id": "x1"},
            "items": [{"sku": "gold", "quantity": 5, "balance": 5}, {"sku": "gem", "quantity": 1, "balance": 1}],
        },
        {
            "user": {"id": "u1"},
            "purchase": {"external_purchase_id": "x2"},
            "items": [{"sku": "gold", "quantity": 3, "balance": 8}],
        },
    ]
    r = api.post(url(project, "reward"), json=[grant("u1", [("gold", 2)]), grant("u2", [("gold", 7)])])
    assert r.status_code == 200
    assert r.json()["operations"][0] == {"user": {"id": "u1"}, "items": [{"sku": "gold", "quantity": 2, "balance": 10}]}
    r = api.post(url(project, "revoke"), json=[grant("u1", [("gold", 4)])])
    assert r.status_code == 200 and r.json()["operations"][0]["items"][0]["balance"] == 6
    rows = admin.get("/sandbox/balances", params={"project_id": project}).json()["balances"]
    assert rows == [
        {"project_id": project, "user_id": "u1", "sku": "gem", "quantity": 1},
        {"project_id": project, "user_id": "u1", "sku": "gold", "quantity": 6},
        {"project_id": project, "user_id": "u2", "sku": "gold", "quantity": 7},
    ]


def test_revoke_not_enough_404_and_nothing_applied(api: httpx.Client, admin: httpx.Client, project: int) -> None:
    api.post(url(project, "reward"), json=[grant("u1", [("gold", 5)])]).raise_for_status()
    # Each op alone would fit; together they take gold below zero.
    r = api.post(url(project, "revoke"), json=[grant("u1", [("gold", 3)]), grant("u1", [("gold", 3)])])
    assert r.status_code == 404
    assert r.json() == {
        "statusCode": 404,
        "errorCode": 4001,
        "errorMessage": "[0401]: Failed to remove this number of items",
    }
    assert balance(admin, project, "u1", "gold") == 5
    assert [e["kind"] for e in audit(admin, project)] == ["reward"]


def test_audit_counts_operations_not_items_and_pages(api: httpx.Client, admin: httpx.Client, project: int) -> None:
    api.post(
        url(project), json=[purchase("a1", items=[("gold", 1), ("gem", 2), ("orb", 3)]), purchase("a2")]
    ).raise_for_status()
    api.post(url(project), json=[purchase("a1", items=[("gold", 1)])]).raise_for_status()
    api.post(url(project, "reward"), json=[grant("u1", [("gold", 1)])]).raise_for_status()
    assert counts(admin, project) == {"a1": 2, "a2": 1}
    assert counts(admin, project, "reward") == {}  # rewards have no external_purchase_id

    entries = audit(admin, project)
    assert len(entries) == 6  # one row per item
    assert set(entries[0]) == {
        "id",
        "project_id",
        "kind",
        "operation",
        "external_purchase_id",
        "user_id",
        "sku",
        "quantity",
        "at",
    }
    page = admin.get("/sandbox/audit", params={"project_id": project, "limit": 4}).json()
    assert [e["id"] for e in page["entries"]] == [e["id"] for e in entries[:4]]
    rest = admin.get("/sandbox/audit", params={"project_id": project, "after_id": page["next_after_id"]}).json()
    assert [e["id"] for e in rest["entries"]] == [e["id"] for e in entries[4:]]
    assert rest["next_after_id"] == entries[-1]["id"]


# ------------------------------------------------------------------- faults


def test_scripted_429_has_retry_after_then_next_call_succeeds(
    api: httpx.Client, admin: httpx.Client, project: int
) -> None:
    admin.put("/sandbox/faults", json={"script": [{"status": 429, "retry_after": 7}]}).raise_for_status()
    r = api.post(url(project), json=[purchase("r1")])
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "7"
    assert audit(admin, project) == []
    assert api.post(url(project), json=[purchase("r1")]).status_code == 200
    assert counts(admin, project) == {"r1": 1}
    assert admin.get("/sandbox/stats").json()["faults"] == {"429": 1}


def test_scripted_503_applies_nothing(api: httpx.Client, admin: httpx.Client, project: int) -> None:
    admin.put("/sandbox/faults", json={"script": [{"status": 503}, {"status": 500}]}).raise_for_status()
    assert api.post(url(project), json=[purchase("s1")]).status_code == 503
    assert api.post(url(project), json=[purchase("s1")]).status_code == 500
    assert audit(admin, project) == []
    assert api.post(url(project), json=[purchase("s1")]).status_code == 200
    assert admin.get("/sandbox/faults").json()["script"] == []


def test_drop_closes_the_connection_after_applying(api: httpx.Client, admin: httpx.Client, project: int) -> None:
    admin.put("/sandbox/faults", json={"script": [{"action": "drop"}]}).raise_for_status()
    with pytest.raises(httpx.RemoteProtocolError):
        api.post(url(project), json=[purchase("d1")])
    assert counts(admin, project) == {"d1": 1}
    # The client's next call gets a fresh connection and a normal answer.
    assert api.post(url(project), json=[purchase("d2")]).status_code == 200
    assert admin.get("/sandbox/stats").json()["faults"] == {"drop": 1}


def test_hang_makes_the_client_time_out_after_applying(api: httpx.Client, admin: httpx.Client, project: int) -> None:
    admin.put("/sandbox/faults", json={"script": [{"action": "hang", "seconds": 1.0}]}).raise_for_status()
    with pytest.raises(httpx.ReadTimeout):
        api.post(url(project), json=[purchase("h1")], timeout=0.3)
    assert counts(admin, project) == {"h1": 1}


def test_outage_answers_503_until_it_ends(api: httpx.Client, admin: httpx.Client, project: int) -> None:
    admin.put("/sandbox/faults", json={"script": [{"action": "outage", "seconds": 0.3}]}).raise_for_status()
    assert api.post(url(project), json=[purchase("o1")]).status_code == 503
    assert api.post(url(project), json=[purchase("o1")]).status_code == 503
    time.sleep(0.35)
    assert api.post(url(project), json=[purchase("o1")]).status_code == 200
    assert counts(admin, project) == {"o1": 1}
    assert admin.get("/sandbox/stats").json()["faults"] == {"outage": 2}


def test_random_faults_follow_the_seed(api: httpx.Client, admin: httpx.Client, project: int) -> None:
    config = {"rate_5xx": 0.3, "rate_429": 0.3, "retry_after_s": 2, "seed": 11}

    def run() -> list[int]:
        admin.put("/sandbox/faults", json=config).raise_for_status()
        return [api.post(url(project), json=[purchase(f"z{i}")]).status_code for i in range(20)]

    first = run()
    assert first == run()
    assert {429, 503, 200} <= set(first)
    got = admin.get("/sandbox/faults").json()
    assert got["rate_5xx"] == 0.3 and got["latency_ms"] == 0 and got["script"] == []
    # Unspecified keys go back to their defaults.
    admin.put("/sandbox/faults", json={"latency_ms": 1}).raise_for_status()
    assert admin.get("/sandbox/faults").json()["rate_5xx"] == 0
    assert admin.put("/sandbox/faults", json={"rate_5xx": 2}).status_code == 422
