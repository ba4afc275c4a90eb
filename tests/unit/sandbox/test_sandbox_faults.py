"""The sandbox's fault script over real HTTP: path targeting, pass, 3xx,
verbatim and header-echoing bodies, answers after applying (status, padding,
someone else's user), scoped outages, and PUT validation.

One real server for the module (``python -m sandbox --port 0``), all three
APIs on it; faults, the PlayFab config and catalog and the stats are reset
before each test, and each test uses its own project and players.
"""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from schemas.playfab import GetUserInventoryResult, GrantItemsToUsersResult
from tests.unit.sandbox.test_sandbox_backends import (
    API_KEY,
    BACKPACK_TOKEN,
    BODIES,
    HOST_ID,
    MERCHANT_ID,
    PLAYFAB_KEY,
    create_url,
    grants,
    new_players,
    pf_ok,
    present,
)

_projects = itertools.count(9000)


@pytest.fixture
def xsolla(base_url: str, admin: httpx.Client) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, auth=(str(MERCHANT_ID), API_KEY), timeout=30) as client:
        yield client


@pytest.fixture
def backpack(base_url: str, admin: httpx.Client) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {BACKPACK_TOKEN}", "X-HOST-ID": HOST_ID}
    with httpx.Client(base_url=base_url, headers=headers, timeout=5) as client:
        yield client


@pytest.fixture
def playfab(base_url: str, admin: httpx.Client) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{base_url}/playfab", headers={"X-SecretKey": PLAYFAB_KEY}, timeout=5) as client:
        yield client


@pytest.fixture
def project() -> int:
    return next(_projects)


def script(admin: httpx.Client, *actions: dict[str, Any]) -> None:
    admin.put("/sandbox/faults", json={"script": list(actions)}).raise_for_status()


def purchase(epid: str, user: str = "u1", sku: str = "gold", quantity: int = 5) -> dict[str, Any]:
    return {
        "user": {"id": user},
        "items": [{"sku": sku, "quantity": quantity}],
        "purchase": {
            "amount": "2.99",
            "currency": "USD",
            "external_purchase_id": epid,
            "external_purchase_date": "2024-05-01T12:00:00+00:00",
        },
    }


def inventory_url(project: int, kind: str = "purchase") -> str:
    return f"/v2/project/{project}/inventory/{kind}"


def applied(admin: httpx.Client, project: int) -> dict[str, int]:
    return admin.get("/sandbox/audit/counts", params={"project_id": project}).json()["counts"]


def injected(admin: httpx.Client) -> dict[str, int]:
    return admin.get("/sandbox/stats").json()["faults"]


def pending(admin: httpx.Client) -> list[dict[str, Any]]:
    return admin.get("/sandbox/faults").json()["script"]


# ------------------------------------------------------------ path and pass


def test_path_action_waits_for_a_matching_call(xsolla: httpx.Client, admin: httpx.Client, project: int) -> None:
    script(admin, {"path": "/inventory/revoke", "status": 503})
    assert xsolla.post(inventory_url(project), json=[purchase("p1")]).status_code == 200
    assert pending(admin) == [{"path": "/inventory/revoke", "status": 503}]
    revoke = [{"user": {"id": "u1"}, "items": [{"sku": "gold", "quantity": 1}]}]
    assert xsolla.post(inventory_url(project, "revoke"), json=revoke).status_code == 503
    assert xsolla.post(inventory_url(project, "revoke"), json=revoke).status_code == 200
    assert pending(admin) == []
    assert injected(admin) == {"503": 1}


