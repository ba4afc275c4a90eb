"""The fake PlayFab Admin API: handlers (``api``), error answers (``errors``),
the title's configuration (``models``) and its state (``store``)."""

from sandbox.playfab.api import DEFAULT_PLAYFAB_SECRET_KEY, PlayFabApi
from sandbox.playfab.errors import playfab_error
from sandbox.playfab.models import CatalogConfig, PlayFabConfig
from sandbox.playfab.store import PlayFabStore

__all__ = [
    "DEFAULT_PLAYFAB_SECRET_KEY",
    "CatalogConfig",
    "PlayFabApi",
    "PlayFabConfig",
    "PlayFabStore",
    "playfab_error",
]
