"""JSON schemas of structured outputs (`response_format`, a responses line's `text.format`):
which ones vLLM cannot compile into a grammar, found when a line is planned, so a dry run
reports them and the worker never sends them to the engine."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.validators import validator_for

MAX_SCHEMA_NESTING = 64  # vLLM's MAX_STRUCTURED_OUTPUT_JSON_NESTING: a schema nested deeper is refused


def json_schema_problem(schema: dict[str, Any]) -> str | None:
    """What keeps vLLM from compiling `schema` into a grammar (the end of a sentence), or
    None: nested deeper than vLLM takes, or not JSON Schema (`{"type": "nope"}`, a
    `required` that is not a list, a `pattern` Python's `re` cannot compile; checked against
    the draft its `$schema` names, else 2020-12). What only the structured-output backend knows (a
    keyword it does not implement, an unknown `format`, a `$ref` to nothing) is refused by
    the worker's engine check before the static batch, naming the same field."""
    if _nests_deeper_than(schema, MAX_SCHEMA_NESTING):
        return f"is nested too deeply: objects and arrays may nest at most {MAX_SCHEMA_NESTING} levels."
    return _schema_problem(json.dumps(schema, sort_keys=True))


_SCHEMA_PROBLEMS: dict[bytes, str | None] = {}  # by the digest of a schema's canonical JSON
MAX_CACHED_SCHEMAS = 1024


def _schema_problem(canonical: str) -> str | None:
    """What is wrong with a schema (given as canonical JSON), or None. Cached by digest:
    checking one against its metaschema takes milliseconds, and a batch's lines mostly
    share one schema (the digest keeps the cache small whatever the schemas' size)."""
    digest = hashlib.sha256(canonical.encode()).digest()
    if digest not in _SCHEMA_PROBLEMS:
        if len(_SCHEMA_PROBLEMS) >= MAX_CACHED_SCHEMAS:
            _SCHEMA_PROBLEMS.clear()
        _SCHEMA_PROBLEMS[digest] = _check_schema(json.loads(canonical))
    return _SCHEMA_PROBLEMS[digest]


def _check_schema(schema: dict[str, Any]) -> str | None:
    dialect = schema.get("$schema")
    if dialect is not None and not isinstance(dialect, str):
        return "has a $schema that is not a URI."
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as err:
        return f"is not valid JSON Schema: {err.message} (at /{'/'.join(str(part) for part in err.path)})."
    except (RecursionError, OverflowError, ValueError) as exc:  # `re` on a hostile `pattern`, say
        return f"cannot be checked ({type(exc).__name__}: {str(exc)[:200]})."
    return None


def _nests_deeper_than(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest more than `limit` levels in `value` (as vLLM counts)."""
    level = [value]
    for _ in range(limit):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True
