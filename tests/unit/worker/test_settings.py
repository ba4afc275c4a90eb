"""Settings parsed from ``GRANTS_*`` variables: types and bounds, the
``*_FILE`` secrets, and every form of every secret ``secrets()`` hands the
redactor. No Redis."""

from __future__ import annotations

import base64
import json
import os

import pytest
from pydantic import ValidationError

from worker.settings import MAX_BATCH, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No GRANTS_* of the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("GRANTS_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults():
    s = Settings()
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.effective_broker_url == s.redis_url  # the broker defaults to the ledger's Redis
    assert s.key_prefix == "grants"
    assert s.xsolla_idempotent is False
    assert s.default_backend == "xsolla" and s.projects == {}
    assert s.flush_interval_ms == 200
    assert s.batch_size == MAX_BATCH == 50
    assert s.lane_inflight_cap == 32  # half of GRANTS_MAX_INFLIGHT_BATCHES (64)
    assert s.xsolla_api_key.get_secret_value() == ""
    assert s.secrets() == []


def test_grants_variables_are_parsed_into_their_types(clean_env):
    clean_env.setenv("GRANTS_REDIS_URL", "redis://10.0.0.5:6379/2")
    clean_env.setenv("GRANTS_BROKER_URL", "redis://10.0.0.6:6379/0")
    clean_env.setenv("GRANTS_KEY_PREFIX", "g2")
    clean_env.setenv("GRANTS_XSOLLA_IDEMPOTENT", "true")
    clean_env.setenv("GRANTS_FLUSH_INTERVAL_MS", "50")
    clean_env.setenv("GRANTS_HTTP_READ_TIMEOUT_S", "2.5")
    clean_env.setenv("GRANTS_MAX_INFLIGHT_BATCHES", "10")
    clean_env.setenv("GRANTS_DEFAULT_BACKEND", "playfab")
    clean_env.setenv(
        "GRANTS_PROJECTS",
        '{"9001": {"backend": "xsolla", "base_url": "https://x.example/api", "max_calls_per_s": 5}}',
    )
    s = Settings()
    assert s.redis_url == "redis://10.0.0.5:6379/2"
    assert s.effective_broker_url == "redis://10.0.0.6:6379/0"
    assert s.key_prefix == "g2"
    assert s.xsolla_idempotent is True
    assert s.flush_interval_ms == 50
    assert s.http_read_timeout_s == 2.5
    assert s.http_call_budget_s == 3.0 + 5.0 + 2.5
    assert s.lane_inflight_cap == 5
    assert list(s.projects) == [9001]  # JSON keys become project ids
    assert s.projects[9001].base_url == "https://x.example/api"
    assert s.project_backend(9001) == "xsolla"
    assert s.project_backend(1) == "playfab"  # not listed: the default backend
    assert s.call_budget(9001) == (5.0, 5.0)  # burst: one second's worth
    assert s.call_budget(1) is None


def test_a_project_without_a_backend_uses_the_default(clean_env):
    clean_env.setenv("GRANTS_PROJECTS", '{"7": {"base_url": "https://7.playfabapi.com"}}')
    clean_env.setenv("GRANTS_DEFAULT_BACKEND", "playfab")
    assert Settings().project_backend(7) == "playfab"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GRANTS_FLUSH_INTERVAL_MS", "0"),
        ("GRANTS_FLUSH_INTERVAL_MS", "soon"),
        ("GRANTS_BATCH_SIZE", "51"),  # past the largest backend limit (Xsolla ignores the 51st)
        ("GRANTS_DEFAULT_BACKEND", "steam"),
        ("GRANTS_XSOLLA_IDEMPOTENT", "maybe"),
        ("GRANTS_LOG_FORMAT", "xml"),
        ("GRANTS_PROJECTS", '{"9001": {"backend": "playfab", "secret": "inline"}}'),  # unknown field
        ("GRANTS_PROJECTS", '{"not-a-project": {}}'),
        ("GRANTS_PROJECTS", "{not json"),
    ],
)
def test_invalid_values_are_refused(clean_env, name, value):
    clean_env.setenv(name, value)
    with pytest.raises((ValidationError, ValueError)):
        Settings()


