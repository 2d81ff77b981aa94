"""What an owner uses of what the quotas bound, and an admin's overrides: one read each."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert

from app.core.database import Database
from app.data.models import OwnerLimit

# Bytes kept in storage for the owner: live files (inputs, outputs, error files) and the
# parts of uploads whose parts are not yet removed.
STORED_BYTES_SQL = text(
    """
    SELECT (SELECT coalesce(sum(bytes), 0) FROM files WHERE owner = :owner AND deleted_at IS NULL)
         + (SELECT coalesce(sum(p.bytes), 0) FROM upload_parts p JOIN uploads u ON u.id = p.upload_id
            WHERE u.owner = :owner AND u.parts_removed_at IS NULL)
    """
)
# Batches not yet ended.
OPEN_BATCHES_SQL = text(
    "SELECT count(*) FROM jobs WHERE owner = :owner"
    " AND status IN ('validating', 'queued', 'in_progress', 'finalizing', 'cancelling', 'expiring')"
)
# Prompt tokens queued per model: each queued or running batch's count (its estimate's, else
# a quarter of its file's bytes until the estimate is in), for the lines not yet done.
QUEUED_TOKENS_SQL = text(
    """
    SELECT j.model, coalesce(sum(
        coalesce((j.estimate ->> 'prompt_tokens')::bigint, f.bytes / 4)
        * greatest(j.request_total - j.request_completed - j.request_failed, 0) / greatest(j.request_total, 1)
    ), 0)::bigint
    FROM jobs j JOIN files f ON f.id = j.input_file_id
    WHERE j.owner = :owner AND j.status IN ('queued', 'in_progress')
    GROUP BY j.model
    """
)


@dataclass(frozen=True)
class OwnerUse:
    stored_bytes: int
    open_batches: int
    queued_prompt_tokens: dict[str, int] = field(default_factory=dict)  # by model


class Quotas:
    def __init__(self, db: Database) -> None:
        self.db = db

    def use(self, owner: str) -> OwnerUse:
        with self.db.engine.connect() as conn:
            params = {"owner": owner}
            stored = int(conn.execute(STORED_BYTES_SQL, params).scalar_one())
            batches = int(conn.execute(OPEN_BATCHES_SQL, params).scalar_one())
            tokens = {model: int(count) for model, count in conn.execute(QUEUED_TOKENS_SQL, params).all()}
        return OwnerUse(stored, batches, tokens)

    def owners(self, limit: int = 200) -> list[str]:
        """Owners with a live key or stored files, by name."""
        statement = text(
            "SELECT owner FROM api_keys WHERE revoked_at IS NULL UNION "
            "SELECT owner FROM files WHERE deleted_at IS NULL ORDER BY 1 LIMIT :limit"
        )
        with self.db.engine.connect() as conn:
            return [row[0] for row in conn.execute(statement, {"limit": limit}).all()]

    def override(self, owner: str) -> OwnerLimit | None:
        with self.db.session() as session:
            return session.get(OwnerLimit, owner)

    def set_override(self, owner: str, values: dict[str, int | None]) -> OwnerLimit:
        """Sets the fields given (None: back to the default); the others stay."""
        with self.db.session() as session:
            row = {"owner": owner, **values}
            statement = insert(OwnerLimit).values(row)
            session.execute(
                statement.on_conflict_do_update(index_elements=["owner"], set_={**values, "updated_at": text("now()")})
            )
        found = self.override(owner)
        assert found is not None
        return found
