"""`llm-batch`: submit, watch, list, cancel and download batches; manage API keys; check the host.

Everything but `keys` and `doctor` talks HTTP to the API like any client. `keys` is a server-side
command: it writes to the service's database directly (DATABASE_URL, or with it
unset the embedded database under var/, as `make run` uses). `doctor` checks this host
(app.tools.doctor).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx

from app.data.models import TERMINAL_STATUSES
from app.jobs.endpoints import ENDPOINTS

TERMINAL = {status.value for status in TERMINAL_STATUSES}
POLL_SECONDS = 1.0
DEFAULT_URL = "http://127.0.0.1:8000"


class ApiError(Exception):
    pass


class Client:
    def __init__(self, base_url: str, api_key: str | None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=300)

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            raise ApiError(f"{response.status_code}: {message}")
        result: dict[str, Any] = response.json()
        return result

    def download(self, path: str, target: Path, params: dict[str, Any] | None = None) -> int:
        """Streams GET `path` into `target`; returns the bytes written."""
        with open(target, "wb") as out:
            return self.stream_into(path, out, params)[0]

    def stream_into(self, path: str, out: IO[bytes], params: dict[str, Any] | None = None) -> tuple[int, httpx.Headers]:
        with self.http.stream("GET", path, params=params) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError(f"{response.status_code}: {response.text}")
            size = 0
            for chunk in response.iter_bytes():
                out.write(chunk)
                size += len(chunk)
        return size, response.headers


def _guess_endpoint(path: Path) -> str:
    """The endpoint of the file's first line: its url, else the kind the upload check reads a
    plain line as (app.jobs.endpoints: a plain input line fits embeddings and responses, and is
    an embeddings line when it is one; give --endpoint /v1/responses for text inputs to a
    responses batch); else the registry's first endpoint."""
    from app.jobs.lines import plain_upload_endpoint

    with open(path, "rb") as handle:
        first = json.loads(handle.readline() or b"{}")
    if isinstance(first, dict) and first.get("url"):
        return str(first["url"])
    kind = plain_upload_endpoint(first) if isinstance(first, dict) else None
    return kind.url if kind is not None else next(iter(ENDPOINTS))


def _summary(batch: dict[str, Any]) -> str:
    counts = batch["request_counts"]
    tps = batch.get("throughput", {}).get("generation_tokens_per_second")
    return (
        f"{batch['id']}  {batch.get('queue_status', batch['status']):<11} "
        f"{counts['completed']}/{counts['total']} done, {counts['failed']} failed"
        + (f", {tps:.0f} tokens/s" if tps else "")
    )


def watch(client: Client, batch_id: str) -> dict[str, Any]:
    """Polls until the batch ends, with a progress bar of lines and tokens/s."""
    from tqdm import tqdm

    batch = client.call("GET", f"/v1/batches/{batch_id}")
    with tqdm(total=batch["request_counts"]["total"], unit="line", desc=batch_id[:18]) as bar:
        while True:
            counts = batch["request_counts"]
            bar.update(counts["completed"] + counts["failed"] - bar.n)
            tps = batch.get("throughput", {}).get("generation_tokens_per_second")
            bar.set_postfix(status=batch.get("queue_status", batch["status"]), tokens_per_s=f"{tps or 0:.0f}")
            if batch["status"] in TERMINAL:
                return batch
            # A long poll: answered when the status changes, else after a poll interval, so
            # the end is seen at once and the bar still moves every interval.
            asked, status = time.monotonic(), batch["status"]
            batch = client.call("GET", f"/v1/batches/{batch_id}", params={"wait": POLL_SECONDS})
            if batch["status"] == status:  # a server without long polls answers at once
                time.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - asked)))


