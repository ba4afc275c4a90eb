"""Reading JSON text as the wire needs it: numbers exact, and arrays element
by element, so one bad element never takes its neighbours down with it.

Producers (feed files) and workers (message payloads) read JSON from outside;
both use these two functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pydantic_core

# A JSON string (escapes included), or one structural character. Strings are
# matched whole, so brackets and commas inside them are never structure.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},]', re.S)


def loads_exact(text: str | bytes) -> Any:
    """Decode one JSON value; ``ValueError`` for anything that is not one.

    pydantic-core's parser (jiter): integers of any size stay exact (orjson
    would read one beyond 64 bits as a float, silently another value, which
    a schema could then not refuse); deep nesting, lone surrogates, NaN and
    an integer of more than 4,300 digits are ``ValueError``, never
    ``RecursionError``; and it is as fast as orjson.
    """
    try:
        return pydantic_core.from_json(text, allow_inf_nan=False)
    except (ValueError, TypeError) as exc:  # TypeError: text that is not UTF-8 (surrogate escapes)
        raise ValueError(str(exc)) from None


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
