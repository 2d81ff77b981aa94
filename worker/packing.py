"""The order a packed window's lines run in, decided before any line is tokenized.

A window of several static batches is sorted so that short answers do not wait for long
ones. The order comes from what each parsed line says (its requested length, the start
and size of its prompt's text), so the first static batch can be tokenized and start while
the preparer tokenizes the next: nothing waits for the whole window's tokens.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from app.jobs.endpoints.base import JobDefaults
from app.jobs.lines import Request

PREFIX_GROUP_CHARS = 256  # lines whose prompt texts start with the same this many characters share a prefix
PREFIX_GROUP_TOKENS = 64  # the same for a prompt given as token ids
# The window's distinct shared prefixes "fit" when they take at most this share of the KV
# cache: the rest holds the running static batch's own tokens, so no prefix is evicted.
PREFIX_CACHE_SHARE = 0.5


@dataclass(frozen=True)
class LineFacts:
    """What a parsed line says about its cost, before it is tokenized."""

    max_tokens: int  # requested, per choice
    prompt_size: int  # bytes of the prompt's text (each token covers at least one), or its token ids
    prefix: int  # hash of the prompt's start


def line_facts(request: Request, defaults: JobDefaults) -> LineFacts:
    kind, body = request.kind, request.body
    prompt = kind.packing_prompt(body)
    if prompt is None:  # not a generation line: planning refuses it, wherever it sits
        return LineFacts(0, 0, 0)
    max_tokens = kind.max_tokens(body, defaults)
    if isinstance(prompt, list):
        return LineFacts(max_tokens, len(prompt), hash(tuple(prompt[:PREFIX_GROUP_TOKENS])))
    return LineFacts(max_tokens, len(prompt.encode()), hash(prompt[:PREFIX_GROUP_CHARS]))


def prefixes_fit(lines: Sequence[LineFacts], kv_cache_tokens: int | None) -> bool:
    """Whether the KV cache holds every prefix the window's lines share at once. A shared
    prefix is at most as long as the shortest prompt that starts with it, and a prompt has at
    most as many tokens as its text has bytes, so this errs on the side of not fitting."""
    if kv_cache_tokens is None:
        return False
    shortest: dict[int, int] = {}
    for line in lines:
        shortest[line.prefix] = min(shortest.get(line.prefix, line.prompt_size), line.prompt_size)
    shared = Counter(line.prefix for line in lines)
    held = sum(size for prefix, size in shortest.items() if shared[prefix] > 1)
    return held <= kv_cache_tokens * PREFIX_CACHE_SHARE


def packing_order(lines: Sequence[LineFacts], kv_cache_tokens: int | None) -> list[int]:
    """Positions of `lines` in the order they run. When the window's shared prefixes fit in
    the KV cache together, the prefix cache keeps each of them whatever the order, so lines
    run by requested length (those sharing a prefix side by side among equal lengths):
    static batches of similar lengths finish together. When they do not fit, lines sharing
    a prefix run together (then the lines alone with theirs), each group by length, so a
    prefix is computed once before it is evicted. Answers go back in input order whatever
    this order is."""
    shared = Counter(line.prefix for line in lines)
    group = {prefix: rank for rank, prefix in enumerate(dict.fromkeys(p.prefix for p in lines if shared[p.prefix] > 1))}
    unshared = len(group)  # lines alone with their prefix, as one group

    def by_length(i: int) -> tuple[int, int, int]:
        line = lines[i]
        return line.max_tokens, group.get(line.prefix, unshared), line.prompt_size

    def by_prefix(i: int) -> tuple[int, int, int]:
        line = lines[i]
        return group.get(line.prefix, unshared), line.max_tokens, line.prompt_size

    return sorted(range(len(lines)), key=by_length if prefixes_fit(lines, kv_cache_tokens) else by_prefix)
