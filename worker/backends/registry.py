"""Which backend serves which project, from the settings.

Each backend declares what the worker needs to know (``max_batch`` per kind,
``idempotent``, ``reconcilable``); nothing else in the worker names a system.
One client per backend endpoint and credential, built on first use, per
process.
"""

from __future__ import annotations

import httpx

from worker.backends.backpack import XsollaBackpack
from worker.backends.base import Backend
from worker.backends.playfab import PlayFab
from worker.backends.xsolla import XsollaInventory
from worker.settings import ProjectBackend, Settings

CLASSES = {"xsolla": XsollaInventory, "playfab": PlayFab}


def unknown_outcome_policy(backend: Backend) -> str:
    """What to do when a call's answer is lost: 'resend' | 'reconcile' | 'doubt'."""
    if backend.idempotent:
        return "resend"
    if getattr(backend, "reconcilable", False):
        return "reconcile"
    return "doubt"


def project_is_idempotent(settings: Settings, project_id: int) -> bool:
    """Whether resending to this project's backend can never double a grant."""
    backend = settings.backend_of(project_id).backend
    return backend == "xsolla" and settings.xsolla_idempotent


class Backends:
    """The backends of this process, by project."""

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None):
        self.settings = settings
        self.transport = transport
        self._built: dict[ProjectBackend, Backend] = {}

    def for_batch(self, kind: str, project_id: int) -> Backend:
        """The backend a batch of ``kind`` for ``project_id`` goes to."""
        if kind.startswith("backpack."):
            return self.backpack
        return self.for_project(project_id)

    @property
    def backpack(self) -> XsollaBackpack:
        if "backpack" not in self.__dict__:
            self.__dict__["backpack"] = XsollaBackpack.from_settings(self.settings, self.transport)
        return self.__dict__["backpack"]

    def for_project(self, project_id: int) -> Backend:
        config = self.settings.backend_of(project_id)
        backend = self._built.get(config)
        if backend is None:
            backend = CLASSES[config.backend].from_settings(self.settings, config, self.transport)
            self._built[config] = backend
        return backend

    def batch_limits(self) -> tuple[dict[str, int], int]:
        """Operations per call by lane kind ('grant') and by lane ('grant:9001'), and the default."""
        cap = self.settings.batch_size
        default = CLASSES[self.settings.default_backend]
        limits = {kind: min(cap, n) for kind, n in default.max_batch.items()}
        limits.update({kind: min(cap, n) for kind, n in {**XsollaBackpack.max_batch, **PlayFab.max_batch}.items()
                       if kind not in ("grant", "revoke")})
        for project_id, config in self.settings.projects.items():
            for kind, n in CLASSES[config.backend].max_batch.items():
                limits[f"{kind}:{project_id}"] = min(cap, n)
        return limits, min(limits.values())

    def close(self) -> None:
        for backend in [*self._built.values(), *([self.__dict__["backpack"]] if "backpack" in self.__dict__ else [])]:
            backend.close()
