"""docs/benchmarks.md's section on sharing (bench.sharing: small batches behind a big one)."""

from __future__ import annotations

from typing import Any


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def sharing_section(result: dict[str, Any] | None) -> tuple[list[str], list[list[str]]]:
    if not result:
        return [], []
    settings = result["settings"]
    goal = result["small_goal_seconds"]
    other, urgent, rate = (
        result["small_other_owner_seconds"],
        result["small_priority_seconds"],
        result["big_rate_shared_over_alone"],
    )
    lines = [
        "## 11. Sharing: small batches behind a big one",
        "",
        f"One worker at the service's defaults. A {settings['big_lines']:,}-line batch (max_tokens "
        f"{settings['max_tokens']}) runs; once its first window is recorded, a {settings['small_lines']}-line batch "
        "of another owner and a priority-50 batch of the same size are created. Times are the database's "
        "(created to completed), medians of the rounds; the small batch alone is the best of two runs on the "
        "idle worker.",
        "",
        "| figure | seconds |",
        "| --- | --- |",
        f"| small batch alone | {result['small_alone_seconds']:.2f} |",
        f"| small batch of another owner, behind the big one | {other:.2f} |",
        f"| small priority batch, behind the big one | {urgent:.2f} |",
        f"| goal for both (30 s + 3x alone) | {goal:.2f} |",
        f"| big batch alone | {result['big_alone_seconds']:.1f} "
        f"({result['big_alone_tokens_per_second']:,.0f} tokens/s) |",
        f"| big batch with the small ones beside it | {result['big_shared_seconds']:.1f} "
        f"({result['big_shared_tokens_per_second']:,.0f} tokens/s) |",
        "",
        f"The big batch was still running when both small ones had ended: "
        f"{'yes' if result['big_still_running_when_small_ones_ended'] else 'no'}. "
        f"Its tokens/s with them beside it: **{rate:.3f}** of its rate alone.",
        "",
    ]
    met = other <= goal and urgent <= goal
    return lines, [
        ["11. small batch behind a big one", f"≤ {goal:.1f} s", f"{max(other, urgent):.2f} s", _verdict(met)],
        ["11. big batch's rate, shared / alone", "≥ 0.95", f"{rate:.3f}", _verdict(rate >= 0.95)],
    ]
