"""A local, fast, real-HTTP fake of Xsolla's inventory API, Xsolla Backpack
and PlayFab's (legacy economy) Admin API, in one server.

Tests, the benchmark and the demo point the grant workers at it instead of
the real backends. It applies Xsolla purchases, rewards and revokes to
SQLite-backed inventories, creates and deletes Backpack items, grants and
revokes PlayFab item instances, keeps an audit trail of every change it
applied, and can inject faults (latency, 3xx/4xx/5xx answers, dropped
connections, hangs, outages, errors after applying, oversized answers,
answers naming another user) into any backend's calls, either at random or
from a deterministic script. ``/sandbox/...`` admin endpoints expose the audit,
balances, items, stats and configuration.

Modules:

- ``app``: ``create_app``, which composes all the others into one ASGI app;
- ``server``: uvicorn and the command line (the only reader of the environment);
- ``core``: the call pipeline every API shares (latency, auth, faults, apply,
  drop/hang) and its counters; ``connection``: the outermost ASGI layer
  (timing, dropped connections); ``faults``: the fault config and script;
- ``store``: the SQLite file, write transactions and the shared audit;
- ``xsolla``, ``backpack``, ``playfab``: one subpackage per imitated API,
  each with its handlers (``api``) and its tables (``store``);
- ``admin``: every ``/sandbox/`` endpoint; ``common``: small helpers.

No module here imports ``worker`` or ``producers``; the core imports no API.
"""

from sandbox.app import create_app
from sandbox.faults import FaultConfig, Faults
from sandbox.store import Store
from sandbox.xsolla import NotEnough

__all__ = ["FaultConfig", "Faults", "NotEnough", "Store", "create_app"]
