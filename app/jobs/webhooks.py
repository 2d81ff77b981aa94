"""Webhook delivery: a sender thread in each API process takes due deliveries from the
outbox (`app.data.outbox`), POSTs them signed as OpenAI signs its webhooks (Standard
Webhooks), and records the answer: a 2xx is delivered, anything else is retried with
exponential backoff until the delivery is older than the max age.

State lives in Postgres only: a sender that dies mid-send loses nothing (its lease runs
out and any sender takes the delivery again), and several API processes never send the
same delivery at once. Delivery is at least once: a receiver deduplicates on the
`webhook-id` header, which is the event's id on every attempt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from app.core.backoff import Backoff
from app.core.settings import Settings
from app.data.outbox import ClaimedDelivery, Outbox
from app.data.webhook_endpoints import secret_key
from app.jobs.webhook_addresses import UnsafeWebhookUrl, check_webhook_url

log = logging.getLogger(__name__)

USER_AGENT = "llm-batch-webhooks/1"
MAX_ERROR_CHARS = 500  # of a failed answer's body, kept in last_error


def signature(secret: str, event_id: str, timestamp: int, body: str) -> str:
    """`v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")): Standard Webhooks, as
    `openai.OpenAI(webhook_secret=...).webhooks.unwrap` checks it."""
    digest = hmac.new(secret_key(secret), f"{event_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, event_id: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    """The headers of one attempt; the timestamp is the attempt's, so a retry is fresh."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, event_id, timestamp, body),
    }


class WebhookSender:
    """Claims due deliveries every `poll_seconds` (at once again while there were some) and
    sends up to `concurrency` at a time on a thread pool."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        poll_seconds: float,
        timeout_seconds: float,
        first_retry_seconds: float,
        max_retry_seconds: float,
        max_age_seconds: float,
        concurrency: int = 4,
        sender_id: str | None = None,
        allow_private_addresses: bool = False,
    ) -> None:
        self.outbox = outbox
        self.allow_private_addresses = allow_private_addresses
        self.sender_id = sender_id or f"api-{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self.poll_seconds = poll_seconds
        self.first_retry_seconds = first_retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self.max_age_seconds = max_age_seconds
        self.concurrency = concurrency
        # A send's connect, write and read each get the timeout; the lease outlasts them all.
        self.lease_seconds = 4 * timeout_seconds + 30
        self._client = httpx.Client(timeout=timeout_seconds, follow_redirects=False)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="webhook-send")
        self._in_flight = 0
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._poked = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)

    @classmethod
    def from_settings(cls, outbox: Outbox, settings: Settings) -> WebhookSender:
        return cls(
            outbox,
            poll_seconds=settings.webhook_poll_seconds,
            timeout_seconds=settings.webhook_timeout_seconds,
            first_retry_seconds=settings.webhook_first_retry_seconds,
            max_retry_seconds=settings.webhook_max_retry_seconds,
            max_age_seconds=settings.webhook_max_age_seconds,
            concurrency=settings.webhook_concurrency,
            allow_private_addresses=settings.webhook_allow_private_addresses,
        )

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        """Looks for due deliveries now instead of at the next poll."""
        self._poked.set()

    def stop(self) -> None:
        """Stops claiming and waits for the sends under way (each ends within its timeout)."""
        self._stop.set()
        self._poked.set()
        self._thread.join(timeout=self.poll_seconds + 5)
        self._pool.shutdown(wait=True)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                claimed = self.send_due()
            except Exception:  # the database may be briefly away; the next poll retries
                log.exception("claiming webhook deliveries failed")
                claimed = 0
            if not claimed:
                self._poked.wait(self.poll_seconds)
                self._poked.clear()

    def send_due(self) -> int:
        """Claims as many due deliveries as there are free send slots and starts sending them
        (waiting up to a poll for a slot when all are busy). Returns how many it claimed."""
        with self._lock:
            if self._in_flight >= self.concurrency:
                self._lock.wait(self.poll_seconds)
            free = self.concurrency - self._in_flight
            if free <= 0:
                return 0
            claimed = self.outbox.claim(self.sender_id, free, self.lease_seconds)
            self._in_flight += len(claimed)
        for delivery in claimed:
            self._pool.submit(self._send_and_release, delivery)
        return len(claimed)

    def _send_and_release(self, delivery: ClaimedDelivery) -> None:
        try:
            self.send(delivery)
        except Exception:  # its lease runs out and the delivery is tried again
            log.exception("webhook delivery %s failed unrecorded", delivery.id)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._lock.notify()

    def send(self, delivery: ClaimedDelivery) -> bool:
        """One attempt, recorded. Returns whether the endpoint took it."""
        status_code: int | None = None
        try:
            check_webhook_url(delivery.url, self.allow_private_addresses)  # DNS may have changed since
            headers = signed_headers(delivery.secret, delivery.event_id, delivery.payload)
            with self._client.stream("POST", delivery.url, content=delivery.payload.encode(), headers=headers) as r:
                status_code = r.status_code
                if r.is_success:
                    self.outbox.delivered(delivery.id, status_code)
                    log.info("webhook %s delivered to %s", delivery.event_id, delivery.url)
                    return True
                error = f"HTTP {status_code}: {_start_of(r)}"
        except (httpx.HTTPError, UnsafeWebhookUrl) as exc:
            error = f"{type(exc).__name__}: {exc}"
        delay = Backoff.after(delivery.attempts, self.first_retry_seconds, self.max_retry_seconds)
        outcome = self.outbox.retry(
            delivery,
            self.sender_id,
            status_code=status_code,
            error=error,
            delay_seconds=delay,
            max_age_seconds=self.max_age_seconds,
        )
        if outcome == "failed":
            log.warning(
                "webhook %s to %s given up after %d attempts: %s",
                delivery.event_id,
                delivery.url,
                delivery.attempts,
                error,
            )
        else:
            log.info(
                "webhook %s to %s attempt %d failed (%s); next in %.1fs",
                delivery.event_id,
                delivery.url,
                delivery.attempts,
                error,
                delay,
            )
        return False


def _start_of(response: httpx.Response) -> str:
    """The start of an answer's body, for the record; a huge body is not read."""
    chunk = b""
    for part in response.iter_bytes():
        chunk += part
        if len(chunk) >= MAX_ERROR_CHARS:
            break
    return chunk[:MAX_ERROR_CHARS].decode("utf-8", "replace")