def test_first_matching_action_in_script_order_is_consumed(playfab: httpx.Client, admin: httpx.Client) -> None:
    (player,) = new_players(admin, 1)
    script(
        admin,
        {"path": "GetUserInventory", "status": 500},
        {"status": 429, "retry_after": 2},
        {"path": "GrantItemsToUsers", "status": 502},
    )
    body = {"ItemGrants": grants(player, ["sword"], "order-1")}
    # The grant skips the inventory action and takes the pathless 429 ...
    r = playfab.post("/Admin/GrantItemsToUsers", json=body)
    assert r.status_code == 429 and r.headers["Retry-After"] == "2"
    # ... then the next grant the 502 meant for it; the inventory action waits.
    assert playfab.post("/Admin/GrantItemsToUsers", json=body).status_code == 502
    assert pending(admin) == [{"path": "GetUserInventory", "status": 500}]
    assert playfab.post("/Admin/GrantItemsToUsers", json=body).status_code == 200
    assert playfab.post("/Admin/GetUserInventory", json={"PlayFabId": player}).status_code == 500
    assert injected(admin) == {"429": 1, "502": 1, "500": 1}


def test_pass_lets_calls_through_so_a_script_targets_the_nth(
    xsolla: httpx.Client, admin: httpx.Client, project: int
) -> None:
    script(admin, {"action": "pass"}, {"action": "pass"}, {"status": 503})
    codes = [xsolla.post(inventory_url(project), json=[purchase(f"n{i}")]).status_code for i in range(4)]
    assert codes == [200, 200, 503, 200]
    assert applied(admin, project) == {"n0": 1, "n1": 1, "n3": 1}
    assert injected(admin) == {"pass": 2, "503": 1}


# --------------------------------------------------- answers before applying


def test_3xx_carries_location_and_applies_nothing(xsolla: httpx.Client, admin: httpx.Client, project: int) -> None:
    script(admin, {"status": 302}, {"status": 307, "location": "https://elsewhere.invalid/v2"})
    r = xsolla.post(inventory_url(project), json=[purchase("m1")])
    assert r.status_code == 302 and r.headers["Location"] == "https://example.invalid/moved"
    assert r.json()["statusCode"] == 302
    r = xsolla.post(inventory_url(project), json=[purchase("m1")])
    assert r.status_code == 307 and r.headers["Location"] == "https://elsewhere.invalid/v2"
    assert applied(admin, project) == {}
    assert injected(admin) == {"302": 1, "307": 1}


def test_body_is_answered_verbatim_and_applies_nothing(xsolla: httpx.Client, admin: httpx.Client, project: int) -> None:
    xsolla_404 = '{"statusCode":404,"errorCode":4001,"errorMessage":"[0401]: Item with sku = \'x\' not found"}'
    script(
        admin,
        {"status": 404, "body": "Not Found"},
        {"status": 404, "body": xsolla_404},
        {"status": 413, "body": "<html>413 Request Entity Too Large</html>"},
        {"status": 405, "body": ""},
    )
    r = xsolla.post(inventory_url(project), json=[purchase("v1")])
    assert (r.status_code, r.text) == (404, "Not Found")
    assert r.headers["content-type"].startswith("text/plain")
    r = xsolla.post(inventory_url(project), json=[purchase("v1")])
    assert (r.status_code, r.text) == (404, xsolla_404)
    assert r.headers["content-type"] == "application/json"
    r = xsolla.post(inventory_url(project), json=[purchase("v1")])
    assert (r.status_code, r.text) == (413, "<html>413 Request Entity Too Large</html>")
    r = xsolla.post(inventory_url(project), json=[purchase("v1")])
    assert (r.status_code, r.content) == (405, b"")
    assert applied(admin, project) == {}


def test_echo_headers_echoes_credentials_verbatim(
    xsolla: httpx.Client,
    playfab: httpx.Client,
    backpack: httpx.Client,
    admin: httpx.Client,
    project: int,
) -> None:
    script(
        admin,
        {"status": 502, "echo_headers": True},
        {"status": 500, "echo_headers": True},
        {"status": 503, "echo_headers": True},
    )
    r = xsolla.post(inventory_url(project), json=[purchase("e1")], headers={"X-Trace": "t-1"})
    assert r.status_code == 502 and r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    assert lines[0] == "502 Bad Gateway"
    basic = base64.b64encode(f"{MERCHANT_ID}:{API_KEY}".encode()).decode()
    assert f"authorization: Basic {basic}" in lines and "x-trace: t-1" in lines
    r = playfab.post("/Admin/GetUserInventory", json={"PlayFabId": "anyone"})
    assert r.status_code == 500 and f"x-secretkey: {PLAYFAB_KEY}" in r.text.splitlines()
    r = backpack.get(f"/web/backpack/merchants/{MERCHANT_ID}/projects/{project}/users/u1/items")
    assert r.status_code == 503 and f"authorization: Bearer {BACKPACK_TOKEN}" in r.text.splitlines()
    assert applied(admin, project) == {}


