"""Feed parsing: every invalid element is named by line and field; the valid
ones around it are kept."""

from __future__ import annotations

import io
import json

from producers.feed import FeedError, read_feed
from schemas.commands import GrantCommand
from tests.helpers import operation


def parse(text: str):
    items = list(read_feed(io.StringIO(text), project_id=7))
    good = [i for i in items if isinstance(i, GrantCommand)]
    bad = [e for i in items if isinstance(i, list) for e in i]
    return good, bad


def test_json_lines_with_blank_and_bad_lines():
    text = (
        "\n".join(
            [
                json.dumps(operation("a")),
                "",
                json.dumps(operation("b", sku="UPPER")),
                "[1,",
                json.dumps(operation("c")),
                "42",
            ]
        )
        + "\n"
    )
    good, bad = parse(text)
    assert [g.external_purchase_id for g in good] == ["a", "c"]
    assert [(e.line, e.field) for e in bad] == [(3, "items[0].sku"), (4, "(json)"), (6, "(operation)")]
    assert str(bad[0]).startswith("line 3: items[0].sku: may only contain")


def test_array_body_reports_the_line_of_each_element():
    body = [operation("a"), operation("b", amount="free"), operation("c")]
    text = json.dumps(body, indent=2)
    good, bad = parse(text)
    assert [g.external_purchase_id for g in good] == ["a", "c"]
    (err,) = bad
    assert err.field == "purchase.amount"
    # The second element starts on the line holding its opening brace.
    assert text.splitlines()[err.line - 1].strip() == "{"
    assert err.line > 1


def test_array_body_truncated():
    good, bad = parse("[\n" + json.dumps(operation("a")) + ',\n{"user": ')
    assert [g.external_purchase_id for g in good] == ["a"]
    assert bad and bad[0].field == "(json)"


def test_missing_required_field_is_named():
    op = operation("a")
    del op["purchase"]["currency"]
    _, (err,) = parse(json.dumps(op))
    assert (err.line, err.field) == (1, "purchase.currency")
    assert isinstance(err, FeedError)


def test_empty_inputs():
    assert parse("") == ([], [])
    assert parse("[]") == ([], [])
    assert parse("\n\n") == ([], [])


def test_integers_beyond_64_bits_are_refused_not_rounded():
    op = operation("big", custom_parameters={"n": 1})
    line = json.dumps(op).replace('"n": 1', '"n": 123456789012345678901234')
    good, bad = parse(line + "\n")
    assert good == [] and bad[0].field == "custom_parameters"


def test_error_lines_cannot_be_forged_by_the_input():
    op = {**operation("x"), "evil\nline 99: all good": 1}
    _, (err,) = parse(json.dumps(op))
    assert "\n" not in str(err) and str(err).startswith("line 1: evil\\x0aline 99")
