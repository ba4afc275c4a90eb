"""PlayFab legacy-economy Admin API: GrantItemsToUsers, RevokeInventoryItems,
GetUserInventory, and PlayFab's success and error envelopes.

Every call is ``POST https://{titleId}.playfabapi.com/Admin/<Method>`` with a
JSON object body and the title secret key in ``X-SecretKey``. A success is
``{"code": 200, "status": "OK", "data": {...result...}}``; a failure is an
``ApiErrorWrapper`` (HTTP 400 for most errors). Field names follow the
PlayFab REST reference (learn.microsoft.com/rest/api/playfab/admin), which
uses PascalCase in bodies and camelCase in the envelopes.

Request models refuse unknown fields (our strictness: PlayFab itself ignores
them, but a misspelt ``Anotation`` would silently lose our idempotency key).
Response models ignore unknown fields, so parsing real answers keeps working
when PlayFab adds one.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

# PlayFab reference, Admin/RevokeInventoryItems: "Revokes access for up to 25
# items across multiple users and characters"; Items: "Array of player items
# to revoke, between 1 and 25 items."
MAX_REVOKE_ITEMS_PER_CALL = 25
# Ours: the reference gives no maximum for GrantItemsToUsers.ItemGrants (it
# only warns that processing time grows with the number of items). 100 bounds
# a call the way schemas.xsolla bounds an operation; split larger grants.
MAX_ITEM_GRANTS_PER_CALL = 100
# Ours: ids and annotations become part of our Redis keys and logs; PlayFab
# documents no maximum for Annotation, ItemId or CharacterId.
MAX_ID_LENGTH = 255
MAX_ANNOTATION_LENGTH = 255

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]


class PlayFabErrorCode(IntEnum):
    """PlayFab ``errorCode`` values we meet (names are PlayFab's ``error``)."""

    InvalidParams = 1000
    AccountNotFound = 1001
    UnknownError = 1039
    ItemNotFound = 1047
    NotAuthenticated = 1074
    NotAuthorized = 1089
    InvalidItemId = 1093
    InternalServerError = 1110
    ServiceUnavailable = 1123
    DownstreamServiceUnavailable = 1127
    APIRequestLimitExceeded = 1130
    InvalidAPIEndpoint = 1131
    ConcurrentEditError = 1133
    APIClientRequestRateLimitExceeded = 1199
    OverLimit = 1214
    CatalogNotConfigured = 1218
    DataUpdateRateExceeded = 1287
    APIConcurrentRequestLimitExceeded = 1342
    ProductDisabledForTitle = 1609


# Module-level names for the codes callers test most.
InvalidParams = PlayFabErrorCode.InvalidParams
AccountNotFound = PlayFabErrorCode.AccountNotFound
ItemNotFound = PlayFabErrorCode.ItemNotFound
NotAuthenticated = PlayFabErrorCode.NotAuthenticated
NotAuthorized = PlayFabErrorCode.NotAuthorized
ServiceUnavailable = PlayFabErrorCode.ServiceUnavailable
APIRequestLimitExceeded = PlayFabErrorCode.APIRequestLimitExceeded
CatalogNotConfigured = PlayFabErrorCode.CatalogNotConfigured
ProductDisabledForTitle = PlayFabErrorCode.ProductDisabledForTitle

# PlayFab "Global API method error codes", "Safe to retry codes", plus the two
# throttling/outage codes a 429/503 answer carries (APIRequestLimitExceeded,
# ServiceUnavailable). Anything else with HTTP 400 is final for the request.
RETRYABLE_ERROR_CODES: frozenset[int] = frozenset(
    {
        PlayFabErrorCode.APIClientRequestRateLimitExceeded,
        PlayFabErrorCode.APIConcurrentRequestLimitExceeded,
        PlayFabErrorCode.ConcurrentEditError,
        PlayFabErrorCode.DataUpdateRateExceeded,
        PlayFabErrorCode.DownstreamServiceUnavailable,
        PlayFabErrorCode.InvalidAPIEndpoint,
        PlayFabErrorCode.OverLimit,
        PlayFabErrorCode.APIRequestLimitExceeded,
        PlayFabErrorCode.ServiceUnavailable,
    }
)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# ----------------------------------------------------------------- envelopes

T = TypeVar("T")


class ApiSuccess(_Response, Generic[T]):
    """``{"code": 200, "status": "OK", "data": {...}}``."""

    code: int = 200
    status: str = "OK"
    data: T


class ApiErrorWrapper(_Response):
    """The basic wrapper around every failed API response."""

    code: int  # numerical HTTP code
    status: str  # string HTTP code, e.g. "BadRequest"
    error: str  # PlayFab error name, e.g. "AccountNotFound"
    errorCode: int  # numerical PlayFab error code
    errorMessage: str | None = None
    # "Detailed description of individual issues with the request object":
    # field name -> messages.
    errorDetails: dict[str, list[str]] | None = None
    # Not in the REST reference's table; PlayFab's SDKs read it from throttled
    # answers, and our sandbox sends it with 429 (with a Retry-After header).
    retryAfterSeconds: int | None = None


# ------------------------------------------------------------ GrantItemsToUsers


class ItemGrant(_Request):
    """One item for one user."""

    PlayFabId: Id
    ItemId: Id  # catalog item id
    Annotation: Annotated[str, Field(max_length=MAX_ANNOTATION_LENGTH)] | None = None
    CharacterId: Id | None = None
    # Custom data for the new instance. "Keys are trimmed of whitespace, are
    # limited in size, and may not begin with a '!' character or be null."
    Data: dict[str, str | None] | None = None
    KeysToRemove: list[str] | None = None

    @field_validator("Data")
    @classmethod
    def _data_keys(cls, v: dict[str, str | None] | None) -> dict[str, str | None] | None:
        if v is None:
            return v
        out: dict[str, str | None] = {}
        for key, value in v.items():
            trimmed = key.strip()
            if not trimmed:
                raise ValueError("keys must not be empty")
            if trimmed.startswith("!"):
                raise ValueError("keys may not begin with '!'")
            out[trimmed] = value
        return out


class GrantItemsToUsersRequest(_Request):
    ItemGrants: Annotated[list[ItemGrant], Field(min_length=1, max_length=MAX_ITEM_GRANTS_PER_CALL)]
    CatalogVersion: Id | None = None
    CustomTags: dict[str, str] | None = None


class ItemInstance(_Response):
    """An item instance in a player's inventory (PlayFab omits null fields)."""

    Annotation: str | None = None
    BundleContents: list[str] | None = None
    BundleParent: str | None = None
    CatalogVersion: str | None = None
    CustomData: dict[str, str] | None = None
    DisplayName: str | None = None
    Expiration: str | None = None
    ItemClass: str | None = None
    ItemId: str | None = None
    ItemInstanceId: str | None = None
    PurchaseDate: str | None = None
    RemainingUses: int | None = None
    UnitCurrency: str | None = None
    UnitPrice: int | None = None
    UsesIncrementedBy: int | None = None


class GrantedItemInstance(ItemInstance):
    """Result of granting one item: the instance, whose it is, and whether it worked."""

    CharacterId: str | None = None
    PlayFabId: str | None = None
    Result: bool = False


class GrantItemsToUsersResult(_Response):
    # "Please note that the order of the items in the response may not match
    # the order of items in the request."
    ItemGrantResults: list[GrantedItemInstance] = Field(default_factory=list)


# ------------------------------------------------------------- GetUserInventory


class GetUserInventoryRequest(_Request):
    PlayFabId: Id
    CustomTags: dict[str, str] | None = None


class VirtualCurrencyRechargeTime(_Response):
    RechargeMax: int
    RechargeTime: str
    SecondsToRecharge: int


class GetUserInventoryResult(_Response):
    Inventory: list[ItemInstance] = Field(default_factory=list)
    PlayFabId: str | None = None
    VirtualCurrency: dict[str, int] = Field(default_factory=dict)
    VirtualCurrencyRechargeTimes: dict[str, VirtualCurrencyRechargeTime] = Field(default_factory=dict)


# ---------------------------------------------------------- RevokeInventoryItems


class RevokeInventoryItem(_Request):
    PlayFabId: Id
    ItemInstanceId: Id
    CharacterId: Id | None = None


class RevokeInventoryItemsRequest(_Request):
    Items: Annotated[list[RevokeInventoryItem], Field(min_length=1, max_length=MAX_REVOKE_ITEMS_PER_CALL)]


class RevokedItemRef(_Response):
    """``RevokeItemError.Item`` as parsed from an answer (lenient)."""

    PlayFabId: str | None = None
    ItemInstanceId: str | None = None
    CharacterId: str | None = None


class RevokeItemError(_Response):
    # A GenericErrorCodes name, e.g. "ItemNotFound".
    Error: str | None = None
    Item: RevokedItemRef | None = None


class RevokeInventoryItemsResult(_Response):
    # Empty when every item was revoked.
    Errors: list[RevokeItemError] = Field(default_factory=list)


__all__ = [
    "MAX_ANNOTATION_LENGTH",
    "MAX_ID_LENGTH",
    "MAX_ITEM_GRANTS_PER_CALL",
    "MAX_REVOKE_ITEMS_PER_CALL",
    "RETRYABLE_ERROR_CODES",
    "APIRequestLimitExceeded",
    "AccountNotFound",
    "ApiErrorWrapper",
    "ApiSuccess",
    "CatalogNotConfigured",
    "GetUserInventoryRequest",
    "GetUserInventoryResult",
    "GrantItemsToUsersRequest",
    "GrantItemsToUsersResult",
    "GrantedItemInstance",
    "InvalidParams",
    "ItemGrant",
    "ItemInstance",
    "ItemNotFound",
    "NotAuthenticated",
    "NotAuthorized",
    "PlayFabErrorCode",
    "ProductDisabledForTitle",
    "RevokeInventoryItem",
    "RevokeInventoryItemsRequest",
    "RevokeInventoryItemsResult",
    "RevokeItemError",
    "RevokedItemRef",
    "ServiceUnavailable",
    "VirtualCurrencyRechargeTime",
]
