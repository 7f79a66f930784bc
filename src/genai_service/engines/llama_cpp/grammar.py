"""JSON schema -> GBNF grammar for llama.cpp's grammar sampler (structured outputs)."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=64)
def grammar_for(schema_json: str) -> str:
    """The GBNF grammar (root rule `root`) whose strings are the JSON values `schema_json`
    allows; ValueError for what the converter cannot express."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return str(json_schema_to_gbnf(schema_json))
    except (KeyError, TypeError, RecursionError) as exc:
        raise ValueError(f"the schema cannot be turned into a grammar: {exc}") from None
