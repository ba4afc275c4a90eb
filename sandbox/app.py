"""The composition root: the three fake APIs and the admin endpoints as one ASGI app.

``create_app`` builds, over one ``Store`` and one ``Faults``, the shared
``Core`` (call pipeline and counters), the Xsolla inventory API
(``sandbox.xsolla``), Xsolla Backpack (``sandbox.backpack``) under
``/web/backpack/``, PlayFab's Admin API (``sandbox.playfab``) under
``/playfab/Admin/`` and the ``/sandbox/`` admin endpoints (``sandbox.admin``),
inside the layer that times API calls and drops connections
(``sandbox.connection``).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.types import ASGIApp

from sandbox.admin import Admin
from sandbox.backpack import (
    DEFAULT_BACKPACK_HOST_ID,
    DEFAULT_BACKPACK_TOKEN,
    BackpackApi,
    BackpackStore,
)
from sandbox.connection import CallGuard
from sandbox.core import Core
from sandbox.faults import Faults
from sandbox.playfab import (
    DEFAULT_PLAYFAB_SECRET_KEY,
    PlayFabApi,
    PlayFabConfig,
    PlayFabStore,
)
from sandbox.store import Store
from sandbox.xsolla import XsollaApi, XsollaStore


def create_app(
    store: Store,
    faults: Faults,
    merchant_id: str,
    api_key: str,
    idempotent: bool = False,
    *,
    backpack_token: str = DEFAULT_BACKPACK_TOKEN,
    backpack_host_id: str = DEFAULT_BACKPACK_HOST_ID,
    playfab_secret_key: str = DEFAULT_PLAYFAB_SECRET_KEY,
    playfab_config: PlayFabConfig | None = None,
) -> ASGIApp:
    """Build the sandbox ASGI app over ``store`` and ``faults``.

    Xsolla calls must send Basic ``merchant_id:api_key``; ``idempotent``
    starts the Xsolla purchase mode (``sandbox.admin``: ``/sandbox/config``).
    ``backpack_token`` and ``backpack_host_id`` are what Backpack calls must
    send (``Authorization: Bearer <token>``, ``X-HOST-ID``);
    ``playfab_secret_key`` what PlayFab calls must send in ``X-SecretKey``.
    The defaults are for local use only.
    """
    core = Core(faults)
    xsolla = XsollaApi(core, XsollaStore(store), merchant_id, api_key, idempotent)
    backpack = BackpackApi(core, BackpackStore(store), backpack_token, backpack_host_id)
    playfab = PlayFabApi(core, PlayFabStore(store), playfab_secret_key, playfab_config)
    apis = (xsolla, backpack, playfab)
    admin = Admin(store, core, xsolla, backpack, playfab)
    routes = [route for api in apis for route in api.routes()] + admin.routes()
    return CallGuard(Starlette(routes=routes), tuple(api.prefix for api in apis), core.record_seconds)
