"""The grant worker. ``celery -A worker worker`` finds :data:`app` here.

The app is built on first access, from ``GRANTS_*`` variables parsed once,
so importing a submodule (the producers do) has no side effects.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from worker.celery_app import create_app
        from worker.settings import Settings

        globals()["app"] = globals()["celery"] = built = create_app(Settings())
        return built
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
