"""Reading a purchase feed: JSON lines (one Xsolla purchase operation per
line) or one JSON array exactly like the API's request body.

Every element yields either a valid :class:`GrantCommand` or a
:class:`FeedError` naming the line, the field and the reason; a bad element
never hides the good ones around it.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from typing import IO, Any, Iterator

import orjson
from pydantic import ValidationError

from schemas.commands import (
    BackpackCreateCommand,
    BackpackDeleteCommand,
    GrantCommand,
    PlayFabDeleteCommand,
    RevokeCommand,
)

# Twenty digits or more: possibly beyond a 64-bit integer.
_LONG_INTEGER = re.compile(r"\d{20}")

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
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                   for c in text)


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


# What one feed line holds, per `grants publish --kind`: a grant line is an
# Xsolla purchase operation; the others are the command's own fields.
KINDS = {
    "grant": GrantCommand,
    "revoke": RevokeCommand,
    "backpack-create": BackpackCreateCommand,
    "backpack-delete": BackpackDeleteCommand,
    "playfab-delete": PlayFabDeleteCommand,
}


def validate(obj: Any, project_id: int, line: int, kind: str = "grant") -> Any:
    """A command from one decoded element, or its errors."""
    if not isinstance(obj, dict):
        return [FeedError(line, "(operation)", f"must be a JSON object, got {type(obj).__name__}")]
    try:
        if kind == "grant":
            return GrantCommand(project_id=project_id, operation=obj)
        if "kind" in obj or "project_id" in obj:
            raise ValueError("kind and project_id come from the command line, not the feed")
        return KINDS[kind](project_id=project_id, **obj)
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
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
            if _LONG_INTEGER.search(raw):
                # orjson reads an integer beyond 64 bits as a float, silently
                # changing the value; the standard library keeps it exact, so
                # the schema can refuse it instead.
                obj = json.loads(raw)
        except (orjson.JSONDecodeError, ValueError) as exc:
            yield [FeedError(line_no, "(json)", f"invalid JSON: {exc}")]
            continue
        yield validate(obj, project_id, line_no, kind)


def _chain(head: list[str], lines: Iterator[str]) -> Iterator[str]:
    yield from head
    yield from lines


def _array(text: str, project_id: int, kind: str = "grant") -> Iterator[Any]:
    """Walk a JSON array element by element, keeping each element's line."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    end = len(text)

    def skip_ws(p: int) -> int:
        while p < end and text[p] in " \t\r\n":
            p += 1
        return p

    def line_of(p: int) -> int:
        return text.count("\n", 0, p) + 1

    pos = skip_ws(pos)
    if pos < end and text[pos] == "]":
        return
    while pos < end:
        try:
            obj, nxt = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield [FeedError(line_of(exc.pos), "(json)", f"invalid JSON: {exc.msg}")]
            return
        except RecursionError:  # [[[[... thousands deep: the stdlib decoder recurses
            yield [FeedError(line_of(pos), "(json)", "invalid JSON: nested too deeply")]
            return
        except ValueError as exc:  # an integer of more than 4300 digits
            yield [FeedError(line_of(pos), "(json)", f"invalid JSON: {str(exc).split(';')[0]}")]
            return
        if nxt - pos > MAX_LINE_BYTES:  # as a JSON line of that size would be
            yield [FeedError(line_of(pos), "(operation)", f"longer than {MAX_LINE_BYTES} bytes")]
        else:
            yield validate(obj, project_id, line_of(pos), kind)
        pos = skip_ws(nxt)
        if pos < end and text[pos] == ",":
            pos = skip_ws(pos + 1)
        elif pos < end and text[pos] == "]":
            rest = text[pos + 1 :].strip()
            if rest:
                yield [FeedError(line_of(pos + 1), "(json)", "unexpected data after the array")]
            return
        else:
            yield [FeedError(line_of(pos), "(json)", "expected ',' or ']' between operations")]
            return
    yield [FeedError(line_of(end), "(json)", "unterminated array")]
