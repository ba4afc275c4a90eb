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
from typing import Any

import httpx

from schemas.commands import MODELS
from schemas.kinds import BACKPACK_CREATE, GRANT, INVENTORY, KINDS
from worker.backends.backpack import XsollaBackpack
from worker.backends.base import Backend
from worker.backends.playfab import PlayFab
from worker.backends.xsolla import XsollaInventory
from worker.settings import ProjectBackend, Settings
from worker.work import Lane

# Every backend, by the name it declares (GRANTS_DEFAULT_BACKEND and
# GRANTS_PROJECTS choose among the inventory ones).
CLASSES = {cls.name: cls for cls in (XsollaInventory, PlayFab, XsollaBackpack)}


def backend_name(settings: Settings, kind: str, project_id: int) -> str:
    """The backend that sends ``kind`` for ``project_id`` ('xsolla', 'playfab', 'backpack')."""
    family = KINDS[kind].family
    return settings.project_backend(project_id) if family == INVENTORY else family


def project_is_idempotent(settings: Settings, project_id: int) -> bool:
    """Whether resending to this project's backend can never double a grant."""
    return settings.project_backend(project_id) == "xsolla" and settings.xsolla_idempotent


class Backends:
    """The backends of this process, by project."""

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None):
        self.settings = settings
        self.transport = transport
        self._built: dict[tuple[str, ProjectBackend | None], Backend] = {}

    def for_lane(self, lane: Lane) -> Backend:
        """The backend a lane's batches go to (one per endpoint and credential)."""
        name = backend_name(self.settings, lane.kind, lane.project_id)
        # The project's own endpoint and credential for its own backend;
        # the backend's defaults otherwise (Backpack, PlayFab deletes of a
        # project on Xsolla).
        config = (
            self.settings.backend_of(lane.project_id)
            if self.settings.project_backend(lane.project_id) == name
            else None
        )
        backend = self._built.get((name, config))
        if backend is None:
            backend = CLASSES[name].from_settings(self.settings, config or ProjectBackend(), self.transport)
            self._built[(name, config)] = backend
        return backend

    def for_project(self, project_id: int) -> Backend:
        """The project's inventory backend."""
        return self.for_lane(Lane(GRANT, project_id))

    @property
    def backpack(self) -> XsollaBackpack:
        backend = self.for_lane(Lane(BACKPACK_CREATE, 0))
        assert isinstance(backend, XsollaBackpack)
        return backend

    def batch_limits(self) -> tuple[dict[str, int], int]:
        """Commands per call by kind ('grant', for the default backend) and by
        lane ('grant:9001', for projects configured otherwise), and the least."""
        cap = self.settings.batch_size

        def limit(kind: str, project_id: int) -> int:
            return min(cap, KINDS[kind].per_call[backend_name(self.settings, kind, project_id)])

        # Project 0 stands for "any project not in GRANTS_PROJECTS".
        limits = {
            kind: limit(kind, 0) for kind in KINDS if backend_name(self.settings, kind, 0) in KINDS[kind].per_call
        }
        for project_id in self.settings.projects:
            for kind in KINDS:
                if backend_name(self.settings, kind, project_id) in KINDS[kind].per_call:
                    limits[f"{kind}:{project_id}"] = limit(kind, project_id)
        return limits, min(limits.values())

    def refund_data_of_stored(self, kind: str, stored: dict[str, Any], response: Any) -> dict[str, Any] | None:
        """Backend.refund_data for a command as an older version stored it (worker/migrate.py)."""
        command = MODELS[kind].model_validate(stored)
        return self.for_lane(Lane(kind, command.project_id)).refund_data(kind, command, response)

    def warm(self) -> None:
        """Build the clients this process will use (the default backend, the
        configured projects', Backpack) before any command waits for them."""
        self.for_project(0)
        for project_id in self.settings.projects:
            self.for_project(project_id)
        _ = self.backpack

    def budget_spec(self, lane: Lane) -> str:
        """The lane's call budget as the Lua scripts take it ("backend:project|rate|burst"), or ''."""
        budget = self.settings.call_budget(lane.project_id)
        if budget is None:
            return ""
        return (
            f"{backend_name(self.settings, lane.kind, lane.project_id)}:{lane.project_id}|{budget[0]:g}|{budget[1]:g}"
        )

    def budgets_json(self) -> str:
        """Every lane's call budget, for take.lua (which computes each lane's spec)."""
        s = self.settings
        rates = {str(p): list(b) for p in s.projects if (b := s.call_budget(p)) is not None}
        default = s.call_budget(0)  # no project 0: the global default
        if not rates and default is None:
            return "{}"
        return json.dumps(
            {
                "rates": rates,
                **({"default": list(default)} if default else {}),
                "family": {name: "" if k.family == INVENTORY else k.family for name, k in KINDS.items()},
                "backends": {str(p): s.project_backend(p) for p in s.projects},
                "default_backend": s.default_backend,
            }
        )

    def close(self) -> None:
        for backend in self._built.values():
            backend.close()
