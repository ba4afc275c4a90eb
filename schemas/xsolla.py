"""Xsolla inventory API: one operation of "Grant items by purchases to users".

``POST /v2/project/{project_id}/inventory/purchase`` takes a JSON array of
these. Field names, enums and limits follow Xsolla's reference; where Xsolla
documents no limit but an unbounded value would hurt us (Redis keys, memory),
the limit is ours and says so.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from enum import Enum
from functools import lru_cache
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_validator

# Xsolla: "The SKU may only contain lowercase Latin alphanumeric characters,
# periods, dashes, and underscores."
SKU_PATTERN = re.compile(r"[a-z0-9._-]+")
# A decimal string such as "2.99": digits, optionally a fraction. Xsolla calls
# it the purchase amount prior to deductions, so it is never negative.
# ASCII: without it \d also matches "٢.٩٩" and "２".
AMOUNT_PATTERN = re.compile(r"\d{1,18}(\.\d{1,18})?", re.ASCII)
# The characters of an ISO 8601 date. datetime.fromisoformat takes *any*
# character between date and time ("2020-01-01\x0005:00"), so it is not enough.
ISO8601_CHARS = re.compile(r"[0-9T:+\-.,WZ t]+", re.ASCII)

# Ours: identifiers become part of Redis keys and log lines; 255 keeps them sane.
MAX_ID_LENGTH = 255
# Ours: Xsolla documents no cap on items per operation; 100 distinct SKUs in one
# purchase is far beyond any store cart and stops a 10,000-item operation early.
MAX_ITEMS_PER_OPERATION = 100
# Ours: quantities are counts of items; 2**31-1 is the largest a 32-bit
# inventory backend can hold, and anything bigger is a typo or an attack.
MAX_QUANTITY = 2**31 - 1
# Xsolla: custom_parameters has 1 to 200 properties; comment 1 to 255 characters.
MAX_CUSTOM_PARAMETERS = 200
MAX_COMMENT_LENGTH = 255
# Ours: custom_parameters travel as JSON to the queue and on to Xsolla; nesting
# deeper than this is no parameter, and past ~250 levels the serializers fail.
MAX_CUSTOM_PARAMETERS_DEPTH = 32


class Platform(str, Enum):
    """Publishing platform the user plays on (Xsolla's enum, verbatim)."""

    playstation_network = "playstation_network"
    xbox_live = "xbox_live"
    xsolla = "xsolla"
    pc_standalone = "pc_standalone"
    nintendo_shop = "nintendo_shop"
    google_play = "google_play"
    app_store_ios = "app_store_ios"
    android_standalone = "android_standalone"
    ios_standalone = "ios_standalone"
    android_other = "android_other"
    ios_other = "ios_other"
    pc_other = "pc_other"


@lru_cache(maxsize=1)
def iso4217_codes() -> frozenset[str]:
    """Every active ISO 4217 alphabetic currency code."""
    import pycountry

    return frozenset(c.alpha_3 for c in pycountry.currencies)


class _Strict(BaseModel):
    # Unknown fields are refused: a misspelt "comments" would otherwise be
    # dropped silently and the purchase granted without it.
    model_config = ConfigDict(extra="forbid", frozen=True)


NonEmptyId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]


class User(_Strict):
    id: NonEmptyId = Field(description="The unique user identifier on the platform.")


class Item(_Strict):
    sku: Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
    quantity: StrictInt | StrictFloat

    @field_validator("sku")
    @classmethod
    def _sku_charset(cls, v: str) -> str:
        if not SKU_PATTERN.fullmatch(v):
            raise ValueError("may only contain lowercase Latin letters, digits, '.', '-' and '_'")
        return v

    @field_validator("quantity")
    @classmethod
    def _positive_quantity(cls, v: int | float) -> int | float:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("must be a finite number")
        if v <= 0:
            raise ValueError("must be greater than 0")
        if v > MAX_QUANTITY:
            raise ValueError(f"must be at most {MAX_QUANTITY}")
        return v


class Purchase(_Strict):
    amount: str
    currency: str
    external_purchase_id: NonEmptyId
    external_purchase_date: str

    @field_validator("amount")
    @classmethod
    def _decimal_string(cls, v: str) -> str:
        if not AMOUNT_PATTERN.fullmatch(v):
            raise ValueError('must be a decimal string such as "2.99"')
        return v

    @field_validator("currency")
    @classmethod
    def _iso4217(cls, v: str) -> str:
        if v not in iso4217_codes():
            raise ValueError('must be an ISO 4217 currency code such as "USD"')
        return v

    @field_validator("external_purchase_date")
    @classmethod
    def _iso8601(cls, v: str) -> str:
        # Kept as sent: the string is forwarded unchanged and is part of the
        # payload hash, so re-formatting it would turn duplicates into conflicts.
        try:
            if not ISO8601_CHARS.fullmatch(v):
                raise ValueError
            datetime.fromisoformat(v)
        except ValueError:
            raise ValueError('must be an ISO 8601 date such as "2020-01-01T05:00:00+05:00"') from None
        return v


class ItemsOperation(_Strict):
    """A user and items, with the optional fields every inventory operation
    shares (the body element of reward and revoke calls)."""

    user: User
    items: Annotated[list[Item], Field(min_length=1, max_length=MAX_ITEMS_PER_OPERATION)]
    comment: Annotated[str | None, Field(min_length=1, max_length=MAX_COMMENT_LENGTH)] = None
    platform: Platform | None = None
    custom_parameters: Annotated[dict[str, Any] | None, Field(min_length=1, max_length=MAX_CUSTOM_PARAMETERS)] = None

    @field_validator("custom_parameters")
    @classmethod
    def _plain_json(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        # Only what JSON carries exactly: NaN, 10**400, a lone surrogate or a
        # Python object would crash the publisher or change on the way.
        if v is None:
            return v
        try:
            exact = orjson.loads(orjson.dumps(v)) == v
        except (TypeError, ValueError):  # orjson's JSONEncodeError, JSONDecodeError
            exact = False
        if not exact:
            raise ValueError("must be plain JSON: finite numbers, integers within 64 bits, valid Unicode text")
        if _depth(v) > MAX_CUSTOM_PARAMETERS_DEPTH:
            raise ValueError(f"must be nested at most {MAX_CUSTOM_PARAMETERS_DEPTH} levels deep")
        return v


class PurchaseOperation(ItemsOperation):
    """One element of the request body: a user, the items, the purchase."""

    purchase: Purchase

    @property
    def external_purchase_id(self) -> str:
        return self.purchase.external_purchase_id


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value: 0 for a scalar, 1 for a flat object or array."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0
