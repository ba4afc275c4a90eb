"""The backends' read methods (grants inventory, grants resolve) against the
real sandbox over HTTP: PlayFab's GetUserInventory through our PlayFab client,
its errors translated at the edge like every call's."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from schemas.commands import GrantCommand
from tests.helpers import command, sandbox_process
from worker import errors
from worker.backends.playfab import PlayFab, granted_instances
from worker.settings import ProjectBackend, Settings

KEY = "reads-test-playfab-secret"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("reads")
    env = {
        **os.environ,
        "GRANTS_PLAYFAB_SECRET_KEY": KEY,
        "GRANTS_XSOLLA_API_KEY": "reads-test-xsolla",
        "GRANTS_XSOLLA_MERCHANT_ID": "4242",
    }
    with sandbox_process(tmp, env, secrets=(KEY,)) as url:
        httpx.post(f"{url}/sandbox/playfab/players", json={"PlayFabIds": ["PF-READ-1"]}).raise_for_status()
        yield url


def playfab(base_url: str, key: str = KEY) -> PlayFab:
    settings = Settings(playfab_secret_key=key, http_read_timeout_s=3)
    return PlayFab.from_settings(settings, ProjectBackend(base_url=f"{base_url}/playfab"))


def grant(backend: PlayFab, c: GrantCommand) -> None:
    from worker.work import Lane

    (result,) = backend.send(Lane("grant", c.project_id), [c])
    assert result.status == "applied", result


def test_get_user_inventory_and_the_instances_of_one_purchase(base_url: str) -> None:
    backend = playfab(base_url)
    try:
        grant(backend, command(9, "rd-1", user="PF-READ-1", sku="gem", quantity=2))
        grant(backend, command(9, "rd-2", user="PF-READ-1", sku="sword"))
        inventory = backend.get_user_inventory("PF-READ-1")
        assert inventory.PlayFabId == "PF-READ-1"
        assert sorted((i.ItemId, i.Annotation) for i in inventory.Inventory) == [
            ("gem", "rd-1"),
            ("gem", "rd-1"),
            ("sword", "rd-2"),
        ]
        found = backend.purchase_instances("PF-READ-1", "rd-1")
        assert len(found) == 2 and all(f["PlayFabId"] == "PF-READ-1" and f["Result"] is True for f in found)
        # Shaped as a grant's answer: what a revoke needs comes out of it.
        refund = backend.refund_data("grant", command(9, "rd-1", user="PF-READ-1"), {"ItemGrantResults": found})
        assert refund == {"instances": granted_instances({"ItemGrantResults": found})}
        assert {i["ItemInstanceId"] for i in refund["instances"]} == {f["ItemInstanceId"] for f in found}
        assert backend.purchase_instances("PF-READ-1", "never") == []
    finally:
        backend.close()


def test_read_errors_are_translated_at_the_edge(base_url: str) -> None:
    backend = playfab(base_url)
    try:
        with pytest.raises(errors.Permanent, match="AccountNotFound"):
            backend.get_user_inventory("PF-NOBODY")
        httpx.put(f"{base_url}/sandbox/faults", json={"script": [{"status": 503}]}).raise_for_status()
        with pytest.raises(errors.ServerError):
            backend.get_user_inventory("PF-READ-1")
    finally:
        httpx.put(f"{base_url}/sandbox/faults", json={}).raise_for_status()
        backend.close()
    wrong = playfab(base_url, key="not-the-key")
    try:
        with pytest.raises(errors.AuthFailed):
            wrong.get_user_inventory("PF-READ-1")
    finally:
        wrong.close()
