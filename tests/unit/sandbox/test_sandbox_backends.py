"""The sandbox's Xsolla Backpack and PlayFab APIs over real HTTP.

One real server for the module (``python -m sandbox --port 0`` in a
subprocess), spoken to with httpx; no mocks. Credentials come the way a
deployment gives them: the Backpack token and PlayFab secret key from files
named by environment variables, the host id by a flag. Every test uses its own
Backpack project and PlayFab player ids; faults, the PlayFab config and
catalog and the stats are reset before each test.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from pydantic import BaseModel

from schemas.backpack import (
    CREATE_RESPONSES,
    LIST_ITEMS_RESPONSE,
    MAX_ITEMS_PER_CALL,
    OPERATION_ID_HEADER,
    ErrorResponse,
    ItemType,
)
from schemas.playfab import (
    MAX_REVOKE_ITEMS_PER_CALL,
    ApiErrorWrapper,
    ApiSuccess,
    GetUserInventoryResult,
    GrantItemsToUsersResult,
    PlayFabErrorCode,
    RevokeInventoryItemsResult,
)

ROOT = Path(__file__).resolve().parents[3]
MERCHANT_ID = 424242
API_KEY = "backends-test-xsolla-key"
BACKPACK_TOKEN = "backends-test-backpack-token"
HOST_ID = "3f0c2a55-4b7e-4d53-9c1e-7a2f5d9e0b11"
PLAYFAB_KEY = "backends-test-playfab-secret"
SECRETS = (API_KEY, BACKPACK_TOKEN, PLAYFAB_KEY)

_projects = itertools.count(7000)
_players = itertools.count(1)

M = TypeVar("M", bound=BaseModel)


@pytest.fixture
def backpack(base_url: str, admin: httpx.Client) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {BACKPACK_TOKEN}", "X-HOST-ID": HOST_ID}
    with httpx.Client(base_url=base_url, headers=headers, timeout=5) as client:
        yield client


@pytest.fixture
def playfab(base_url: str, admin: httpx.Client) -> Iterator[httpx.Client]:
    # The base URL a worker would configure in place of https://{titleId}.playfabapi.com
    with httpx.Client(base_url=f"{base_url}/playfab", headers={"X-SecretKey": PLAYFAB_KEY}, timeout=5) as client:
        yield client


# ------------------------------------------------------------------ helpers


def bp_prefix(project: int) -> str:
    return f"/web/backpack/merchants/{MERCHANT_ID}/projects/{project}"


def create_url(project: int, user: str, segment: str) -> str:
    return f"{bp_prefix(project)}/user/{user}/{segment}"


def items_url(project: int, user: str) -> str:
    return f"{bp_prefix(project)}/users/{user}/items"


def base_item(sku: str = "sword", **extra: Any) -> dict[str, Any]:
    return {
        "item_sku": sku,
        "item_name": sku.title(),
        "image_url": f"https://img.example/{sku}.png",
        "external_game_id": "game-1",
        **extra,
    }


BODIES: dict[str, dict[str, Any]] = {
    "game_keys": base_item("game.key", code="AAAA-BBBB-CCCC", platform="steam"),
    "virtual_items": base_item("sword", platform="steam", description="A sword"),
    "virtual_currency": base_item("gold_100", price=4.99, currency="USD", quantity=100),
    "promo_codes": base_item("promo.bundle", promo_code="WELCOME-10"),
}
SEGMENT_TYPES = {
    "game_keys": ItemType.game_key,
    "virtual_items": ItemType.virtual_item,
    "virtual_currency": ItemType.virtual_currency,
    "promo_codes": ItemType.promo_code,
}


def new_players(admin: httpx.Client, n: int, **body: Any) -> list[str]:
    ids = [f"PF{next(_players):014X}" for _ in range(n)]
    admin.post("/sandbox/playfab/players", json={"PlayFabIds": ids, **body}).raise_for_status()
    return ids


def pf_ok(response: httpx.Response, result_model: type[M]) -> M:
    assert response.status_code == 200, response.text
    # The envelope first, then its data as the result model (mypy takes no
    # variable as a type argument: ApiSuccess[result_model]).
    return result_model.model_validate(ApiSuccess[Any].model_validate_json(response.content).data)


def present(values: Iterable[str | None]) -> list[str]:
    """The values, each asserted set (PlayFab's result models make every field optional)."""
    out = []
    for value in values:
        assert value is not None
        out.append(value)
    return out


def pf_err(response: httpx.Response, http: int, code: PlayFabErrorCode) -> ApiErrorWrapper:
    assert response.status_code == http, response.text
    err = ApiErrorWrapper.model_validate_json(response.content)
    assert (err.code, err.error, err.errorCode) == (http, code.name, int(code)), err
    return err


def pf_counts(admin: httpx.Client, kind: str = "playfab.grant", by: str = "annotation") -> dict[str, Any]:
    r = admin.get("/sandbox/playfab/counts", params={"kind": kind, "by": by})
    r.raise_for_status()
    return r.json()


def grants(player: str, items: list[str], annotation: str) -> list[dict[str, Any]]:
    return [{"PlayFabId": player, "ItemId": item, "Annotation": annotation} for item in items]


# ------------------------------------------------------------- Backpack auth


def test_backpack_auth_bearer_and_host_id(base_url: str, admin: httpx.Client) -> None:
    project = next(_projects)
    url = base_url + create_url(project, "u1", "virtual_items")
    body = [BODIES["virtual_items"]]
    cases = [
        ({"X-HOST-ID": HOST_ID}, 401),
        ({"Authorization": "Bearer wrong", "X-HOST-ID": HOST_ID}, 401),
        ({"Authorization": f"Basic {BACKPACK_TOKEN}", "X-HOST-ID": HOST_ID}, 401),
        ({"Authorization": f"Bearer {BACKPACK_TOKEN}"}, 400),
        ({"Authorization": f"Bearer {BACKPACK_TOKEN}", "X-HOST-ID": "not-the-host"}, 403),
    ]
    for headers, status in cases:
        r = httpx.post(url, json=body, headers=headers)
        assert r.status_code == status, (headers, r.text)
        err = ErrorResponse.model_validate_json(r.content)
        assert err.message and err.message_id
        assert BACKPACK_TOKEN not in r.text
    r = httpx.get(base_url + items_url(project, "u1"), headers={"X-HOST-ID": HOST_ID})
    assert r.status_code == 401
    assert admin.get("/sandbox/backpack/items", params={"project_id": project}).json()["items"] == []


# -------------------------------------------------- Backpack create/list/delete


def test_backpack_create_each_kind_list_delete(backpack: httpx.Client, admin: httpx.Client) -> None:
    project = next(_projects)
    created: dict[str, Any] = {}
    for segment, body in BODIES.items():
        r = backpack.post(
            create_url(project, "u1", segment), json=[body], headers={OPERATION_ID_HEADER: f"op-{segment}"}
        )
        assert r.status_code == 201, r.text
        (item,) = CREATE_RESPONSES[SEGMENT_TYPES[segment]].validate_json(r.content)
        assert item.item_type is SEGMENT_TYPES[segment]
        assert (item.project_id, item.merchant_id, item.external_game_id) == (project, MERCHANT_ID, "game-1")
        assert item.item_sku == body["item_sku"] and item.item_id
        created[segment] = item
    assert created["game_keys"].code == "AAAA-BBBB-CCCC"
    assert created["promo_codes"].promo_code == "WELCOME-10"
    vc = created["virtual_currency"]
    assert (vc.quantity, vc.price, vc.currency, vc.is_external_vc) == (100, 4.99, "USD", True)
    assert created["virtual_items"].platform == "steam"

    # A project with a Metaframe virtual currency answers is_external_vc false.
    admin.put(f"/sandbox/backpack/projects/{project}/config", json={"metaframe_vc": True}).raise_for_status()
    r = backpack.post(create_url(project, "u2", "virtual_currency"), json=[BODIES["virtual_currency"]] * 2)
    assert r.status_code == 201 and [i["is_external_vc"] for i in r.json()] == [False, False]
    assert len({i["item_id"] for i in r.json()}) == 2

    r = backpack.get(items_url(project, "u1"))
    assert r.status_code == 200
    listed = LIST_ITEMS_RESPONSE.validate_json(r.content)
    assert [i.item_id for i in listed] == [created[s].item_id for s in BODIES]
    assert listed[0].code == "AAAA-BBBB-CCCC" and listed[0].promo_code is None
    assert set(r.json()[0]) >= {"image_proxy_url", "is_external_vc", "quantity", "platform"}
    page = backpack.get(items_url(project, "u1"), params={"offset": 1, "limit": 2}).json()
    assert [i["item_id"] for i in page] == [created["virtual_items"].item_id, created["virtual_currency"].item_id]

    victim = created["virtual_items"].item_id
    r = backpack.delete(f"{items_url(project, 'u1')}/{victim}")
    assert r.status_code == 204 and r.content == b""
    assert victim not in [i["item_id"] for i in backpack.get(items_url(project, "u1")).json()]
    # Deleted already, another user's item, an unknown id: all 404.
    for user, item_id in (("u1", victim), ("u2", created["game_keys"].item_id), ("u1", "nope")):
        r = backpack.delete(f"{items_url(project, user)}/{item_id}")
        assert r.status_code == 404 and ErrorResponse.model_validate_json(r.content).message

    counts = admin.get("/sandbox/backpack/counts", params={"project_id": project}).json()
    assert counts["counts"] == {f"op-{s}": 1 for s in BODIES}
    deletes = admin.get(
        "/sandbox/backpack/counts", params={"project_id": project, "kind": "backpack.delete", "by": "item_id"}
    ).json()
    assert deletes["counts"] == {victim: 1}
    everything = admin.get("/sandbox/backpack/items", params={"project_id": project, "include_deleted": "true"}).json()[
        "items"
    ]
    assert len(everything) == 6 and sum(i["deleted"] for i in everything) == 1
    audit = admin.get("/sandbox/audit", params={"project_id": project}).json()["entries"]
    assert {e["kind"] for e in audit} == {"backpack.create", "backpack.delete"}
    assert all(e["item_id"] for e in audit)


def test_backpack_singular_user_for_create_plural_users_for_list_delete(backpack: httpx.Client) -> None:
    project = next(_projects)
    prefix = bp_prefix(project)
    assert backpack.post(f"{prefix}/users/u1/virtual_items", json=[BODIES["virtual_items"]]).status_code in (404, 405)
    assert backpack.get(f"{prefix}/user/u1/items").status_code == 404
    assert backpack.delete(f"{prefix}/user/u1/items/x").status_code == 404
    assert backpack.post(f"{prefix}/user/u1/virtual_item", json=[BODIES["virtual_items"]]).status_code == 404


def test_backpack_per_call_limit_and_invalid_bodies(backpack: httpx.Client, admin: httpx.Client) -> None:
    project = next(_projects)
    url = create_url(project, "u1", "virtual_items")
    too_many = [base_item(f"item{i}") for i in range(MAX_ITEMS_PER_CALL + 1)]
    r = backpack.post(url, json=too_many)
    assert r.status_code == 422 and str(MAX_ITEMS_PER_CALL) in r.json()["message"]
    assert admin.get("/sandbox/backpack/items", params={"project_id": project}).json()["items"] == []
    r = backpack.post(url, json=too_many[:MAX_ITEMS_PER_CALL])
    assert r.status_code == 201 and len(r.json()) == MAX_ITEMS_PER_CALL

    bad = [
        ([], "body"),
        ({"not": "an array"}, "body"),
        ([{k: v for k, v in base_item().items() if k != "external_game_id"}], "0.external_game_id"),
        ([base_item("Bad SKU")], "0.item_sku"),
        ([base_item(), base_item(extra_field=1)], "1.extra_field"),
    ]
    for body, field in bad:
        r = backpack.post(url, json=body)
        assert r.status_code == 422, body
        assert r.json()["message"].startswith(field), r.json()
    r = backpack.post(create_url(project, "u1", "promo_codes"), json=[{**BODIES["promo_codes"], "platform": "steam"}])
    assert r.status_code == 422 and r.json()["message"].startswith("0.platform")
    r = backpack.post(
        create_url(project, "u1", "virtual_currency"), json=[{**BODIES["virtual_currency"], "currency": "DOLLARS"}]
    )
    assert r.status_code == 422 and r.json()["message"].startswith("0.currency")


def test_backpack_faults_apply_too(backpack: httpx.Client, admin: httpx.Client) -> None:
    project = next(_projects)
    admin.put(
        "/sandbox/faults", json={"script": [{"status": 429, "retry_after": 4}, {"action": "drop"}]}
    ).raise_for_status()
    url = create_url(project, "u1", "game_keys")
    r = backpack.post(url, json=[BODIES["game_keys"]], headers={OPERATION_ID_HEADER: "d1"})
    assert r.status_code == 429 and r.headers["Retry-After"] == "4"
    assert ErrorResponse.model_validate_json(r.content).message
    with pytest.raises(httpx.RemoteProtocolError):
        backpack.post(url, json=[BODIES["game_keys"]], headers={OPERATION_ID_HEADER: "d1"})
    assert admin.get("/sandbox/backpack/counts").json()["counts"]["d1"] == 1
    assert backpack.get(items_url(project, "u1")).status_code == 200
    stats = admin.get("/sandbox/stats").json()
    assert stats["calls_by_api"] == {"backpack": 3}
    assert stats["faults"] == {"429": 1, "drop": 1}


# ------------------------------------------------------------------ PlayFab


def test_playfab_secret_key(base_url: str, admin: httpx.Client) -> None:
    url = f"{base_url}/playfab/Admin/GetUserInventory"
    (player,) = new_players(admin, 1)
    pf_err(httpx.post(url, json={"PlayFabId": player}), 401, PlayFabErrorCode.NotAuthenticated)
    err = pf_err(
        httpx.post(url, json={"PlayFabId": player}, headers={"X-SecretKey": "wrong"}),
        403,
        PlayFabErrorCode.NotAuthorized,
    )
    assert err.status == "Forbidden" and PLAYFAB_KEY not in (err.errorMessage or "")


def test_playfab_grant_results_are_shuffled_and_inventory_shows_them(
    playfab: httpx.Client, admin: httpx.Client
) -> None:
    p1, p2 = new_players(admin, 2, VirtualCurrency={"GO": 5})
    body = {
        "ItemGrants": grants(p1, ["sword", "shield", "bow", "axe"], "cmd-1")
        + grants(p2, ["sword", "helmet"], "cmd-2")
        + [
            {
                "PlayFabId": p2,
                "ItemId": "ring",
                "Annotation": "cmd-2",
                "CharacterId": "C1",
                "Data": {"engraving": "R", "dropped": "x"},
                "KeysToRemove": ["dropped"],
            }
        ],
        "CatalogVersion": "main",
        "CustomTags": {"trace": "t-1"},
    }
    r = playfab.post("/Admin/GrantItemsToUsers", json=body)
    assert r.json()["code"] == 200 and r.json()["status"] == "OK"
    results = pf_ok(r, GrantItemsToUsersResult).ItemGrantResults
    sent = [(g["PlayFabId"], g["ItemId"]) for g in body["ItemGrants"]]
    got = [(g.PlayFabId, g.ItemId) for g in results]
    assert sorted(got) == sorted(sent) and got != sent
    assert all(g.Result and g.ItemInstanceId and g.PurchaseDate and g.CatalogVersion == "main" for g in results)
    assert len({g.ItemInstanceId for g in results}) == len(results)
    ring = next(g for g in results if g.ItemId == "ring")
    assert (ring.CharacterId, ring.CustomData, ring.Annotation) == ("C1", {"engraving": "R"}, "cmd-2")
    assert "BundleContents" not in r.json()["data"]["ItemGrantResults"][0]  # nulls are left out

    # The same request again: same permutation (fixed by seed and body), new instances.
    again = pf_ok(playfab.post("/Admin/GrantItemsToUsers", json=body), GrantItemsToUsersResult)
    assert [(g.PlayFabId, g.ItemId) for g in again.ItemGrantResults] == got

    inv = pf_ok(playfab.post("/Admin/GetUserInventory", json={"PlayFabId": p1}), GetUserInventoryResult)
    assert inv.PlayFabId == p1 and inv.VirtualCurrency == {"GO": 5}
    assert sorted(present(i.ItemId for i in inv.Inventory)) == sorted(["sword", "shield", "bow", "axe"] * 2)
    assert {i.Annotation for i in inv.Inventory} == {"cmd-1"}
    # Character items are not in the player's own inventory.
    inv2 = pf_ok(playfab.post("/Admin/GetUserInventory", json={"PlayFabId": p2}), GetUserInventoryResult)
    assert sorted(present(i.ItemId for i in inv2.Inventory)) == ["helmet", "helmet", "sword", "sword"]
    full = admin.get("/sandbox/playfab/inventory", params={"player": p2}).json()
    assert full["exists"] and sum(i.get("CharacterId") == "C1" for i in full["Inventory"]) == 2

    counts = pf_counts(admin)
    assert (counts["counts"]["cmd-1"], counts["rows"]["cmd-1"]) == (2, 8)
    assert (counts["counts"]["cmd-2"], counts["rows"]["cmd-2"]) == (2, 6)

    # Shuffling off: request order.
    admin.put("/sandbox/playfab/config", json={"shuffle_results": False}).raise_for_status()
    plain = pf_ok(playfab.post("/Admin/GrantItemsToUsers", json=body), GrantItemsToUsersResult)
    assert [(g.PlayFabId, g.ItemId) for g in plain.ItemGrantResults] == sent


def test_playfab_item_not_in_catalog_is_result_false(playfab: httpx.Client, admin: httpx.Client) -> None:
    (player,) = new_players(admin, 1)
    admin.put(
        "/sandbox/playfab/catalog",
        json={
            "CatalogVersion": "v2",
            "Catalog": [
                "sword",
                {
                    "ItemId": "gold_pack",
                    "ItemClass": "currency_pack",
                    "DisplayName": "Gold",
                    "Bundle": {"BundledVirtualCurrencies": {"GO": 100}},
                },
            ],
        },
    ).raise_for_status()
    body = {"ItemGrants": grants(player, ["sword", "not_in_catalog", "gold_pack"], "cat-1")}
    results = pf_ok(playfab.post("/Admin/GrantItemsToUsers", json=body), GrantItemsToUsersResult).ItemGrantResults
    by_item = {g.ItemId: g for g in results}
    assert by_item["not_in_catalog"].Result is False and by_item["not_in_catalog"].ItemInstanceId is None
    assert by_item["not_in_catalog"].PlayFabId == player and by_item["not_in_catalog"].Annotation == "cat-1"
    assert by_item["sword"].Result and by_item["gold_pack"].Result
    assert (by_item["gold_pack"].ItemClass, by_item["gold_pack"].CatalogVersion) == ("currency_pack", "v2")
    inv = pf_ok(playfab.post("/Admin/GetUserInventory", json={"PlayFabId": player}), GetUserInventoryResult)
    assert sorted(present(i.ItemId for i in inv.Inventory)) == ["gold_pack", "sword"]
    assert inv.VirtualCurrency == {"GO": 100}
    assert pf_counts(admin)["rows"]["cat-1"] == 2  # the refused item was not applied

    err = pf_err(
        playfab.post("/Admin/GrantItemsToUsers", json={**body, "CatalogVersion": "v1"}),
        400,
        PlayFabErrorCode.CatalogNotConfigured,
    )
    assert err.errorDetails == {"CatalogVersion": ["v1"]}


def test_playfab_unknown_player_fails_whole_call(playfab: httpx.Client, admin: httpx.Client) -> None:
    (player,) = new_players(admin, 1)
    ghost = f"GHOST{next(_players):011X}"
    body = {"ItemGrants": grants(player, ["sword"], "acct-1") + grants(ghost, ["sword"], "acct-1")}
    r = playfab.post("/Admin/GrantItemsToUsers", json=body)
    assert r.json() == {
        "code": 400,
        "status": "BadRequest",
        "error": "AccountNotFound",
        "errorCode": 1001,
        "errorMessage": "User not found",
        "errorDetails": {"PlayFabId": [ghost]},
    }
    assert "acct-1" not in pf_counts(admin)["counts"]
    pf_err(playfab.post("/Admin/GetUserInventory", json={"PlayFabId": ghost}), 400, PlayFabErrorCode.AccountNotFound)

    # Auto-create: any id exists except the ones marked unknown.
    admin.put(
        "/sandbox/playfab/config", json={"auto_create_players": True, "unknown_players": [ghost]}
    ).raise_for_status()
    fresh = f"NEW{next(_players):013X}"
    pf_err(playfab.post("/Admin/GrantItemsToUsers", json=body), 400, PlayFabErrorCode.AccountNotFound)
    ok = pf_ok(
        playfab.post("/Admin/GrantItemsToUsers", json={"ItemGrants": grants(fresh, ["sword"], "acct-2")}),
        GrantItemsToUsersResult,
    )
    assert ok.ItemGrantResults[0].Result
    assert fresh in admin.get("/sandbox/playfab/players").json()["players"]


def test_playfab_title_states(playfab: httpx.Client, admin: httpx.Client) -> None:
    (player,) = new_players(admin, 1)
    body = {"ItemGrants": grants(player, ["sword"], "ts-1")}
    admin.put("/sandbox/playfab/config", json={"title_state": "catalog_not_configured"}).raise_for_status()
    pf_err(playfab.post("/Admin/GrantItemsToUsers", json=body), 400, PlayFabErrorCode.CatalogNotConfigured)
    admin.put("/sandbox/playfab/config", json={"title_state": "product_disabled"}).raise_for_status()
    for path, payload in (
        ("GrantItemsToUsers", body),
        ("GetUserInventory", {"PlayFabId": player}),
        ("RevokeInventoryItems", {"Items": [{"PlayFabId": player, "ItemInstanceId": "X"}]}),
    ):
        pf_err(playfab.post(f"/Admin/{path}", json=payload), 400, PlayFabErrorCode.ProductDisabledForTitle)
    assert "ts-1" not in pf_counts(admin)["counts"]


def test_playfab_injected_429_and_503_wrappers(playfab: httpx.Client, admin: httpx.Client) -> None:
    (player,) = new_players(admin, 1)
    admin.put(
        "/sandbox/faults", json={"script": [{"status": 429, "retry_after": 3}, {"status": 503}]}
    ).raise_for_status()
    body = {"ItemGrants": grants(player, ["sword"], "flt-1")}
    r = playfab.post("/Admin/GrantItemsToUsers", json=body)
    err = pf_err(r, 429, PlayFabErrorCode.APIRequestLimitExceeded)
    assert err.status == "TooManyRequests" and err.retryAfterSeconds == 3
    assert r.headers["Retry-After"] == "3"
    err = pf_err(playfab.post("/Admin/GrantItemsToUsers", json=body), 503, PlayFabErrorCode.ServiceUnavailable)
    assert err.status == "ServiceUnavailable"
    assert "flt-1" not in pf_counts(admin)["counts"]
    pf_ok(playfab.post("/Admin/GrantItemsToUsers", json=body), GrantItemsToUsersResult)
    assert pf_counts(admin)["counts"]["flt-1"] == 1


def test_playfab_invalid_body_is_invalid_params(playfab: httpx.Client, admin: httpx.Client) -> None:
    r = playfab.post("/Admin/GrantItemsToUsers", json={"ItemGrants": [{"ItemId": "sword"}]})
    err = pf_err(r, 400, PlayFabErrorCode.InvalidParams)
    assert "ItemGrants[0].PlayFabId" in (err.errorDetails or {})
    pf_err(playfab.post("/Admin/GrantItemsToUsers", content=b"not json"), 400, PlayFabErrorCode.InvalidParams)
    pf_err(playfab.post("/Admin/GrantItemsToUsers", json={"ItemGrants": []}), 400, PlayFabErrorCode.InvalidParams)


def test_playfab_revoke_limit_and_per_item_errors(playfab: httpx.Client, admin: httpx.Client) -> None:
    p1, p2 = new_players(admin, 2)
    granted = pf_ok(
        playfab.post("/Admin/GrantItemsToUsers", json={"ItemGrants": grants(p1, ["sword", "bow", "axe"], "rv-1")}),
        GrantItemsToUsersResult,
    ).ItemGrantResults
    ids = {g.ItemId: g.ItemInstanceId for g in granted}

    too_many = [{"PlayFabId": p1, "ItemInstanceId": ids["sword"]}] * (MAX_REVOKE_ITEMS_PER_CALL + 1)
    err = pf_err(
        playfab.post("/Admin/RevokeInventoryItems", json={"Items": too_many}), 400, PlayFabErrorCode.InvalidParams
    )
    assert "Items" in (err.errorDetails or {})

    items = [
        {"PlayFabId": p1, "ItemInstanceId": ids["sword"]},
        {"PlayFabId": p1, "ItemInstanceId": "0000000000000000"},  # unknown instance
        {"PlayFabId": p2, "ItemInstanceId": ids["bow"]},  # someone else's
        {"PlayFabId": p1, "ItemInstanceId": ids["axe"], "CharacterId": "C9"},  # not in that character
        {"PlayFabId": "NOBODY", "ItemInstanceId": ids["bow"]},
    ]
    result = pf_ok(playfab.post("/Admin/RevokeInventoryItems", json={"Items": items}), RevokeInventoryItemsResult)
    assert [(e.Error, e.Item.ItemInstanceId, e.Item.PlayFabId) for e in result.Errors] == [
        ("ItemNotFound", "0000000000000000", p1),
        ("ItemNotFound", ids["bow"], p2),
        ("ItemNotFound", ids["axe"], p1),
        ("AccountNotFound", ids["bow"], "NOBODY"),
    ]
    inv = pf_ok(playfab.post("/Admin/GetUserInventory", json={"PlayFabId": p1}), GetUserInventoryResult)
    assert sorted(present(i.ItemId for i in inv.Inventory)) == ["axe", "bow"]
    again = pf_ok(playfab.post("/Admin/RevokeInventoryItems", json={"Items": items[:1]}), RevokeInventoryItemsResult)
    assert [e.Error for e in again.Errors] == ["ItemNotFound"]
    ok = pf_ok(
        playfab.post("/Admin/RevokeInventoryItems", json={"Items": [{"PlayFabId": p1, "ItemInstanceId": ids["bow"]}]}),
        RevokeInventoryItemsResult,
    )
    assert ok.Errors == []
    revokes = pf_counts(admin, "playfab.revoke", "item_id")["counts"]
    assert {ids["sword"]: 1, ids["bow"]: 1}.items() <= revokes.items()
    assert pf_counts(admin, "playfab.revoke")["rows"]["rv-1"] == 2


def test_playfab_drop_applies_then_drops(playfab: httpx.Client, admin: httpx.Client) -> None:
    (player,) = new_players(admin, 1)
    admin.put("/sandbox/faults", json={"script": [{"action": "drop"}]}).raise_for_status()
    body = {"ItemGrants": grants(player, ["sword", "bow"], "drop-1")}
    with pytest.raises(httpx.RemoteProtocolError):
        playfab.post("/Admin/GrantItemsToUsers", json=body)
    counts = pf_counts(admin)
    assert (counts["counts"]["drop-1"], counts["rows"]["drop-1"]) == (1, 2)
    entries = [
        e
        for e in admin.get("/sandbox/audit", params={"project_id": 0}).json()["entries"]
        if e["external_purchase_id"] == "drop-1"
    ]
    assert [e["kind"] for e in entries] == ["playfab.grant"] * 2 and all(e["item_id"] for e in entries)
    inv = pf_ok(playfab.post("/Admin/GetUserInventory", json={"PlayFabId": player}), GetUserInventoryResult)
    assert sorted(present(i.Annotation for i in inv.Inventory)) == ["drop-1", "drop-1"]
    stats = admin.get("/sandbox/stats").json()
    assert stats["faults"] == {"drop": 1} and stats["responses"]["dropped"] == 1
    assert stats["calls_by_api"] == {"playfab": 2}
    # The shared /sandbox/audit/counts knows the new kinds too.
    assert admin.get("/sandbox/audit/counts", params={"kind": "playfab.grant"}).json()["counts"]["drop-1"] == 1
