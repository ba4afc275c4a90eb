"""The fake Xsolla inventory API (``api``), its state (``store``) and request bodies (``operations``)."""

from sandbox.xsolla.api import XsollaApi
from sandbox.xsolla.store import NotEnough, XsollaStore

__all__ = ["NotEnough", "XsollaApi", "XsollaStore"]
