"""Reading JSON text as the wire needs it: numbers exact, and arrays element
by element, so one bad element never takes its neighbours down with it.

Producers (feed files) and workers (message payloads) read JSON from outside;
both use these two functions.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

import orjson

# Twenty digits or more: possibly beyond a 64-bit integer.
_LONG_INTEGER = re.compile(r"\d{20}")
# A JSON string (escapes included), or one structural character. Strings are
# matched whole, so brackets and commas inside them are never structure.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},]', re.S)


def loads_exact(text: str | bytes) -> Any:
    """Decode one JSON value; ``ValueError`` for anything that is not one.

    orjson is fast, but reads an integer beyond 64 bits as a float (silently
    another value) and refuses deep nesting and lone surrogates; the standard
    library keeps such integers exact, so that a schema can refuse them.
    Nesting too deep for either, or an integer of more than 4,300 digits,
    raises ``ValueError`` too, never ``RecursionError``.
    """
    raw = text.decode("utf-8", errors="surrogateescape") if isinstance(text, bytes) else text
    try:
        if not _LONG_INTEGER.search(raw):
            return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:
        raise ValueError(str(exc).split(";")[0]) from None


def split_array(text: str) -> Iterator[tuple[int, str]]:
    """The elements of a top-level JSON array as (offset, raw text), unparsed.

    Only the array's own structure is read (strings, brackets, commas), with
    no recursion, so an element that is invalid, huge or 10,000 levels deep
    is handed over as text to be judged alone. ``ValueError`` if ``text`` is
    not an array or ends before it does; elements already yielded stand.
    """
    start = len(text) - len(text.lstrip())
    if not text.startswith("[", start):
        raise ValueError("expected a JSON array")
    depth = 0
    element = start + 1
    for match in _TOKEN.finditer(text, start):
        token = match.group()
        if token[0] == '"':
            continue
        if token in "[{":
            depth += 1
        elif token in "]}":
            depth -= 1
            if depth == 0:
                if text[element : match.start()].strip():
                    yield element, text[element : match.start()]
                if text[match.end() :].strip():
                    raise ValueError("unexpected data after the array")
                return
        elif depth == 1:  # a comma between elements
            yield element, text[element : match.start()]
            element = match.end()
    if depth >= 1 and text[element:].strip():
        yield element, text[element:]  # the last element, whole or cut: judged alone
    raise ValueError("unterminated array")
