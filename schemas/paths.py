"""Identifiers that become segments of a backend's URL path.

A user id like ``"../../2222/user/bob"`` must never route a call to another
project or user. Percent-encoding alone does not stop that: ``.`` and ``..``
still resolve to other paths, and many servers decode an encoded ``/``
before routing. So an id that goes into a path is refused, as invalid input,
when it is empty, ``.`` or ``..``, or holds ``/``, ``\\``, ``?``, ``#``,
``%`` or a control character; whatever else it holds is percent-encoded by
:func:`segment` when the path is built.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated
from urllib.parse import quote

from pydantic import AfterValidator, Field

from schemas.xsolla import MAX_ID_LENGTH

_FORBIDDEN = frozenset("/\\?#%")


def check_segment(value: str) -> str:
    """``value`` if it is safe as one URL path segment, else ``ValueError`` naming why."""
    if value in ("", ".", ".."):
        raise ValueError(f"{value!r} cannot be a URL path segment")
    bad = sorted({c for c in value if c in _FORBIDDEN or unicodedata.category(c) == "Cc"})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise ValueError(f"may not contain {shown}: it becomes part of the backend's URL path")
    return value


def segment(value: str) -> str:
    """``value`` percent-encoded as one path segment (checked again first)."""
    return quote(check_segment(value), safe="")


PathId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH), AfterValidator(check_segment)]