def test_outage_with_path_covers_only_that_backend(
    xsolla: httpx.Client, playfab: httpx.Client, admin: httpx.Client, project: int
) -> None:
    (player,) = new_players(admin, 1)
    script(admin, {"path": "/playfab/", "action": "outage", "seconds": 0.5})
    inventory = {"PlayFabId": player}
    assert xsolla.post(inventory_url(project), json=[purchase("o1")]).status_code == 200
    assert playfab.post("/Admin/GetUserInventory", json=inventory).status_code == 503
    assert xsolla.post(inventory_url(project), json=[purchase("o2")]).status_code == 200
    assert playfab.post("/Admin/GetUserInventory", json=inventory).status_code == 503
    outages = admin.get("/sandbox/faults").json()["outages"]
    assert [o["path"] for o in outages] == ["/playfab/"] and 0 < outages[0]["remaining_s"] <= 0.5
    time.sleep(0.55)
    assert playfab.post("/Admin/GetUserInventory", json=inventory).status_code == 200
    assert injected(admin) == {"outage": 2}


# ---------------------------------------------------- answers after applying


def test_apply_then_answer_an_error(xsolla: httpx.Client, admin: httpx.Client, project: int) -> None:
    script(admin, {"action": "apply", "status": 500}, {"action": "apply", "status": 404, "body": "Not Found"})
    r = xsolla.post(inventory_url(project), json=[purchase("a1")])
    assert r.status_code == 500
    assert r.json() == {
        "statusCode": 500,
        "errorCode": 0,
        "errorMessage": "[0401]: Internal Server Error (sandbox fault)",
    }
    r = xsolla.post(inventory_url(project), json=[purchase("a2")])
    assert (r.status_code, r.text) == (404, "Not Found")
    assert applied(admin, project) == {"a1": 1, "a2": 1}
    assert injected(admin) == {"apply.500": 1, "apply.404": 1}


def test_pad_adds_50_mb_to_the_success_answer(xsolla: httpx.Client, admin: httpx.Client, project: int) -> None:
    size = 50 * 1000 * 1000
    script(admin, {"action": "pad", "bytes": size})
    assert pending(admin) == [{"action": "pad", "bytes": size}]
    r = xsolla.post(inventory_url(project), json=[purchase("big1")])
    assert r.status_code == 200 and int(r.headers["content-length"]) > size
    body = orjson.loads(r.content)
    assert len(body.pop("padding")) == size
    assert body == {
        "count": 1,
        "operations": [
            {
                "user": {"id": "u1"},
                "purchase": {"external_purchase_id": "big1"},
                "items": [{"sku": "gold", "quantity": 5, "balance": 5}],
            }
        ],
    }
    assert applied(admin, project) == {"big1": 1}
    assert injected(admin) == {"pad": 1}


def test_pad_keeps_an_array_answer_the_same_items(backpack: httpx.Client, admin: httpx.Client, project: int) -> None:
    url = create_url(project, "u1", "virtual_items")
    plain = backpack.post(url, json=[BODIES["virtual_items"]])
    script(admin, {"action": "pad", "bytes": 1000})
    r = backpack.post(url, json=[BODIES["virtual_items"]])
    assert r.status_code == 201 and len(r.content) > len(plain.content) + 900
    item = r.json()[0]
    assert set(item) == set(plain.json()[0]) and item["item_sku"] == "sword"


