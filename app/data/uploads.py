"""Uploads (OpenAI's Uploads API): every statement that creates one, adds a part, ends it,
or finds the ended ones whose parts are still in storage.

A part is recorded only while its upload is pending, with the upload's row locked, so a
part that finishes after a cancel, an expiry or a completion is refused (and its object
removed by the caller); completion adds the file and ends the upload in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.core.database import Database
from app.core.errors import Conflict, InvalidRequest, NotFound
from app.data.ids import new_id, now
from app.data.models import FileRecord, Upload, UploadPart, UploadStatus

MAX_UPLOADS_CLEANED_PER_SWEEP = 100  # the rest wait for the next sweep
MAX_PARTS_PER_UPLOAD = 10_000  # S3's limit on the parts of one multipart upload, for the final join


def shown_status(upload: Upload, at: datetime | None = None) -> str:
    """A pending upload past its expiry is `expired` even before a sweep records it."""
    if upload.status == UploadStatus.PENDING and upload.expires_at <= (at or now()):
        return UploadStatus.EXPIRED
    return upload.status


class Uploads:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        *,
        owner: str,
        filename: str,
        purpose: str,
        mime_type: str,
        size: int,
        file_expires_after_seconds: int | None,
        expires_in_seconds: float,
    ) -> Upload:
        created = now()
        upload = Upload(
            id=new_id("upload_"),
            owner=owner,
            filename=filename,
            purpose=purpose,
            mime_type=mime_type,
            bytes=size,
            status=UploadStatus.PENDING,
            file_expires_after_seconds=file_expires_after_seconds,
            created_at=created,
            expires_at=created + timedelta(seconds=expires_in_seconds),
        )
        with self.db.session() as session:
            session.add(upload)
        return upload

    def get(self, upload_id: str, scope: str | None) -> Upload:
        """An upload; another owner's is "not found", as for files."""
        with self.db.session() as session:
            return _get(session, upload_id, scope)

    def room(self, upload_id: str, scope: str | None, slack: int) -> int:
        """The bytes a new part of a pending upload may hold: its declared `bytes` plus
        `slack`, less what its parts hold already; a 400 naming `bytes` when that is nothing."""
        upload = self.pending(upload_id, scope)
        with self.db.session() as session:
            stored = session.scalar(
                select(func.coalesce(func.sum(UploadPart.bytes), 0)).where(UploadPart.upload_id == upload_id)
            )
        room = upload.bytes + slack - int(stored or 0)
        if room <= 0:
            raise over_declared_size(upload, int(stored or 0), slack)
        return room

    def pending(self, upload_id: str, scope: str | None) -> Upload:
        """An upload that still takes parts; anything else is a 409 naming its status."""
        upload = self.get(upload_id, scope)
        _ensure_pending(upload)
        return upload

    def add_part(self, upload_id: str, part_id: str, size: int, slack: int = 0) -> UploadPart:
        """Records a stored part; refused (Conflict) once the upload is no longer pending, and
        (a 400 naming `bytes`) when the upload's parts would hold more than its declared
        `bytes` plus `slack`: checked under the upload's lock, so parallel parts cannot pass it."""
        with self.db.session() as session:
            upload = _get(session, upload_id, None, lock=True)
            _ensure_pending(upload)
            count, stored = session.execute(
                select(func.count(), func.coalesce(func.sum(UploadPart.bytes), 0)).where(
                    UploadPart.upload_id == upload_id
                )
            ).one()
            if count >= MAX_PARTS_PER_UPLOAD:
                raise InvalidRequest(
                    f"An upload takes at most {MAX_PARTS_PER_UPLOAD} parts.", param="data", code="too_many_parts"
                )
            if stored + size > upload.bytes + slack:
                raise over_declared_size(upload, stored, slack)
            part = UploadPart(id=part_id, upload_id=upload_id, bytes=size, created_at=now())
            session.add(part)
        return part

    def named_parts(self, upload_id: str, part_ids: Sequence[str]) -> list[UploadPart]:
        """The parts `part_ids` names, in that order: each once, each of this upload."""
        if not part_ids:
            raise InvalidRequest("part_ids: name at least one part.", param="part_ids", code="invalid_value")
        if len(set(part_ids)) != len(part_ids):
            raise InvalidRequest("part_ids: a part is named twice.", param="part_ids", code="invalid_value")
        with self.db.session() as session:
            found = {
                p.id: p
                for p in session.scalars(
                    select(UploadPart).where(UploadPart.upload_id == upload_id, UploadPart.id.in_(part_ids))
                )
            }
        if missing := [p for p in part_ids if p not in found]:
            raise InvalidRequest(
                f"part_ids: no part {missing[0]!r} in upload {upload_id}.", param="part_ids", code="invalid_value"
            )
        return [found[p] for p in part_ids]

    def complete(self, upload_id: str, file: FileRecord) -> Upload:
        """Adds the joined file and ends the upload `completed`, in one transaction;
        Conflict if it ended meanwhile (the caller removes the file's object)."""
        with self.db.session() as session:
            upload = _get(session, upload_id, None, lock=True)
            _ensure_pending(upload)
            session.add(file)
            session.flush()  # the file row first: the upload refers to it
            upload.status, upload.file_id = UploadStatus.COMPLETED, file.id
            return upload

    def cancel(self, upload_id: str, scope: str | None) -> Upload:
        """Ends a pending upload `cancelled` (again: no change); a completed one is a 409."""
        with self.db.session() as session:
            upload = _get(session, upload_id, scope, lock=True)
            if upload.status == UploadStatus.CANCELLED:
                return upload
            _ensure_pending(upload)
            upload.status = UploadStatus.CANCELLED
            return upload

    def file_of(self, upload: Upload) -> FileRecord | None:
        with self.db.session() as session:
            return session.get(FileRecord, upload.file_id) if upload.file_id else None

    def expire_due(self) -> list[str]:
        """Pending uploads past their expiry become `expired`; returns their ids."""
        with self.db.session() as session:
            ids = session.scalars(
                update(Upload)
                .where(Upload.status == UploadStatus.PENDING, Upload.expires_at <= func.now())
                .values(status=UploadStatus.EXPIRED)
                .returning(Upload.id)
            )
            return list(ids)

    def mark_parts_removed(self, upload_id: str) -> None:
        with self.db.session() as session:
            session.execute(update(Upload).where(Upload.id == upload_id).values(parts_removed_at=func.now()))

    def remove_ended_parts(
        self, remove: Callable[[str], bool], limit: int = MAX_UPLOADS_CLEANED_PER_SWEEP
    ) -> list[str]:
        """Locks up to `limit` ended uploads whose parts are still stored (SKIP LOCKED: several
        sweepers take different ones), calls `remove` on each id (it deletes the parts and
        says whether it could) and marks those done. Returns their ids."""
        with self.db.session() as session:
            ids = list(
                session.scalars(
                    select(Upload.id)
                    .where(Upload.status != UploadStatus.PENDING, Upload.parts_removed_at.is_(None))
                    .order_by(Upload.created_at)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            )
            removed = [upload_id for upload_id in ids if remove(upload_id)]
            if removed:
                session.execute(update(Upload).where(Upload.id.in_(removed)).values(parts_removed_at=func.now()))
            return removed


def _get(session: Session, upload_id: str, scope: str | None, *, lock: bool = False) -> Upload:
    upload = session.get(Upload, upload_id, with_for_update=lock)
    if upload is None or (scope is not None and upload.owner != scope):
        raise NotFound("upload", upload_id)
    return upload


def _ensure_pending(upload: Upload) -> None:
    status = shown_status(upload)
    if status != UploadStatus.PENDING:
        raise Conflict(
            f"Upload {upload.id} is {status}; it takes no more parts.", param="upload_id", code=f"upload_{status}"
        )


def over_declared_size(upload: Upload, stored: int, slack: int) -> InvalidRequest:
    return InvalidRequest(
        f"This upload declared {upload.bytes} bytes; its parts hold {stored} and may hold at most "
        f"{upload.bytes + slack} (one part's slack, to send a failed part again). Complete it with the parts "
        "you have, or cancel it and create one with the right `bytes`.",
        param="bytes",
        code="upload_too_large",
    )
