"""argparse types the operator commands share."""

from __future__ import annotations

import argparse

from producers.cli import kind_name
from worker.replay import parse_time

__all__ = ["kind_name", "positive_int", "when"]


def when(text: str) -> int:
    """An argparse type: an ISO 8601 time (UTC unless it says) as epoch ms."""
    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
