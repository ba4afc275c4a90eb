"""The shared pieces of the operator commands: tables, cuts, statuses, URLs."""

from __future__ import annotations

import argparse

import pytest

from ops.args import cut, redact_url, showing, statuses, table
from schemas.records import Status


def test_columns_are_as_wide_as_their_widest_cell_or_header():
    lines = table(("ID", "N", "REASON"), [("a-long-id", 5, "x"), ("b", 12345, "")], right={1})
    assert lines == ["ID             N  REASON", "a-long-id      5  x", "b          12345"]


def test_a_cut_is_marked_and_says_so():
    assert cut("short", 10) == ("short", False)
    text, was_cut = cut("HTTP 400 (1 operations): HTTP 400 body says the item is unknown", 20)
    assert was_cut and len(text) == 20 and text.endswith("…")
    assert cut("two\nlines", 20) == ("two lines", False)


def test_several_statuses_repeated_or_in_a_comma_list():
    parser = argparse.ArgumentParser()
    parser.add_argument("--status", action="extend", type=statuses(Status), required=True)
    args = parser.parse_args(["--status", "failed,in_doubt", "--status", "rejected"])
    assert args.status == [Status.failed, Status.in_doubt, Status.rejected]
    with pytest.raises(SystemExit):
        parser.parse_args(["--status", "nope"])


def test_passwords_are_redacted_from_urls():
    assert redact_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("rediss://user:s3cret@host:6380/1?ssl_cert_reqs=required").startswith("rediss://user:***@host")
    # redis-py also takes it as a query parameter.
    assert redact_url("redis://host:6379/0?password=s3cret&db=1") == "redis://host:6379/0?password=***&db=1"


def test_a_password_in_the_query_is_a_secret_too():
    from worker.settings import Settings

    assert "s3cret" in Settings(redis_url="redis://host/0?password=s3cret").secrets()
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"


def test_showing_n_of_m():
    assert showing(5, 3000) == "showing 5 of 3,000 records"
    assert showing(5, None, "grants") == "showing 5 grants"
