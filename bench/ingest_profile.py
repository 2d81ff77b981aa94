"""Times the upload check alone, off the API: `FileCheck` over generated lines (MB/s,
tracemalloc peak), then the whole `CheckingReader` into a `LocalStore` (MB/s, RSS growth).

    python -m bench.ingest_profile --lines 300000 --repeat 3 [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import tempfile
import time
import tracemalloc
from pathlib import Path

import psutil

from app.core.storage import LocalStore
from app.jobs.upload_check import FileCheck
from app.jobs.uploads import CheckingReader, UploadLimits
from bench.api_process import running_api
from bench.common import BenchConfig
from bench.ingest import PeakRss, upload, write_jsonl

MB = 1 << 20
LINE_BYTES = 250  # about what bench.ingest.write_jsonl writes
LINES_PER_CHUNK = 4096  # about what a 1 MiB read holds


def check_lines(lines: list[bytes]) -> FileCheck:
    check = FileCheck(max_errors=100)
    for start in range(0, len(lines), LINES_PER_CHUNK):
        check.check_lines(lines[start : start + LINES_PER_CHUNK])
    check.summary()
    return check


def time_check(lines: list[bytes], size: int) -> float:
    began = time.perf_counter()
    check_lines(lines)
    return size / MB / (time.perf_counter() - began)


def traced_peak(lines: list[bytes]) -> float:
    tracemalloc.start()
    check_lines(lines)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / MB


def time_upload(path: Path, root: Path) -> tuple[float, float]:
    baseline = psutil.Process().memory_info().rss
    store = LocalStore(root)
    check = FileCheck(max_errors=100)
    with PeakRss(os.getpid()) as rss, open(path, "rb") as source:
        began = time.perf_counter()
        store.put_stream("files/x", CheckingReader(source, check, UploadLimits(1 << 40, 1 << 40, 100)))  # type: ignore[arg-type]
        check.summary()
        seconds = time.perf_counter() - began
    store.delete("files/x")
    return path.stat().st_size / MB / seconds, (rss.peak - baseline) / MB


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--upload-mb", type=int, default=0, help="also time CheckingReader into a LocalStore")
    parser.add_argument("--api-mb", type=int, default=0, help="also time POST /v1/files to a running API")
    parser.add_argument(
        "--database-url", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ingest-profile-") as tmp:
        path = Path(tmp) / "in.jsonl"
        write_jsonl(path, args.lines * LINE_BYTES)
        data = path.read_bytes()
        lines = data.split(b"\n")[: args.lines]
        size = sum(len(line) + 1 for line in lines)
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(check_lines, lines)
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
            print(out.getvalue())
            return
        rates = [time_check(lines, size) for _ in range(args.repeat)]
        print(f"FileCheck {len(lines)} lines: {', '.join(f'{r:.1f}' for r in rates)} MB/s")
        print(f"FileCheck tracemalloc peak: {traced_peak(lines):.1f} MB")
        del data, lines
        if args.upload_mb:
            big = Path(tmp) / "big.jsonl"
            write_jsonl(big, args.upload_mb * MB)
            for _ in range(args.repeat):
                rate, growth = time_upload(big, Path(tmp) / "store")
                print(f"upload {args.upload_mb} MB through CheckingReader: {rate:.1f} MB/s, RSS +{growth:.0f} MB")
        if args.api_mb:
            big = Path(tmp) / "api.jsonl"
            write_jsonl(big, args.api_mb * MB)
            with running_api(BenchConfig(model="none", database_url=args.database_url), "ingest_profile") as api:
                upload(api, Path(tmp) / "in.jsonl")  # warm-up
                for _ in range(args.repeat):
                    run = upload(api, big)
                    rate, growth = run["mb_per_second"], run["rss_growth_mb"]
                    print(f"POST /v1/files {args.api_mb} MB: {rate:.1f} MB/s, RSS +{growth:.0f} MB")


if __name__ == "__main__":
    main()
