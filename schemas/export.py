"""The wire format as JSON Schema, for producers in other languages.

``python -m schemas.export`` writes one schema per command kind to
``schemas/jsonschema/<kind>.json``: the envelope a stream entry's
``command`` field holds (``v``, ``kind``, ``project_id`` and the kind's
fields), generated from the pydantic models. The files are kept in the
repository; a test fails when they no longer match the models. Custom
checks the models make (an SKU's characters, ISO 4217 currencies, ids that
go into URL paths) are in the ``description``s; a producer's validator that
follows the schema alone can still be refused, as a dead letter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from schemas.commands import ENVELOPE_VERSION, MODELS

OUT = Path(__file__).resolve().parent / "jsonschema"


def envelope_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of one kind's envelope."""
    schema = MODELS[kind].model_json_schema()
    schema["properties"] = {
        "v": {"const": ENVELOPE_VERSION, "description": "envelope version"},
        **schema["properties"],
        "enqueued_at": {
            "type": "integer",
            "description": "optional: publish time in ms (the stream entry id already carries it)",
        },
    }
    schema["required"] = ["v", *[r for r in schema.get("required", []) if r != "kind"]]
    if kind != "grant":
        schema["required"].insert(1, "kind")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://grant-worker.example/schemas/{kind}.json"
    schema["title"] = f"{kind} command (XADD <prefix>:commands * command <this JSON>)"
    return schema


def rendered() -> dict[str, str]:
    """File name -> content, exactly as written."""
    return {f"{kind}.json": json.dumps(envelope_schema(kind), indent=2, sort_keys=True) + "\n" for kind in MODELS}


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, text in rendered().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
