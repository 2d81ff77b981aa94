"""The benchmark scenarios, each known by one name: `python -m bench --only/--skip NAME`,
the module bench/NAME.py that runs it, its result file bench/results/NAME.json, and its
section of docs/benchmarks.md, headed "`NAME`: title". The list's order is the order the
harness runs them in (after the in-process engine's phase, see bench/__main__.py) and the
order of the report's sections.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.common import RESULTS


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str  # the report's heading after the name, and --help's line
    uses_engine: bool = False  # runs on the harness's in-process engine, loaded once for all of them

    @property
    def module(self) -> str:
        return f"bench.{self.name}"

    @property
    def result(self) -> Path:
        return RESULTS / f"{self.name}.json"

    @property
    def heading(self) -> str:
        return f"## `{self.name}`: {self.title}"


SCENARIOS = [
    Scenario("static_vs_continuous", "static against continuous batching", uses_engine=True),
    Scenario("service_overhead", "the service against raw `LLM.generate` in one process", uses_engine=True),
    Scenario("deployed_shape", "the deployed shape against raw `LLM.generate`"),
    Scenario("peer", "the service against vLLM run-batch", uses_engine=True),
    Scenario("shared_prefix", "shared prefixes"),
    Scenario("ingest", "a large upload into storage"),
    Scenario("polling", "clients polling one batch"),
    Scenario("queue_claims", "claims from a deep queue"),
    Scenario("scale_out", "one job on one worker against two"),
    Scenario("input_read", "the input read once"),
    Scenario("ceiling", "the defaults against raw vLLM given every line at once"),
    Scenario("control_plane", "the control plane while the engine works"),
    Scenario("sharing", "small batches behind a big one"),
    Scenario("fleet", "a fleet against one Postgres"),
    Scenario("rate_limits", "one key's burst beside another key's polls"),
    Scenario("documents_questions", "documents x questions, written question-major"),
    Scenario("polls_at_start", "polls while the service starts and shares"),
]
NAMES = [scenario.name for scenario in SCENARIOS]
BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}
