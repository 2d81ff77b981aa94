"""input_read: a 1M-line job in 10 shards, each shard's lines read the way the worker's
shard runner reads them (`app.jobs.uploads.lines_from`: a ranged read from the recorded
line offset nearest before the shard), counting the bytes read from storage. No engine:
this measures the input path alone.

    python -m bench.input_read [--lines 1000000] [--shards 10]

Goal (issue 14): input bytes read <= 1.1x the file. Beside it, what reading every shard
from line 0 (as before offsets were recorded) would have read.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import BenchConfig, fresh_database, postgres, write_result


def _counting_store(root: Path) -> Any:
    from app.core.storage import LocalStore

    class CountingStore(LocalStore):
        """A folder that counts the bytes read from it."""

        bytes_read = 0

        def read_chunks(self, key: str, start: int = 0) -> Iterator[bytes]:
            for chunk in super().read_chunks(key, start):
                self.bytes_read += len(chunk)
                yield chunk

    return CountingStore(root)


def input_file(lines: int) -> bytes:
    return b"".join(
        json.dumps({"custom_id": f"r{i:07d}", "prompt": f"benchmark document number {i}", "max_tokens": 16}).encode()
        + b"\n"
        for i in range(lines)
    )


def run(config: BenchConfig) -> dict[str, Any]:
    from app.core.database import Database
    from app.data.records import Records
    from app.jobs.uploads import UploadLimits, lines_from, store_upload

    lines = int(config.extra.get("input_lines", 1_000_000))
    shards = int(config.extra.get("input_shards", 10))
    data = input_file(lines)
    with tempfile.TemporaryDirectory() as tmp, fresh_database(config.database_url, "bench_input_read") as url:
        db = Database(url)
        try:
            store = _counting_store(Path(tmp))
            began = time.perf_counter()
            file = store_upload(
                Records(db),
                store,
                io.BytesIO(data),
                owner="bench",
                filename="input.jsonl",
                purpose="batch",
                limits=UploadLimits(10**11, 10**9, 10),
            )
            upload_seconds = time.perf_counter() - began
            offsets = file.validation.line_offsets
            shard_size = -(-lines // shards)
            store.bytes_read = 0
            began = time.perf_counter()
            read_lines = 0
            for first in range(0, lines, shard_size):  # as each shard's runner reads its lines
                end = min(first + shard_size, lines)
                read_lines += sum(
                    1 for _ in itertools.islice(lines_from(store, file.storage_key, offsets, first), end - first)
                )
            read_seconds = time.perf_counter() - began
        finally:
            db.dispose()
    assert read_lines == lines
    from_line_zero = sum(_shard_end_bytes(data, shard_size))
    return {
        "lines": lines,
        "shards": shards,
        "file_bytes": len(data),
        "bytes_read": store.bytes_read,
        "read_ratio": round(store.bytes_read / len(data), 3),
        "from_line_zero_bytes": from_line_zero,
        "from_line_zero_ratio": round(from_line_zero / len(data), 3),
        "read_seconds": round(read_seconds, 2),
        "upload_seconds": round(upload_seconds, 2),
    }


def _shard_end_bytes(data: bytes, shard_size: int) -> list[int]:
    """Where each shard's last line ends: what a reader from line 0 must get through."""
    ends, position, line = [], 0, 0
    while position < len(data):
        position = data.index(b"\n", position) + 1
        line += 1
        if line % shard_size == 0 or position == len(data):
            ends.append(position)
    return ends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=10)
    args = parser.parse_args()
    with postgres(None) as server:
        config = BenchConfig(
            model="", database_url=server, extra={"input_lines": args.lines, "input_shards": args.shards}
        )
        result = run(config)
    write_result("input_read", result)
    print(json.dumps(result, indent=2))
    print(
        f"input bytes read: {result['read_ratio']:.3f}x the file (goal <= 1.1x); "
        f"from line 0: {result['from_line_zero_ratio']:.1f}x"
    )


if __name__ == "__main__":
    main()
