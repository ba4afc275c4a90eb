"""Request bodies the fake accepts, and Xsolla-shaped messages for bad ones.

Purchases reuse ``schemas.xsolla.PurchaseOperation`` so the sandbox refuses
exactly what the producers refuse. Rewards and revokes have no purchase block;
their model is defined here from the same parts (User, Item, limits).
"""

from __future__ import annotations

from pydantic import TypeAdapter, ValidationError

# Reward and revoke bodies take the operation fields every Xsolla inventory
# call shares; purchase bodies add the purchase.
from schemas.xsolla import ItemsOperation, PurchaseOperation

# Xsolla: "Only 50 operations can be processed at once. Operations that exceed
# this limit will be ignored."
MAX_OPERATIONS_PER_CALL = 50


# Built once: a TypeAdapter compiles its validator, which is the costly part.
PURCHASES = TypeAdapter(list[PurchaseOperation])
ITEMS_OPERATIONS = TypeAdapter(list[ItemsOperation])


def describe_error(exc: ValidationError) -> str:
    """``"<field path>: <reason>"`` for the first problem, e.g.
    ``"0.purchase.currency: must be an ISO 4217 currency code such as \"USD\""``.

    The path is dot-separated with list indexes as numbers; ``body`` stands
    for the whole request body (not JSON, or not an array).
    """
    err = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    path = ".".join(str(part) for part in err["loc"]) or "body"
    reason = err["msg"]
    # Our own validators raise ValueError; pydantic prefixes their text.
    reason = reason.removeprefix("Value error, ")
    return f"{path}: {reason}"
