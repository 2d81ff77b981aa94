"""Strings Postgres cannot store: NUL characters and lone surrogates. Refused at the
edge, as a 400 naming the parameter, instead of a database error deep inside."""

from __future__ import annotations


def unstorable(value: str) -> str | None:
    """Why `value` cannot be stored, or None when it can."""
    if "\x00" in value:
        return "contains a NUL character (\\u0000), which cannot be stored"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate, which is not valid Unicode"
    return None


def printable(value: str) -> str:
    """`value` safe to send back in an error: lone surrogates written as escapes."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")
