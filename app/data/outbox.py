"""The webhook outbox: the statements that write and move `webhook_deliveries`.

`record_event` runs inside the transaction that ends a job (`app.data.queue.JobQueue`),
so the event exists exactly when the status change does. `Outbox` is the sender's side
(`app.jobs.webhooks.WebhookSender`): claim due deliveries with a lease, then record
what the endpoint answered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.core.database import Database
from app.data.ids import new_id
from app.data.models import Job, JobStatus

# A job's terminal status -> the event OpenAI sends for it.
EVENT_TYPES = {
    JobStatus.COMPLETED: "batch.completed",
    JobStatus.FAILED: "batch.failed",
    JobStatus.CANCELLED: "batch.cancelled",
    JobStatus.EXPIRED: "batch.expired",
}
BATCH_EVENT_TYPES = tuple(EVENT_TYPES.values())

INSERT_DELIVERIES_SQL = text(
    """
    -- One delivery per live endpoint of the job's owner that takes this event type. The
    -- lock (the one the foreign key takes anyway) makes a concurrent delete of an endpoint
    -- wait, or, once it has committed, leave that endpoint out.
    INSERT INTO webhook_deliveries
        (event_id, event_type, job_id, endpoint_id, payload, status, attempts, next_attempt_at, created_at)
    SELECT :event_id, :event_type, :job_id, e.id, :payload, 'pending', 0, now(), now()
    FROM webhook_endpoints e
    WHERE e.owner = :owner AND e.deleted_at IS NULL
      AND e.event_types @> CAST(:wanted AS jsonb)
    FOR KEY SHARE OF e
    """
)

CLAIM_DELIVERIES_SQL = text(
    """
    WITH due AS (
        -- Pending deliveries whose time has come: a retry that is due, or one whose
        -- sender's lease ran out (it died mid-send). SKIP LOCKED: several API processes
        -- claim at once without waiting on each other or taking the same row.
        SELECT d.id
        FROM webhook_deliveries d
        WHERE d.status = 'pending' AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at
        LIMIT :limit
        FOR UPDATE OF d SKIP LOCKED
    )
    -- Take the lease: the row is not due again until the send has had its time.
    UPDATE webhook_deliveries d
    SET attempts = d.attempts + 1, sender_id = :sender_id,
        next_attempt_at = now() + make_interval(secs => :lease_seconds)
    FROM due, webhook_endpoints e
    WHERE d.id = due.id AND e.id = d.endpoint_id
    RETURNING d.id, d.event_id, d.payload, d.attempts, e.url, e.secret
    """
)

DELIVERED_SQL = text(
    """
    -- A 2xx counts whoever sent it (at least once: a late sender's success is a success).
    UPDATE webhook_deliveries
    SET status = 'delivered', delivered_at = now(), last_status_code = :status_code, last_error = NULL
    WHERE id = :id AND status = 'pending'
    """
)

RETRY_SQL = text(
    """
    -- Only the holder of this attempt reschedules it (else another sender took it over).
    -- Past the max age, the delivery is given up instead.
    UPDATE webhook_deliveries
    SET last_status_code = :status_code, last_error = :error,
        next_attempt_at = now() + make_interval(secs => :delay_seconds),
        status = CASE WHEN now() + make_interval(secs => :delay_seconds)
                           > created_at + make_interval(secs => :max_age_seconds)
                      THEN 'failed' ELSE 'pending' END,
        failed_at = CASE WHEN now() + make_interval(secs => :delay_seconds)
                              > created_at + make_interval(secs => :max_age_seconds)
                         THEN now() END
    WHERE id = :id AND status = 'pending' AND sender_id = :sender_id AND attempts = :attempts
    RETURNING status
    """
)


def event_payload(event_id: str, event_type: str, job_id: str, at: datetime) -> str:
    """The event in OpenAI's shape, as the exact text that is signed and sent."""
    event = {
        "id": event_id,
        "object": "event",
        "created_at": int(at.timestamp()),
        "type": event_type,
        "data": {"id": job_id},
    }
    return json.dumps(event, separators=(",", ":"))


def record_event(session: Session, job: Job, at: datetime) -> str:
    """Queues the event for the job's terminal status to each of its owner's endpoints, in
    the caller's transaction. Returns the event id (also when no endpoint takes it)."""
    event_type = EVENT_TYPES[JobStatus(job.status)]
    event_id = new_id("evt_")
    session.execute(
        INSERT_DELIVERIES_SQL,
        {
            "event_id": event_id,
            "event_type": event_type,
            "wanted": json.dumps([event_type]),
            "job_id": job.id,
            "owner": job.owner,
            "payload": event_payload(event_id, event_type, job.id, at),
        },
    )
    return event_id


@dataclass(frozen=True)
class ClaimedDelivery:
    id: int
    event_id: str
    payload: str
    attempts: int  # this attempt's number, from 1
    url: str
    secret: str


class Outbox:
    """The sender's statements: claim, then delivered or retry (or give up)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def claim(self, sender_id: str, limit: int, lease_seconds: float) -> list[ClaimedDelivery]:
        with self.db.engine.begin() as conn:
            rows = conn.execute(
                CLAIM_DELIVERIES_SQL, {"sender_id": sender_id, "limit": limit, "lease_seconds": lease_seconds}
            ).all()
        return [ClaimedDelivery(**row._asdict()) for row in rows]

    def delivered(self, delivery_id: int, status_code: int) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(DELIVERED_SQL, {"id": delivery_id, "status_code": status_code})

    def retry(
        self,
        delivery: ClaimedDelivery,
        sender_id: str,
        *,
        status_code: int | None,
        error: str,
        delay_seconds: float,
        max_age_seconds: float,
    ) -> str | None:
        """Schedules the next attempt, or gives up past the max age. Returns the delivery's
        status, or None when this sender no longer held it."""
        with self.db.engine.begin() as conn:
            return conn.execute(
                RETRY_SQL,
                {
                    "id": delivery.id,
                    "sender_id": sender_id,
                    "attempts": delivery.attempts,
                    "status_code": status_code,
                    "error": error,
                    "delay_seconds": delay_seconds,
                    "max_age_seconds": max_age_seconds,
                },
            ).scalar_one_or_none()
