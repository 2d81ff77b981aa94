"""The endpoint registry: every endpoint kind the service runs, one module each.

Each kind (`Endpoint`, in `base`) says its body model, how a plain line maps to it, how a line
is planned (into its engine call's plan type: `GenerationPlan`, `PoolingPlan`, `ScoringPlan`,
`ContinuationPlan`), which worker kind and engine call serve it, how its output line is built
and how its tokens count in an estimate. Every other module asks the registry (`endpoint_for`,
`ENDPOINTS`) and compares no endpoint URL; `tests/unit/test_endpoints.py` says so. Adding a
kind: a module here, found when the package is imported (docs/architecture.md has the recipe);
a kind on a new engine call defines the call in its module too (app.jobs.endpoints.call).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from app.jobs.endpoints.base import Endpoint
from app.jobs.endpoints.chat import ChatCompletions
from app.jobs.endpoints.completions import Completions
from app.jobs.endpoints.embeddings import EmbeddingsEndpoint
from app.jobs.endpoints.rerank import RerankEndpoint
from app.jobs.endpoints.responses import Responses
from app.jobs.endpoints.score import ScoreEndpoint


def _discovered() -> list[Endpoint[Any]]:
    """One instance of every concrete Endpoint class defined in a module of this package, in
    `listing_order`: a new kind is a module here, nothing to add elsewhere."""
    kinds: list[Endpoint[Any]] = []
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, Endpoint)
                and value.__module__ == module.__name__
                and not inspect.isabstract(value)
            ):
                kinds.append(value())
    return sorted(kinds, key=lambda kind: (kind.listing_order, kind.url))


# URL -> its kind, in the order errors list them.
ENDPOINTS: dict[str, Endpoint[Any]] = {endpoint.url: endpoint for endpoint in _discovered()}
COMPLETIONS = Completions.url
CHAT_COMPLETIONS = ChatCompletions.url
EMBEDDINGS = EmbeddingsEndpoint.url
RESPONSES = Responses.url
SCORE = ScoreEndpoint.url
RERANK = RerankEndpoint.url

# The fields that make a line plain (no url and body), the most telling first: a line with
# messages is a chat line whatever else it holds. Each is some kind's `required_field` (a kind
# added later is told by its own, after these).
PLAIN_FIELDS = tuple(
    dict.fromkeys(["messages", "prompt", "input", "query", "text_1", *(e.required_field for e in ENDPOINTS.values())])
)


class UnknownEndpoint(KeyError):
    """A URL no kind serves."""


def endpoint_for(url: str) -> Endpoint[Any]:
    """The kind that serves `url`; UnknownEndpoint for any other."""
    try:
        return ENDPOINTS[url]
    except KeyError:
        raise UnknownEndpoint(url) from None


def is_endpoint(url: object) -> bool:
    return isinstance(url, str) and url in ENDPOINTS


def listed() -> str:
    """The URLs served, for messages."""
    return ", ".join(ENDPOINTS)


def plain_line_endpoints(field: str) -> list[Endpoint[Any]]:
    """The kinds a plain line given by `field` may be, with no batch to decide (at upload):
    those whose own field it is, in registry order (the first whose body parses it wins)."""
    return [endpoint for endpoint in ENDPOINTS.values() if endpoint.required_field == field]


def plain_runs_on(field: str) -> set[str]:
    """The URLs a plain line given by `field` runs on (a plain prompt is also a chat's one
    message and a responses input; a plain input is an embeddings or a responses body)."""
    return {url for url, endpoint in ENDPOINTS.items() if field in endpoint.plain_fields}


def worker_kinds() -> dict[str, list[str]]:
    """Worker kind -> the URLs its engine serves."""
    kinds: dict[str, list[str]] = {}
    for url, endpoint in ENDPOINTS.items():
        kinds.setdefault(endpoint.worker_kind, []).append(url)
    return kinds
