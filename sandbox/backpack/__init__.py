"""The fake Xsolla Backpack API (``api``) and its state (``store``)."""

from sandbox.backpack.api import (
    DEFAULT_BACKPACK_HOST_ID,
    DEFAULT_BACKPACK_TOKEN,
    BackpackApi,
)
from sandbox.backpack.store import BackpackStore

__all__ = ["DEFAULT_BACKPACK_HOST_ID", "DEFAULT_BACKPACK_TOKEN", "BackpackApi", "BackpackStore"]
