"""One real sandbox server per test module (``python -m sandbox --port 0``),
all three APIs on it, and an admin client that resets its faults, PlayFab
config and catalog and its stores before each test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import sandbox_process
from tests.unit.sandbox.test_sandbox_backends import (
    API_KEY,
    BACKPACK_TOKEN,
    HOST_ID,
    MERCHANT_ID,
    PLAYFAB_KEY,
    SECRETS,
)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("sandbox")
    (tmp / "backpack.token").write_text(BACKPACK_TOKEN + "\n")
    (tmp / "playfab.key").write_text(PLAYFAB_KEY + "\n")
    env = {
        **os.environ,
        "GRANTS_XSOLLA_MERCHANT_ID": str(MERCHANT_ID),
        "GRANTS_XSOLLA_API_KEY": API_KEY,
        "GRANTS_BACKPACK_TOKEN_FILE": str(tmp / "backpack.token"),
        "GRANTS_PLAYFAB_SECRET_KEY_FILE": str(tmp / "playfab.key"),
    }
    with sandbox_process(tmp, env, "--backpack-host-id", HOST_ID, secrets=SECRETS) as url:
        yield url


@pytest.fixture
def admin(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=5) as client:
        client.put("/sandbox/faults", json={}).raise_for_status()
        client.put("/sandbox/playfab/config", json={}).raise_for_status()
        client.put("/sandbox/playfab/catalog", content=b"null").raise_for_status()
        client.post("/sandbox/reset").raise_for_status()
        yield client