def cmd_submit(client: Client, args: argparse.Namespace) -> int:
    path = Path(args.file)
    endpoint = args.endpoint or _guess_endpoint(path)
    with open(path, "rb") as handle:
        file = client.call("POST", "/v1/files", files={"file": (path.name, handle)}, data={"purpose": "batch"})
    body: dict[str, Any] = {"input_file_id": file["id"], "endpoint": endpoint, "completion_window": "24h"}
    for name in ("batch_size", "batching", "max_tokens", "model", "priority"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    if args.truncate_prompts:
        body["truncate_prompts"] = True
    if not args.pack_by_length:
        body["pack_by_length"] = False
    if args.metadata:
        body["metadata"] = dict(pair.split("=", 1) for pair in args.metadata)
    if args.dry_run:
        return _print_estimate(client.call("POST", "/v1/batches", json={**body, "dry_run": True}))
    batch = client.call("POST", "/v1/batches", json=body)
    print(batch["id"])
    if batch["status"] == "failed":
        for error in batch["errors"]["data"]:
            print(f"  line {error.get('line')}: {error['message']}", file=sys.stderr)
        return 1
    if args.wait:
        batch = watch(client, batch["id"])
        print(_summary(batch))
        return 0 if batch["status"] == "completed" else 1
    return 0


def _print_estimate(estimate: dict[str, Any]) -> int:
    """A dry run's answer; exit status 1 when the batch would fail or lines would."""
    print(
        f"{estimate['lines']} lines, {estimate['prompt_tokens']} prompt tokens, "
        f"{estimate['requested_output_tokens']} output tokens at most, {estimate['failing_lines']} lines would fail"
    )
    eta = estimate["eta_seconds"]
    print(f"ETA {eta:.0f} s ({estimate['basis']})" if eta is not None else f"ETA unknown: {estimate['basis']}")
    for error in estimate["file_errors"]:
        print(f"  line {error.get('line')}: {error['message']} (the whole batch would fail)", file=sys.stderr)
    for line in estimate["failing"]:
        print(f"  line {line['line']} ({line['custom_id']}): {line['message']}", file=sys.stderr)
    return 1 if estimate["would_fail"] or estimate["failing_lines"] else 0


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    batch = client.call("GET", f"/v1/batches/{args.batch_id}")
    print(json.dumps(batch, indent=2) if args.json else _summary(batch))
    return 0


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    page = client.call("GET", "/v1/batches", params={"limit": args.limit})
    for batch in page["data"]:
        print(_summary(batch))
    return 0


def cmd_retry(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"truncate_prompts": args.truncate_prompts}
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    batch = client.call("POST", f"/v1/batches/{args.batch_id}/retry", json=body)
    print(batch["id"])
    if args.wait:
        batch = watch(client, batch["id"])
        print(_summary(batch))
        return 0 if batch["status"] == "completed" else 1
    return 0


def _quota(value: str) -> str:
    if value != "default" and not value.isdigit():
        raise argparse.ArgumentTypeError("a number of bytes, tokens or batches, or `default`")
    return value


def cmd_limits(client: Client, args: argparse.Namespace) -> int:
    """Your quotas and use (an admin: --owner's), or, with a value, an admin's override."""
    values = {name: getattr(args, name) for name in ("stored_bytes", "queued_prompt_tokens", "open_batches")}
    values = {name: (None if value == "default" else int(value)) for name, value in values.items() if value is not None}
    if values:
        limits = client.call("POST", "/v1/limits", json={"owner": args.owner, **values})
    else:
        limits = client.call("GET", "/v1/limits", params={"owner": args.owner} if args.owner else None)
    print(json.dumps(limits, indent=2))
    return 0


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    print(_summary(client.call("POST", f"/v1/batches/{args.batch_id}/cancel")))
    return 0


def follow(client: Client, batch_id: str, target: Path) -> int:
    """Appends the batch's finished lines to `target` as they come, until the batch ends;
    returns the number of lines written."""
    after = 0
    with open(target, "wb") as out:
        while True:
            _, headers = client.stream_into(f"/v1/batches/{batch_id}/results", out, {"after": after})
            out.flush()
            fresh, after = int(headers["X-Next-After"]) - after, int(headers["X-Next-After"])
            if headers["X-Complete"] == "true":
                return after
            if not fresh:
                time.sleep(POLL_SECONDS)


def cmd_download(client: Client, args: argparse.Namespace) -> int:
    if args.follow:
        lines = follow(client, args.batch_id, Path(args.output))
        print(f"{args.output}: {lines} lines")
        return 0
    if args.merged:
        size = client.download(f"/v1/batches/{args.batch_id}/merged_output", Path(args.output))
        print(f"{args.output}: {size} bytes")
        return 0
    batch = client.call("GET", f"/v1/batches/{args.batch_id}")
    if not batch["output_file_id"]:
        raise ApiError(f"{args.batch_id} has no output yet (status {batch['status']})")
    size = client.download(f"/v1/files/{batch['output_file_id']}/content", Path(args.output))
    print(f"{args.output}: {size} bytes")
    if args.errors and batch["error_file_id"]:
        size = client.download(f"/v1/files/{batch['error_file_id']}/content", Path(args.errors))
        print(f"{args.errors}: {size} bytes")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from app.core.database import Database
    from app.core.embedded_postgres import database_url
    from app.core.settings import get_settings
    from app.data.keys import create_key
    from app.data.records import Records

    url = database_url(get_settings())
    db = Database(url)
    try:
        records = Records(db)
        if args.keys_command == "create":
            key, secret = create_key(records, args.owner, admin=args.admin, name=args.name)
            print(secret)
            print(f"id {key.id}, owner {key.owner}{', admin' if key.is_admin else ''}", file=sys.stderr)
        else:
            if not records.revoke_key(args.key):
                raise ApiError(f"no active key {args.key}")
            print(f"revoked {args.key}")
    finally:
        db.dispose()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-batch", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("LLM_BATCH_URL", DEFAULT_URL), help="API base URL")
    parser.add_argument("--api-key", default=os.environ.get("LLM_BATCH_API_KEY"), help="or LLM_BATCH_API_KEY")
    sub = parser.add_subparsers(dest="command", required=True)

    submit = sub.add_parser("submit", help="upload a JSONL file and create a batch")
    submit.add_argument("file")
    submit.add_argument(
        "--endpoint",
        choices=list(ENDPOINTS),
        help="default: from the first line, as the upload check reads it (plain input lines: embeddings when "
        "they are embeddings inputs, else responses; give --endpoint for text input to a responses batch)",
    )
    submit.add_argument(
        "--batch-size", type=int, dest="batch_size", help="prompts per static batch (default: fitted to the engine)"
    )
    submit.add_argument(
        "--batching",
        choices=["overlapped", "strict"],
        help="overlapped (the default): static batches overlap in the engine; strict: one blocking generate each",
    )
    submit.add_argument("--max-tokens", type=int, dest="max_tokens", help="default for lines without one")
    submit.add_argument("--model")
    submit.add_argument("--priority", type=int)
    submit.add_argument("--metadata", nargs="*", metavar="KEY=VALUE")
    submit.add_argument("--wait", action="store_true", help="show progress until the batch ends")
    submit.add_argument(
        "--dry-run",
        action="store_true",
        dest="dry_run",
        help="check every line and count its tokens, print the estimate and ETA, queue nothing",
    )
    submit.add_argument(
        "--no-pack-by-length",
        action="store_false",
        dest="pack_by_length",
        help="run static batches of consecutive lines instead of packing lines of similar max_tokens together "
        "(the default; output stays in input order either way)",
    )
    submit.add_argument(
        "--truncate-prompts",
        action="store_true",
        dest="truncate_prompts",
        help="cut prompts too long for the context to fit instead of failing those lines",
    )
    submit.set_defaults(run=cmd_submit)

    status = sub.add_parser("status", help="one batch")
    status.add_argument("batch_id")
    status.add_argument("--json", action="store_true", help="the whole batch object")
    status.set_defaults(run=cmd_status)

    limits = sub.add_parser("limits", help="your quotas and use; an admin's --owner and overrides")
    limits.add_argument("--owner", help="another owner's (admins); required with an override")
    for name in ("stored-bytes", "queued-prompt-tokens", "open-batches"):
        limits.add_argument(
            f"--{name}", metavar="N|default", type=_quota, help=f"set the owner's {name} quota (admins)"
        )
    limits.set_defaults(run=cmd_limits)

    listing = sub.add_parser("list", help="your batches, newest first")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(run=cmd_list)

    cancel = sub.add_parser("cancel", help="stop a batch at its next batch boundary")
    cancel.add_argument("batch_id")
    cancel.set_defaults(run=cmd_cancel)

    retry = sub.add_parser("retry", help="run a finished batch's failed lines again as a child batch")
    retry.add_argument("batch_id")
    retry.add_argument("--max-tokens", type=int, dest="max_tokens", help="replaces each retried line's max_tokens")
    retry.add_argument(
        "--truncate-prompts", action="store_true", dest="truncate_prompts", help="cut prompts to fit the context"
    )
    retry.add_argument("--wait", action="store_true", help="show progress until the retry ends")
    retry.set_defaults(run=cmd_retry)

    download = sub.add_parser("download", help="save a batch's output (and error) file")
    download.add_argument("batch_id")
    download.add_argument("-o", "--output", required=True)
    download.add_argument("--errors", help="also save the error file here")
    how = download.add_mutually_exclusive_group()
    how.add_argument(
        "--follow",
        action="store_true",
        help="while the batch runs, write its finished lines (output and errors, in input order) as they come",
    )
    how.add_argument(
        "--merged", action="store_true", help="the output with the lines its retries answered filled in, in input order"
    )
    download.set_defaults(run=cmd_download)

    keys = sub.add_parser(
        "keys", help="create or revoke API keys (server side: DATABASE_URL, else the embedded database)"
    )
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="make a key and print it once")
    create.add_argument("--owner", required=True)
    create.add_argument("--admin", action="store_true")
    create.add_argument("--name", default="")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id or prefix")
    revoke.add_argument("key")

    doctor = sub.add_parser("doctor", help="check this host can run the service: GPU, model, database, storage")
    doctor.add_argument("--json", action="store_true", help="the results as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "keys":
            return cmd_keys(args)
        if args.command == "doctor":  # local, like keys: app.tools.doctor
            from app.tools.doctor import main as doctor

            return doctor(args.json)
        return int(args.run(Client(args.url, args.api_key), args))
    except (ApiError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
