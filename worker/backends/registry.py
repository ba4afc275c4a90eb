"""Which backend serves which command, from the settings and the kind table.

A command's backend is its kind's family (schemas/kinds.py): the project's
own inventory backend (GRANTS_DEFAULT_BACKEND, GRANTS_PROJECTS) or a fixed
one (Backpack). Each backend declares what the worker needs to know of it
(``idempotent``, ``reconcilable``); the commands per call come from the kind
table. One client per backend endpoint and credential, built on first use,
per process.
"""

from __future__ import annotations

import json

import httpx

from schemas.kinds import INVENTORY, KINDS
from worker.backends.backpack import XsollaBackpack
from worker.backends.base import Backend
from worker.backends.playfab import PlayFab
from worker.backends.xsolla import XsollaInventory
from worker.settings import ProjectBackend, Settings

# The inventory backends a project can be configured with.
CLASSES = {"xsolla": XsollaInventory, "playfab": PlayFab}


def unknown_outcome_policy(backend: Backend) -> str:
    """What to do when a call's answer is lost: 'resend' | 'reconcile' | 'doubt'."""
    if backend.idempotent:
        return "resend"
    if getattr(backend, "reconcilable", False):
        return "reconcile"
    return "doubt"


def backend_name(settings: Settings, kind: str, project_id: int) -> str:
    """The backend that sends ``kind`` for ``project_id`` ('xsolla', 'playfab', 'backpack')."""
    family = KINDS[kind].family
    return settings.backend_of(project_id).backend if family == INVENTORY else family


def project_is_idempotent(settings: Settings, project_id: int) -> bool:
    """Whether resending to this project's backend can never double a grant."""
    return settings.backend_of(project_id).backend == "xsolla" and settings.xsolla_idempotent


class Backends:
    """The backends of this process, by project."""

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None):
        self.settings = settings
        self.transport = transport
        self._built: dict[ProjectBackend, Backend] = {}
        self._backpack: XsollaBackpack | None = None

    def for_batch(self, kind: str, project_id: int) -> Backend:
        """The backend a batch of ``kind`` for ``project_id`` goes to."""
        name = backend_name(self.settings, kind, project_id)
        if name == "backpack":
            return self.backpack
        config = self.settings.backend_of(project_id)
        if config.backend != name:  # PlayFab deletes for a project on Xsolla: PlayFab's defaults
            config = ProjectBackend(backend=name)
        backend = self._built.get(config)
        if backend is None:
            backend = CLASSES[config.backend].from_settings(self.settings, config, self.transport)
            self._built[config] = backend
        return backend

    def for_project(self, project_id: int) -> Backend:
        """The project's inventory backend."""
        return self.for_batch("grant", project_id)

    @property
    def backpack(self) -> XsollaBackpack:
        if self._backpack is None:
            self._backpack = XsollaBackpack.from_settings(self.settings, self.transport)
        return self._backpack

    def batch_limits(self) -> tuple[dict[str, int], int]:
        """Commands per call by kind ('grant', for the default backend) and by
        lane ('grant:9001', for projects configured otherwise), and the least."""
        cap = self.settings.batch_size

        def limit(kind: str, project_id: int) -> int:
            return min(cap, KINDS[kind].per_call[backend_name(self.settings, kind, project_id)])

        # Project 0 stands for "any project not in GRANTS_PROJECTS".
        limits = {kind: limit(kind, 0) for kind in KINDS
                  if backend_name(self.settings, kind, 0) in KINDS[kind].per_call}
        for project_id in self.settings.projects:
            for kind in KINDS:
                if backend_name(self.settings, kind, project_id) in KINDS[kind].per_call:
                    limits[f"{kind}:{project_id}"] = limit(kind, project_id)
        return limits, min(limits.values())

    def warm(self) -> None:
        """Build the clients this process will use (the default backend, the
        configured projects', Backpack) before any command waits for them."""
        self.for_project(0)
        for project_id in self.settings.projects:
            self.for_project(project_id)
        _ = self.backpack

    def budget_spec(self, kind: str, project_id: int) -> str:
        """The lane's call budget as the Lua scripts take it ("backend:project|rate|burst"), or ''."""
        budget = self.settings.call_budget(project_id)
        if budget is None:
            return ""
        return f"{backend_name(self.settings, kind, project_id)}:{project_id}|{budget[0]:g}|{budget[1]:g}"

    def budgets_json(self) -> str:
        """Every lane's call budget, for take.lua (which computes each lane's spec)."""
        s = self.settings
        rates = {str(p): list(b) for p in s.projects if (b := s.call_budget(p)) is not None}
        default = s.call_budget(0)  # no project 0: the global default
        if not rates and default is None:
            return "{}"
        return json.dumps({
            "rates": rates, **({"default": list(default)} if default else {}),
            "family": {name: "" if k.family == INVENTORY else k.family for name, k in KINDS.items()},
            "backends": {str(p): c.backend for p, c in s.projects.items()},
            "default_backend": s.default_backend,
        })

    def close(self) -> None:
        for backend in [*self._built.values(), *([self._backpack] if self._backpack else [])]:
            backend.close()
