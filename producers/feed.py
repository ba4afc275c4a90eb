"""Reading a purchase feed: JSON lines (one Xsolla purchase operation per
line) or one JSON array exactly like the API's request body.

Every element yields either a valid :class:`GrantCommand` or a
:class:`FeedError` naming the line, the field and the reason; a bad element
never hides the good ones around it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from pydantic import ValidationError

from schemas.commands import MODELS, GrantCommand
from schemas.jsontext import loads_exact, split_array
from schemas.kinds import GRANT
from schemas.kinds import kind as kind_of

# Ours: no single operation is anywhere near this; a longer line is refused
# before parsing, and read no further than this, so a runaway line cannot blow
# up memory. (Counted in characters, as read.)
MAX_LINE_BYTES = 1 << 20


@dataclass(frozen=True)
class FeedError:
    """One problem with one feed element."""

    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        # Field names and reasons can carry the input's own characters: never
        # let a newline or an escape sequence forge or garble a report line.
        return f"line {self.line}: {_printable(self.field)}: {_printable(self.reason)}"


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in text)


def field_path(loc: tuple[Any, ...]) -> str:
    """('operation', 'items', 0, 'sku') -> 'items[0].sku'."""
    if loc and loc[0] == "operation":
        loc = loc[1:]
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(operation)"


def validate(obj: Any, project_id: int, line: int, kind: str = GRANT) -> Any:
    """A command of ``kind`` (its name in schemas/kinds.py) from one decoded element, or its errors."""
    if not isinstance(obj, dict):
        return [FeedError(line, "(operation)", f"must be a JSON object, got {type(obj).__name__}")]
    try:
        if kind == GRANT:
            return GrantCommand(project_id=project_id, operation=obj)
        if "kind" in obj or "project_id" in obj:
            raise ValueError("kind and project_id come from the command line, not the feed")
        return MODELS[kind_of(kind).name](project_id=project_id, **obj)
    except ValueError as exc:
        if not isinstance(exc, ValidationError):
            return [FeedError(line, "(operation)", str(exc))]
        return [
            FeedError(line, field_path(e["loc"]), e["msg"].removeprefix("Value error, "))
            for e in exc.errors(include_url=False)
        ]


def read_feed(stream: IO[str], project_id: int, kind: str = "grant") -> Iterator[Any]:
    """Yield a command or a list of errors per feed element, in order."""
    if isinstance(stream, io.TextIOWrapper):
        # Undecodable bytes become lone surrogates, which the JSON parsers and
        # the schema refuse as that line's error, instead of a UnicodeDecodeError
        # ending the whole feed half-published. (Before the first read.)
        stream.reconfigure(errors="surrogateescape")
    lines = iter(lambda: stream.readline(MAX_LINE_BYTES + 1), "")
    first = ""
    head: list[str] = []
    for raw in lines:
        head.append(raw)
        if raw.strip() or len(raw) > MAX_LINE_BYTES:
            first = raw.lstrip()[:1]
            break
    if first == "[":
        yield from _array(("".join(head) + stream.read()), project_id, kind)
        return
    line_no = 0
    for raw in _chain(head, lines):
        line_no += 1
        if len(raw) > MAX_LINE_BYTES:
            # Only its first MAX_LINE_BYTES + 1 characters were read: skip the
            # rest in pieces of bounded size.
            while raw and not raw.endswith("\n"):
                raw = stream.readline(MAX_LINE_BYTES)
            yield [FeedError(line_no, "(line)", f"longer than {MAX_LINE_BYTES} bytes")]
            continue
        if raw.strip():
            yield _parse(raw, project_id, line_no, kind)


def _parse(text: str, project_id: int, line_no: int, kind: str) -> Any:
    """One element of a feed, decoded and validated (or its errors)."""
    try:
        obj = loads_exact(text)
    except ValueError as exc:
        return [FeedError(line_no, "(json)", f"invalid JSON: {exc}")]
    return validate(obj, project_id, line_no, kind)


def _chain(head: list[str], lines: Iterator[str]) -> Iterator[str]:
    yield from head
    yield from lines


def _array(text: str, project_id: int, kind: str = "grant") -> Iterator[Any]:
    """Walk a JSON array element by element, keeping each element's line; a
    bad element is reported and the walk goes on to the next one."""
    line, counted = 1, 0
    try:
        for offset, element in split_array(text):
            line += text.count("\n", counted, offset)
            counted = offset
            first = line + element[: len(element) - len(element.lstrip())].count("\n")
            if len(element) > MAX_LINE_BYTES:  # as a JSON line of that size would be
                yield [FeedError(first, "(operation)", f"longer than {MAX_LINE_BYTES} bytes")]
                continue
            yield _parse(element, project_id, first, kind)
    except ValueError as exc:  # the array itself is broken: nothing more to read
        yield [FeedError(text.count("\n") + 1, "(json)", str(exc))]
