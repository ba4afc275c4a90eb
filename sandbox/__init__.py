"""A local, fast, real-HTTP fake of Xsolla's inventory API, Xsolla Backpack
and PlayFab's (legacy economy) Admin API, in one server.

Tests, the benchmark and the demo point the grant workers at it instead of
the real backends. It applies Xsolla purchases, rewards and revokes to
SQLite-backed inventories, creates and deletes Backpack items, grants and
revokes PlayFab item instances, keeps an audit trail of every change it
applied, and can inject faults (latency, 429/5xx, dropped connections,
hangs, outages) into any backend's calls, either at random or from a
deterministic script. ``/sandbox/...`` admin endpoints expose the audit,
balances, items, stats and configuration.

Modules: ``store`` (SQLite state), ``operations`` (Xsolla request bodies),
``backpack`` and ``playfab`` (those APIs), ``faults`` (fault injection),
``app`` (the ASGI app), ``server`` (uvicorn + CLI).
"""

from sandbox.app import create_app
from sandbox.faults import FaultConfig, Faults
from sandbox.store import NotEnough, Store

__all__ = ["FaultConfig", "Faults", "NotEnough", "Store", "create_app"]
