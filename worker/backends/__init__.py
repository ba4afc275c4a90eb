"""Inventory backends: one class per external system, one interface."""

from worker.backends.backpack import XsollaBackpack
from worker.backends.base import Backend, OpResult
from worker.backends.playfab import PlayFab
from worker.backends.xsolla import XsollaInventory

__all__ = ["Backend", "OpResult", "PlayFab", "XsollaBackpack", "XsollaInventory"]
