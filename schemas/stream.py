"""The command stream: how any producer, in any language, hands commands to
the workers, and how it learns their outcomes.

A producer appends one entry per command to the Redis Stream
``<prefix>:commands`` (``prefix`` is ``GRANTS_KEY_PREFIX``, default
``grants``), with one field, ``command``, holding the command's JSON
envelope (see :mod:`schemas.commands` and the JSON Schemas in
``schemas/jsonschema/``)::

    XADD grants:commands * command '{"v":1,"kind":"grant","project_id":44056,"operation":{...}}'

The entry id Redis assigns is the command's place in the global publish
order (the earliest-published payload of a purchase id is its original) and
its publish time. The workers read the stream in order, exactly once, and
trim what they have ingested; an entry that is not a valid command becomes a
dead letter holding its raw fields.

Final outcomes are appended to ``<prefix>:outcomes`` (fields ``project_id``,
``external_purchase_id``, ``kind``, ``status``, ``at``), which a pipeline
can follow with ``XREAD BLOCK``.
"""

from __future__ import annotations

from dataclasses import dataclass

# Stream keys under the prefix, and the entry's one field.
COMMAND_STREAM = "commands"
OUTCOME_STREAM = "outcomes"
COMMAND_FIELD = "command"
# The Celery queue that versions before the command stream published to
# (a Redis list of kombu messages); workers drain what is left on it, once.
LEGACY_INGEST_QUEUE = "grants.ingest"


def command_stream(prefix: str) -> str:
    """The command stream's key under ``prefix``."""
    return f"{prefix}:{COMMAND_STREAM}"


def outcome_stream(prefix: str) -> str:
    """The outcome stream's key under ``prefix``."""
    return f"{prefix}:{OUTCOME_STREAM}"


def entry_time_ms(entry_id: str) -> int:
    """The publish time (Redis's clock, ms) an entry id carries: ``<ms>-<seq>``."""
    return int(entry_id.partition("-")[0])


@dataclass(frozen=True)
class Outcome:
    """A command's final outcome, as the outcome stream announces it."""

    project_id: int
    external_purchase_id: str
    kind: str
    status: str
    at_ms: int

    @classmethod
    def from_entry(cls, fields: dict[str, str]) -> Outcome | None:
        """The outcome an entry announces; None for one that is not a command's
        (a dead letter has no project)."""
        try:
            return cls(
                int(fields["project_id"]),
                fields["external_purchase_id"],
                fields.get("kind", "grant"),
                fields["status"],
                int(fields.get("at") or 0),
            )
        except (KeyError, ValueError):
            return None
