"""`grants` names the store it reads and fails in one line (exit 2), in-process
against the session's redis-server."""

from __future__ import annotations

import pytest

from ops import args as ops_args
from ops.cli import main
from tests.helpers import command
from worker.ledger import Ledger


@pytest.fixture
def env(monkeypatch, redis_server):
    for name in ("GRANTS_REDIS_URL", "GRANTS_KEY_PREFIX", "GRANTS_REDIS_SENTINELS", "GRANTS_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GRANTS_REDIS_URL", redis_server.url)
    monkeypatch.setattr(ops_args, "_clients", {})
    return monkeypatch


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    return lines[-1]


def test_an_empty_prefix_is_named_and_warned_of(env, capsys):
    env.setenv("GRANTS_KEY_PREFIX", "nothing-here")
    assert main(["results", "stats"]) == 0
    err = capsys.readouterr().err
    assert "key prefix 'nothing-here'" in err and "warning" in err and "nothing-here:layout" in err


def test_a_used_prefix_is_named_without_warning(env, capsys, redis_client):
    client, keys = redis_client
    Ledger(client, keys, ttl_ms=60_000, batch_limits={}, default_batch_limit=50).ingest([])
    client.set(keys.layout, "1")
    env.setenv("GRANTS_KEY_PREFIX", keys.prefix)
    assert main(["results", "stats", "--json"]) == 0
    err = capsys.readouterr().err
    assert f"key prefix '{keys.prefix}'" in err and "warning" not in err


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("notaurl", "is not a Redis URL"),
        ("redis://127.0.0.1:1/0", "cannot reach Redis at redis://127.0.0.1:1/0"),
        ("redis://127.0.0.1:notaport/0", "is not a Redis URL"),
    ],
)
def test_a_bad_or_unreachable_store_is_one_line_and_exit_2(env, capsys, url, expected):
    env.setenv("GRANTS_REDIS_URL", url)
    for argv in (["results", "stats"], ["dead", "list"], ["lanes", "list"], ["replay", "--status", "failed"]):
        assert main(argv) == 2
        assert expected in one_line(capsys.readouterr().err)


def test_a_password_never_shows(env, capsys):
    env.setenv("GRANTS_REDIS_URL", "redis://:hunter2@127.0.0.1:1/0")
    assert main(["results", "stats"]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and ":***@" in err


def test_a_bad_setting_is_one_line_naming_the_variable(env, capsys):
    env.setenv("GRANTS_REDIS_MIN_REPLICAS", "-1")
    assert main(["results", "stats"]) == 2
    assert "GRANTS_REDIS_MIN_REPLICAS" in one_line(capsys.readouterr().err)


def test_lanes_pause_shows_in_list_and_stats(env, capsys, redis_client):
    client, keys = redis_client
    ledger = Ledger(client, keys, ttl_ms=60_000, batch_limits={}, default_batch_limit=50)
    from worker.work import Arrival

    ledger.ingest([Arrival(command(44, "a"), 1, "s:1")])
    env.setenv("GRANTS_KEY_PREFIX", keys.prefix)
    assert main(["lanes", "pause", "--project-id", "44", "--kind", "grant", "--actor", "anna", "--note", "why"]) == 0
    assert "grant:44: paused" in capsys.readouterr().out
    assert main(["lanes", "list", "--project-id", "44"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["LANE", "STATE", "WAITING", "OLDEST", "BATCHES", "PAUSED_SINCE", "BY", "NOTE"]
    assert out[1].split()[:3] == ["grant:44", "paused", "1"] and out[1].split()[-2:] == ["anna", "why"]
    assert main(["results", "stats", "--project-id", "44"]) == 0
    assert "paused: grant:44 since" in capsys.readouterr().out
    assert main(["lanes", "resume", "--project-id", "44"]) == 0
    assert "grant:44: resumed" in capsys.readouterr().out
    assert client.hlen(keys.paused_lanes) == 0


@pytest.mark.parametrize(
    "argv, extra_env, expected",
    [
        (["resolve", "p1", "--project-id", "1", "--as", "failed", "--actor", ""], {}, "names who made it"),
        (
            ["inventory", "--project-id", "9001", "--user", "PF1"],
            {"GRANTS_PROJECTS": '{"9001": {"backend": "playfab", "secret_file": "/nonexistent/key"}}'},
            "/nonexistent/key",
        ),
    ],
)
def test_a_refused_value_or_a_missing_file_is_one_line_and_exit_2(env, capsys, monkeypatch, argv, extra_env, expected):
    for name, value in extra_env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"grants {argv[0]}: ")
