"""`grants inventory`'s marking and text, from records and inventories as the
results store and PlayFab give them."""

from __future__ import annotations

from ops.inventory import OPERATORS_MATCH, playfab_seen, render


def grant_record(epid: str, quantity: int = 2) -> dict:
    return {
        "kind": "grant",
        "project_id": 9001,
        "external_purchase_id": epid,
        "command": {
            "kind": "grant",
            "operation": {
                "user": {"id": "PF-A"},
                "items": [{"sku": "gem", "quantity": quantity}],
                "purchase": {
                    "amount": "1",
                    "currency": "USD",
                    "external_purchase_id": epid,
                    "external_purchase_date": "2026-01-01T00:00:00+00:00",
                },
            },
        },
    }


def test_playfab_purchases_are_seen_by_their_annotation_only() -> None:
    inventory = [
        {"ItemId": "gem", "ItemInstanceId": "i1", "Annotation": "p1"},
        {"ItemId": "gem", "ItemInstanceId": "i2", "Annotation": "p1"},
        {"ItemId": "gem", "ItemInstanceId": "i3", "Annotation": "p2"},
        {"ItemId": "gem", "ItemInstanceId": "i4"},  # granted by someone else: never counted
    ]
    assert playfab_seen(grant_record("p1"), inventory).startswith("seen: 2 instance(s)")
    assert playfab_seen(grant_record("p2"), inventory).startswith("partly seen: {'gem': 1}")
    assert playfab_seen(grant_record("p3"), inventory).startswith("not seen")
    delete = {"kind": "playfab.delete", "operation_id": "d1", "command": {"item_instance_id": "i3"}}
    assert "still there: not applied" in playfab_seen(delete, inventory)
    assert playfab_seen({**delete, "command": {"item_instance_id": "i9"}}, inventory) == "instance i9 gone"
    assert playfab_seen({"kind": "revoke", "external_purchase_id": "p1"}, inventory) == OPERATORS_MATCH


def test_text_columns_fit_their_content_and_reasons_are_whole() -> None:
    long_seen = "no server-side read: the match is the operator's (Publisher Account)"
    report = {
        "project_id": 44056,
        "user": "u-1",
        "sources": [{"backend": "xsolla", "read": None, "note": "Xsolla has no server-side read."}],
        "in_doubt": [
            {
                "kind": "grant",
                "id": "a-much-longer-purchase-id-than-the-header",
                "backend": "xsolla",
                "what": "gem.pack.500 x1",
                "in_doubt_since": "2026-12-01T10:00:00.000+00:00",
                "error": None,
                "seen": long_seen,
            },
            {
                "kind": "backpack.create",
                "id": "op-1",
                "backend": "backpack",
                "what": "sword x1",
                "in_doubt_since": "",
                "error": None,
                "seen": OPERATORS_MATCH,
            },
        ],
    }
    lines = render(report)
    assert "xsolla: not read. Xsolla has no server-side read." in lines
    header = next(line for line in lines if "KIND" in line)
    row = next(line for line in lines if "a-much-longer" in line)
    # Every column starts where its header does, and the last is never cut.
    assert row.index("xsolla") == header.index("BACKEND") and row.endswith(long_seen)
    assert next(line for line in lines if "op-1" in line).endswith(OPERATORS_MATCH)
