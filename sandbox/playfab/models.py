"""The title's configuration the tests control: behaviour, catalog, players to create."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from schemas.playfab import MAX_ID_LENGTH

PlayFabIdStr = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]


class PlayFabConfig(BaseModel):
    """Title behaviour the tests control (``PUT /sandbox/playfab/config``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shuffle_results: bool = True
    shuffle_seed: int = 0
    auto_create_players: bool = False
    unknown_players: list[str] = Field(default_factory=list)
    title_state: Literal["ok", "catalog_not_configured", "product_disabled"] = "ok"


class _Bundle(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    BundledVirtualCurrencies: (
        dict[Annotated[str, Field(min_length=1, max_length=16)], Annotated[int, Field(ge=0)]] | None
    ) = None


class CatalogItem(BaseModel):
    """The part of a PlayFab CatalogItem the sandbox uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ItemId: PlayFabIdStr
    ItemClass: str | None = None
    DisplayName: str | None = None
    Bundle: _Bundle | None = None

    @property
    def currencies(self) -> dict[str, int]:
        """The virtual currencies granting this item adds to the player."""
        return (self.Bundle.BundledVirtualCurrencies or {}) if self.Bundle else {}


class CatalogConfig(BaseModel):
    """The title's catalog (``PUT /sandbox/playfab/catalog``): items by id or in full."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    CatalogVersion: PlayFabIdStr = "main"
    Catalog: list[CatalogItem | PlayFabIdStr]

    def by_id(self) -> dict[str, CatalogItem]:
        """Every item, a bare id as an item with no other fields."""
        items = (c if isinstance(c, CatalogItem) else CatalogItem(ItemId=c) for c in self.Catalog)
        return {item.ItemId: item for item in items}


# The body of PUT /sandbox/playfab/catalog: a catalog, or null for none.
CATALOG_BODY: TypeAdapter[CatalogConfig | None] = TypeAdapter(CatalogConfig | None)


class PlayersBody(BaseModel):
    """The body of ``POST /sandbox/playfab/players``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    PlayFabIds: Annotated[list[PlayFabIdStr], Field(min_length=1)]
    VirtualCurrency: dict[str, Annotated[int, Field(ge=0)]] | None = None
