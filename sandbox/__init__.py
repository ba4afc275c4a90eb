"""A local, fast, real-HTTP fake of Xsolla's inventory API.

Tests, the benchmark and the demo point the grant workers at it instead of
Xsolla. It applies purchases, rewards and revokes to SQLite-backed
inventories, keeps an audit trail of every operation it applied, and can
inject faults (latency, 429/5xx, dropped connections, hangs, outages) either
at random or from a deterministic script. ``/sandbox/...`` admin endpoints
expose the audit, balances, stats and fault config.

Modules: ``store`` (SQLite state), ``operations`` (request bodies),
``faults`` (fault injection), ``app`` (the ASGI app), ``server`` (uvicorn + CLI).
"""

from sandbox.app import create_app
from sandbox.faults import FaultConfig, Faults
from sandbox.store import NotEnough, Store

__all__ = ["FaultConfig", "Faults", "NotEnough", "Store", "create_app"]
