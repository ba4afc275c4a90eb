"""``grants dead``: placeholder, being built (issue 12)."""

from __future__ import annotations


def add_parser(sub) -> None:
    """Register ``grants dead`` (not built yet: nothing is registered)."""