def test_wrong_user_names_someone_else_after_applying(
    xsolla: httpx.Client, playfab: httpx.Client, admin: httpx.Client, project: int
) -> None:
    script(
        admin,
        {"path": "/inventory/purchase", "action": "wrong_user"},
        {"path": "GrantItemsToUsers", "action": "wrong_user"},
    )
    r = xsolla.post(inventory_url(project), json=[purchase("w1", user="alice"), purchase("w2", user="bob")])
    assert r.status_code == 200
    assert [op["user"]["id"] for op in r.json()["operations"]] == ["someone-else"] * 2
    balances = admin.get("/sandbox/balances", params={"project_id": project}).json()["balances"]
    assert sorted(b["user_id"] for b in balances) == ["alice", "bob"]
    (player,) = new_players(admin, 1)
    results = pf_ok(
        playfab.post("/Admin/GrantItemsToUsers", json={"ItemGrants": grants(player, ["sword", "bow"], "wu-1")}),
        GrantItemsToUsersResult,
    ).ItemGrantResults
    assert {g.PlayFabId for g in results} == {"someone-else"}
    inv = pf_ok(playfab.post("/Admin/GetUserInventory", json={"PlayFabId": player}), GetUserInventoryResult)
    assert sorted(present(i.ItemId for i in inv.Inventory)) == ["bow", "sword"]
    assert injected(admin) == {"wrong_user": 2}


def test_playfab_drop_of_a_partly_refused_grant_applies_the_good_item(
    playfab: httpx.Client, admin: httpx.Client
) -> None:
    # Result false comes from the title's catalog: an ItemId it lacks.
    (player,) = new_players(admin, 1)
    admin.put("/sandbox/playfab/catalog", json={"Catalog": ["sword"]}).raise_for_status()
    script(admin, {"path": "GrantItemsToUsers", "action": "drop"})
    body = {"ItemGrants": grants(player, ["sword", "not_in_catalog"], "half-1")}
    assert playfab.post("/Admin/GetUserInventory", json={"PlayFabId": player}).status_code == 200
    with pytest.raises(httpx.RemoteProtocolError):
        playfab.post("/Admin/GrantItemsToUsers", json=body)
    inv = pf_ok(playfab.post("/Admin/GetUserInventory", json={"PlayFabId": player}), GetUserInventoryResult)
    assert [(i.ItemId, i.Annotation) for i in inv.Inventory] == [("sword", "half-1")]
    assert inv.Inventory[0].ItemInstanceId
    counts = admin.get("/sandbox/playfab/counts").json()
    assert (counts["counts"]["half-1"], counts["rows"]["half-1"]) == (1, 1)
    assert injected(admin) == {"drop": 1}


# --------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("action", "names"),
    [
        ({"status": 200}, "script.0.status"),
        ({"status": 500, "location": "https://x.invalid"}, '"location"'),
        ({"status": 500, "retry_after": 3}, '"retry_after"'),
        ({"action": "pad"}, '"bytes"'),
        ({"action": "drop", "bytes": 10}, '"bytes"'),
        ({"action": "drop", "status": 500}, '"status"'),
        ({"action": "apply"}, '"status"'),
        ({"action": "hang"}, '"seconds"'),
        ({"action": "pass", "seconds": 1}, '"seconds"'),
        ({"action": "wrong_user", "body": "x"}, '"body"'),
        ({"status": 500, "body": "x", "echo_headers": True}, '"echo_headers"'),
        ({"status": 500, "path": ""}, "script.0.path"),
        ({"action": "explode"}, "script.0.action"),
        ({"status": 500, "colour": "red"}, "script.0.colour"),
    ],
)
def test_put_names_the_bad_field(admin: httpx.Client, action: dict[str, Any], names: str) -> None:
    r = admin.put("/sandbox/faults", json={"script": [action]})
    assert r.status_code == 422
    assert names in r.json()["error"], r.json()
    assert pending(admin) == []  # the old config stays
