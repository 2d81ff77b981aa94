"""Where the lines of a stored file start: the byte offset of every N-th line, so a reader
that wants line k starts at the recorded line nearest before it (a ranged read) instead of
reading the file from its start. An upload records them (every 10,000 lines), a job's run
input too (every 1,024); they travel as JSON in Postgres ({"every": N, "offsets": [...]}, inside
the columns app.data.json_values types) and are this type everywhere else."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LineOffsets:
    every: int  # lines between two recorded offsets
    offsets: tuple[int, ...]  # the first byte of lines 0, every, 2 * every, ...

    @classmethod
    def of(cls, every: int, offsets: Sequence[int]) -> LineOffsets:
        return cls(every, tuple(offsets))

    @classmethod
    def from_json(cls, value: Any) -> LineOffsets | None:
        """The offsets as stored JSON, read by raw SQL (the shard claim); None when none were."""
        if not isinstance(value, dict) or not value.get("offsets"):
            return None
        return cls(int(value["every"]), tuple(int(offset) for offset in value["offsets"]))

    def start(self, line: int) -> tuple[int, int]:
        """(a line at or before `line`, its first byte)."""
        mark = min(line // self.every, len(self.offsets) - 1)
        return mark * self.every, self.offsets[mark]
