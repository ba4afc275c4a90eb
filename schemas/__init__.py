"""Wire formats: the backends' request bodies and our command envelope.

Everything that crosses a process boundary (CLI input, broker messages, HTTP
bodies, result records) is described here, so that producers, workers and the
sandbox validate with one set of rules.
"""

from schemas.commands import Command, GrantCommand, parse_command
from schemas.records import FINAL_STATUSES, Status
from schemas.xsolla import Item, Platform, Purchase, PurchaseOperation, User

__all__ = [
    "FINAL_STATUSES",
    "Command",
    "GrantCommand",
    "Item",
    "Platform",
    "Purchase",
    "PurchaseOperation",
    "Status",
    "User",
    "parse_command",
]
