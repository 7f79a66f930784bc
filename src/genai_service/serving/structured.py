"""Structured outputs: which JSON-schema constructs can be enforced while decoding.

The reply is constrained by a grammar built from the schema (llama.cpp's GBNF). A keyword the
grammar cannot enforce (a numeric range, say) would let a reply through that does not validate,
so such a schema is refused up front with a 400 that names the construct.
"""

from __future__ import annotations

import json
from typing import Any

from genai_service.api.errors import APIError

# Keywords the grammar enforces.
ENFORCED = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs",
    "definitions", "minLength", "maxLength", "pattern", "format",
}  # fmt: skip
# Keywords that only describe (no effect on which values are valid).
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly", "writeOnly"}  # fmt: skip
FORMATS = {"date", "time", "date-time"}
TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
MAX_SCHEMA_BYTES = 64 * 1024


def unsupported(message: str) -> APIError:
    return APIError(400, message, param="response_format", code="unsupported_schema")


def check_schema(schema: Any, path: str = "#") -> None:
    """Raise a 400 naming the first construct the grammar cannot enforce."""
    if isinstance(schema, bool):
        # `false` forbids (additionalProperties: false); as the whole schema nothing matches.
        if not schema and path == "#":
            raise unsupported("The schema is `false`: no value can match it.")
        return
    if not isinstance(schema, dict):
        raise unsupported(f"The schema at '{path}' must be an object.")
    for key, value in schema.items():
        where = f"{path}/{key}"
        if key in ANNOTATIONS:
            continue
        if key not in ENFORCED:
            raise unsupported(
                f"The JSON-schema keyword '{key}' (at '{where}') cannot be enforced while "
                "decoding. Remove it or validate it yourself after the reply."
            )
        if key == "format" and value not in FORMATS:
            raise unsupported(
                f"The string format '{value}' (at '{where}') is not supported; "
                f"use one of {', '.join(sorted(FORMATS))} or a pattern."
            )
        if key == "type":
            types = value if isinstance(value, list) else [value]
            bad = [t for t in types if t not in TYPES]
            if bad:
                raise unsupported(f"Unknown type {bad[0]!r} at '{where}'.")
        if key == "$ref" and not (isinstance(value, str) and value.startswith("#/")):
            raise unsupported(f"Only local references ('#/...') are supported, not {value!r}.")
        if key in ("properties", "$defs", "definitions"):
            if not isinstance(value, dict):
                raise unsupported(f"'{where}' must be an object.")
            for name, sub in value.items():
                check_schema(sub, f"{where}/{name}")
        elif key in ("items", "additionalProperties") and not isinstance(value, list):
            check_schema(value, where)
        elif key in ("prefixItems", "anyOf", "oneOf", "allOf") or (
            key == "items" and isinstance(value, list)
        ):
            if not isinstance(value, list) or not value:
                raise unsupported(f"'{where}' must be a non-empty list of schemas.")
            for i, sub in enumerate(value):
                check_schema(sub, f"{where}/{i}")


def schema_text(schema: dict[str, Any]) -> str:
    """The checked schema, serialized for `SamplingParams.json_schema`."""
    check_schema(schema)
    text = json.dumps(schema, separators=(",", ":"), sort_keys=True)
    if len(text) > MAX_SCHEMA_BYTES:
        raise unsupported(f"The schema is too large (over {MAX_SCHEMA_BYTES} bytes).")
    return text
