"""`grants results list` and `stats` as an operator reads them: aligned
columns, several statuses, "showing N of M", reasons cut with a marker and
the command that shows them whole, every kind in stats, no Python reprs.
Records are written in their documented format (schemas/records.py) into
the session's redis-server, under the test's own prefix."""

from __future__ import annotations

import json

import pytest

from ops import args as ops_args
from ops.cli import main
from tests.unit.worker.test_results import T0, grant_body, put_record

LONG = "POST /v2/project/7/inventory/purchase (1 operations): HTTP 400: " + "the item is unknown " * 5


@pytest.fixture
def store(monkeypatch, redis_server, redis_client):
    client, keys = redis_client
    for name in ("GRANTS_REDIS_SENTINELS", "GRANTS_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GRANTS_REDIS_URL", redis_server.url)
    monkeypatch.setenv("GRANTS_KEY_PREFIX", keys.prefix)
    monkeypatch.setattr(ops_args, "_clients", {})
    client.set(keys.layout, "1")
    for n in range(4):
        put_record(
            client,
            keys,
            7,
            f"f-{n}",
            {"st": "failed", "rcv": T0 + n, "cpl": T0 + 10 + n, "err": "503"},
            grant_body(7, f"f-{n}"),
        )
        client.zadd(keys.index("failed"), {f"7:f-{n}": T0 + 10 + n})
    header = {"st": "rejected", "rcv": T0, "cpl": T0 + 5, "att": 3, "spl": 2, "err": LONG}
    put_record(client, keys, 7, "r-1", header, grant_body(7, "r-1"))
    client.zadd(keys.index("rejected"), {"7:r-1": T0 + 5})
    client.hset(keys.totals, mapping={"grant|7|granted": 1200, "revoke|7|revoked": 3, "backpack.create|7|granted": 2})
    return client, keys


def test_several_statuses_in_one_list_oldest_first_with_how_many_of_how_many(store, capsys):
    assert main(["results", "list", "--status", "failed,rejected", "--limit", "3"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["PROJECT", "EXTERNAL_PURCHASE_ID", "STATUS", "ATTEMPTS", "SPLITS", "WHEN", "REASON"]
    assert [line.split()[1] for line in lines[1:]] == ["r-1", "f-0", "f-1"]
    assert "showing 3 of 5 grant records (failed, rejected)" in err
    # The columns are as wide as their content, and line up.
    assert lines[0].index("STATUS") == lines[1].index("rejected")
    assert len(lines[0].split("EXTERNAL_PURCHASE_ID")[0]) == len("PROJECT  ")


def test_a_cut_reason_is_marked_and_the_footer_says_how_to_see_it_whole(store, capsys):
    assert main(["results", "list", "--status", "rejected"]) == 0
    out, err = capsys.readouterr()
    row = out.splitlines()[1]
    assert row.endswith("…") and LONG not in out
    assert "`grants results get r-1 --project-id 7`" in err
    # attempts leave out the two calls that split the batch
    assert row.split()[3:5] == ["1", "2"]
    assert main(["results", "list", "--status", "rejected", "--wide"]) == 0
    assert LONG.strip() in capsys.readouterr().out
    assert main(["results", "get", "r-1", "--project-id", "7"]) == 0
    assert json.loads(capsys.readouterr().out)["error"] == LONG


def test_stats_cover_every_kind_in_plain_text(store, capsys):
    assert main(["results", "stats"]) == 0
    out = capsys.readouterr().out
    table = out.split("\n\n")[0].splitlines()
    assert table[1].split() == ["STATUS", "grant", "revoke", "backpack.create", "backpack.delete", "playfab.delete"]
    rows = {line.split()[0]: line.split()[1:] for line in table[2:]}
    assert rows["granted"] == ["1,200", "-", "2", "-", "-"]
    assert rows["revoked"] == ["-", "3", "-", "0", "0"]
    assert rows["failed"][0] == "4" and rows["rejected"][0] == "1"
    assert "{" not in out and "'" not in out
    assert "broker messages: grants.send 0" in out


def test_stats_of_one_project(store, capsys):
    assert main(["results", "stats", "--project-id", "8", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["project_id"] == 8 and stats["counts"]["failed"] == 0 and stats["counts"]["granted"] == 0
    assert main(["results", "stats", "--project-id", "8"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[2:14]}
    assert rows["dead"][0] == "-"  # dead letters belong to no project
    assert main(["results", "stats", "--project-id", "7", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["counts"]["failed"] == 4 and stats["counts"]["granted"] == 1200
