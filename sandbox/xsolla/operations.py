"""Request bodies the fake Xsolla inventory accepts.

Purchases reuse ``schemas.xsolla.PurchaseOperation`` and rewards and revokes
``schemas.xsolla.ItemsOperation``, so the sandbox refuses exactly what the
producers refuse.
"""

from __future__ import annotations

from pydantic import TypeAdapter

from schemas.xsolla import ItemsOperation, PurchaseOperation

# Xsolla: "Only 50 operations can be processed at once. Operations that exceed
# this limit will be ignored."
MAX_OPERATIONS_PER_CALL = 50

# Built once: a TypeAdapter compiles its validator, which is the costly part.
PURCHASES = TypeAdapter(list[PurchaseOperation])
ITEMS_OPERATIONS = TypeAdapter(list[ItemsOperation])
