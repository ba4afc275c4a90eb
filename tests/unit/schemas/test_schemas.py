"""The command schema follows Xsolla's documented validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.commands import GrantCommand, RevokeCommand, parse_command
from schemas.xsolla import MAX_ITEMS_PER_OPERATION
from tests.helpers import operation


def fields(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in e["loc"]) for e in exc.errors()}


def make(**changes):
    op = operation("p-1")
    for path, value in changes.items():
        target = op
        *parents, leaf = path.split("__")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[leaf] = value
    return GrantCommand(project_id=1, operation=op)


def test_documented_example_is_valid():
    cmd = GrantCommand(
        project_id=44056,
        operation={
            "user": {"id": "d342dad2-9d59-11e9-a384-42010aa8003f"},
            "items": [{"sku": "booster_mega_1", "quantity": 1}],
            "purchase": {
                "amount": "2.99",
                "currency": "USD",
                "external_purchase_id": "10-534-35",
                "external_purchase_date": "2020-01-01T05:00:00+05:00",
            },
            "comment": "Monthly challenge rewards",
            "platform": "xsolla",
            "custom_parameters": {"a": [1, 2], "b": {"c": None}, "d": "x", "e": 1.5, "f": True},
        },
    )
    assert cmd.external_purchase_id == "10-534-35"


@pytest.mark.parametrize("sku", ["Booster", "gem pack", "gem/1", "gém", ""])
def test_sku_charset(sku):
    with pytest.raises(ValidationError) as e:
        make(items__0__sku=sku)
    assert "operation.items.0.sku" in fields(e.value)


@pytest.mark.parametrize("quantity", [0, -1, "1", True, None, 2**31])
def test_quantity_is_a_positive_number(quantity):
    with pytest.raises(ValidationError):
        make(items__0__quantity=quantity)


def test_fractional_quantity_is_a_number():
    assert make(items__0__quantity=1.5).operation.items[0].quantity == 1.5


@pytest.mark.parametrize("amount", ["2.99", "0", "10", "0.000001"])
def test_amount_decimal_string_ok(amount):
    make(purchase__amount=amount)


@pytest.mark.parametrize("amount", [2.99, "-1", "1e3", "2,99", "", " 1"])
def test_amount_must_be_a_decimal_string(amount):
    with pytest.raises(ValidationError):
        make(purchase__amount=amount)


@pytest.mark.parametrize("currency", ["usd", "XXXX", "DOL", ""])
def test_currency_iso_4217(currency):
    with pytest.raises(ValidationError) as e:
        make(purchase__currency=currency)
    assert "operation.purchase.currency" in fields(e.value)


@pytest.mark.parametrize("date", ["yesterday", "2020-13-01T00:00:00Z", "01/02/2020"])
def test_purchase_date_iso_8601(date):
    with pytest.raises(ValidationError):
        make(purchase__external_purchase_date=date)


def test_comment_length_bounds():
    make(comment="x")
    make(comment="x" * 255)
    for bad in ("", "x" * 256):
        with pytest.raises(ValidationError):
            make(comment=bad)


def test_platform_enum():
    make(platform="playstation_network")
    with pytest.raises(ValidationError):
        make(platform="dreamcast")


def test_custom_parameters_1_to_200_properties():
    make(custom_parameters={str(i): i for i in range(200)})
    for bad in ({}, {str(i): i for i in range(201)}):
        with pytest.raises(ValidationError):
            make(custom_parameters=bad)


def test_items_non_empty_and_bounded():
    with pytest.raises(ValidationError):
        make(items=[])
    with pytest.raises(ValidationError):
        make(items=[{"sku": "a", "quantity": 1}] * (MAX_ITEMS_PER_OPERATION + 1))


def test_unknown_fields_are_refused():
    with pytest.raises(ValidationError) as e:
        make(comments="typo")
    assert "operation.comments" in fields(e.value)


def test_payload_hash_is_stable_and_sensitive():
    a = make()
    assert a.payload_hash() == make().payload_hash()
    assert a.payload_hash() != make(items__0__quantity=2).payload_hash()
    assert a.payload_hash() != GrantCommand(project_id=2, operation=a.body()).payload_hash()


def test_payload_hash_is_the_one_earlier_versions_stored():
    # Claims keep the hash for a year: if the canonical form changed, every
    # repeat published after an upgrade would be refused as a conflict.
    grant = GrantCommand(
        project_id=44056,
        operation={
            "user": {"id": "u-1"},
            "purchase": {
                "external_purchase_id": "p-1",
                "external_purchase_date": "2026-11-21T12:00:00+00:00",
                "currency": "EUR",
                "amount": "4.99",
            },
            "items": [{"sku": "gem.pack.100", "quantity": 2}, {"sku": "a", "quantity": 0.5}],
            "comment": "Ünïcode",
            "platform": "xsolla",
            "custom_parameters": {"z": 1, "a": {"y": [1, "x"], "b": None}},
        },
    )
    assert grant.payload_hash() == "585299c03c9b9b2c"
    assert RevokeCommand(project_id=44056, external_purchase_id="p-1", comment="Refund").payload_hash() == (
        "b3cc8e4b38627726"
    )


def test_broker_message_round_trip_and_refusals():
    cmd = make()
    parsed, enqueued = parse_command(cmd.to_message(123))
    assert parsed == cmd and enqueued == 123
    for bad in ("text", [1], {"v": 99}, {**cmd.to_message(1), "project_id": "x"}):
        with pytest.raises((ValidationError, ValueError)):
            parse_command(bad)


def test_the_committed_json_schemas_match_the_models():
    """schemas/jsonschema/ is what producers in other languages validate with:
    it must be regenerated (python -m schemas.export) whenever a model changes."""
    from schemas.export import OUT, rendered

    expected = rendered()
    assert sorted(p.name for p in OUT.glob("*.json")) == sorted(expected)
    for name, text in expected.items():
        assert (OUT / name).read_text() == text, f"{name} is stale: run python -m schemas.export"


def test_a_message_valid_for_the_model_is_valid_for_its_json_schema():
    import jsonschema

    from schemas.export import envelope_schema
    from tests.helpers import command

    message = command(44056, "js-1").to_message()
    jsonschema.validate(message, envelope_schema("grant"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**message, "project_id": "44056"}, envelope_schema("grant"))


def test_every_kind_in_the_table_has_its_model_and_the_model_its_name():
    from schemas.commands import MODELS
    from schemas.kinds import KINDS

    assert set(MODELS) == set(KINDS)
    for name, model in MODELS.items():
        assert model.model_fields["kind"].default == name


@pytest.mark.parametrize(
    "refund",
    [
        None,
        # Xsolla: the revoke's user and items, left out of the stored grant.
        {"user": {"id": "player-ana"}, "items": [{"sku": "gem.pack.100", "quantity": 1}]},
        # PlayFab: the instances a revoke takes back; not part of the grant.
        {"instances": [{"PlayFabId": "PF-ANA", "ItemInstanceId": "i-1"}]},
    ],
)
def test_a_stored_grant_comes_back_as_it_was_published(refund):
    from schemas.commands import command_from_stored
    from tests.helpers import command

    original = command(44056, "p-1", user="player-ana", sku="gem.pack.100")
    again = command_from_stored("grant", 44056, "p-1", original.stored(refund), refund)
    assert again == original
    assert "instances" not in again.model_dump()["operation"]
