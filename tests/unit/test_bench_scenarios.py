"""The benchmark scenarios' one name each (bench/scenarios.py): the harness's --only/--skip,
the module that runs it, its committed result file and its section of the report."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from bench import common, report
from bench.__main__ import parse_args
from bench.scenarios import NAMES, SCENARIOS


def test_each_scenario_has_one_name_its_module_and_its_committed_result_file() -> None:
    assert len(set(NAMES)) == len(NAMES)
    for scenario in SCENARIOS:
        assert importlib.util.find_spec(scenario.module) is not None, scenario.module
        assert scenario.result == common.RESULTS / f"{scenario.name}.json"
        assert scenario.result.exists(), scenario.result  # the report is written from it
    assert {path.stem for path in common.RESULTS.glob("*.json")} >= set(NAMES)


def test_only_and_skip_take_the_names_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["bench", "--only", "queue_claims", "static_vs_continuous", "--skip", "scale_out"])
    args = parse_args()
    assert args.only == ["queue_claims", "static_vs_continuous"] and args.skip == ["scale_out"]
    for old in ("queue", "static_batches", "scale_out_summary", "1a"):
        monkeypatch.setattr(sys, "argv", ["bench", "--only", old])
        with pytest.raises(SystemExit):
            parse_args()


def test_the_report_heads_each_section_with_its_scenarios_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(report, "CHARTS", tmp_path / "charts")
    monkeypatch.setattr(report, "DOC", tmp_path / "benchmarks.md")
    page = report.write().read_text()
    headings = [line for line in page.splitlines() if line.startswith("## `")]
    assert headings == [scenario.heading for scenario in SCENARIOS]  # every committed result has its section
    goals = [line.split("|")[1].strip() for line in page.splitlines() if line.startswith("| `")]
    assert goals and all(goal.split("`")[1] in NAMES for goal in goals)


def test_a_part_of_a_result_file_keeps_the_others(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    common.write_result("scale_out", {"skipped": "on a GPU"})
    common.write_part("scale_out", "machine_scaling", {"ratio": 0.5})
    common.write_part("scale_out", "scale_out", {"ratio": 0.53})
    found = common.read_result("scale_out")
    assert found is not None and found["machine_scaling"] == {"ratio": 0.5} and found["scale_out"] == {"ratio": 0.53}
    assert "skipped" not in found and "measured" in found