@pytest.mark.parametrize(
    ("variable", "field"),
    [
        ("GRANTS_XSOLLA_API_KEY", "xsolla_api_key"),
        ("GRANTS_PLAYFAB_SECRET_KEY", "playfab_secret_key"),
        ("GRANTS_BACKPACK_TOKEN", "backpack_token"),
    ],
)
def test_a_secret_file_wins_over_the_variable_and_is_stripped(clean_env, tmp_path, variable, field):
    path = tmp_path / "secret"
    path.write_text("from-the-file\n")
    clean_env.setenv(variable, "from-the-variable")
    assert getattr(Settings(), field).get_secret_value() == "from-the-variable"
    clean_env.setenv(f"{variable}_FILE", str(path))
    s = Settings()
    assert getattr(s, field).get_secret_value() == "from-the-file"
    assert "from-the-file" not in repr(s) and "from-the-file" not in str(s)  # SecretStr


def test_a_missing_secret_file_is_an_error_not_an_empty_key(clean_env, tmp_path):
    clean_env.setenv("GRANTS_XSOLLA_API_KEY_FILE", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError):
        Settings()


def test_secrets_lists_every_secret_in_every_form_a_backend_may_echo(clean_env, tmp_path):
    xsolla_project_key = tmp_path / "xs9002"
    xsolla_project_key.write_text("project-xsolla-key\n")
    playfab_project_key = tmp_path / "pf9001"
    playfab_project_key.write_text("project-playfab-key\n")
    clean_env.setenv("GRANTS_XSOLLA_MERCHANT_ID", "424242")
    clean_env.setenv("GRANTS_XSOLLA_API_KEY", "xsolla-key")
    clean_env.setenv("GRANTS_PLAYFAB_SECRET_KEY", "playfab-key")
    clean_env.setenv("GRANTS_BACKPACK_TOKEN", "backpack-token")
    clean_env.setenv("GRANTS_REDIS_URL", "redis://grants:redis-pw@10.0.0.5:6379/0")
    clean_env.setenv("GRANTS_BROKER_URL", "rediss://broker:broker-pw@10.0.0.6:6380/0")
    projects = {
        "9001": {"backend": "playfab", "secret_file": str(playfab_project_key)},
        "9002": {"backend": "xsolla", "secret_file": str(xsolla_project_key)},
        "9003": {"backend": "playfab", "secret_file": str(tmp_path / "not-there-yet")},  # no file: nothing to hide
    }
    clean_env.setenv("GRANTS_PROJECTS", json.dumps(projects))
    secrets = Settings().secrets()

    def basic(key: str) -> str:
        return base64.b64encode(f"424242:{key}".encode()).decode()

    assert sorted(secrets) == sorted(
        [
            "xsolla-key",
            basic("xsolla-key"),  # Authorization: Basic base64(merchant:key)
            "playfab-key",  # X-SecretKey: the raw value
            "backpack-token",  # Bearer: the raw value
            "project-xsolla-key",
            basic("project-xsolla-key"),
            "project-playfab-key",  # a PlayFab project's key is never a Basic credential
            "redis-pw",
            "broker-pw",
        ]
    )
    assert "" not in secrets
    assert basic("xsolla-key") == "NDI0MjQyOnhzb2xsYS1rZXk="


def test_secrets_without_an_xsolla_key_have_no_basic_form(clean_env):
    clean_env.setenv("GRANTS_XSOLLA_MERCHANT_ID", "424242")
    clean_env.setenv("GRANTS_BACKPACK_TOKEN", "backpack-token")
    assert Settings().secrets() == ["backpack-token"]


def test_claims_never_expire_before_their_records(clean_env):
    clean_env.setenv("GRANTS_DEDUPE_RETENTION_DAYS", "1")
    clean_env.setenv("GRANTS_RESULT_RETENTION_DAYS", "30")
    s = Settings()
    assert s.result_ttl_ms == 30 * 86_400_000
    assert s.claim_ttl_ms == s.result_ttl_ms
    clean_env.setenv("GRANTS_DEDUPE_RETENTION_DAYS", "400")
    assert Settings().claim_ttl_ms == 400 * 86_400_000
