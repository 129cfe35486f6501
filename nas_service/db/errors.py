"""The storage layer's errors: one base class, :class:`StorageError`, and one subclass per
situation a caller handles differently. Database driver errors (lost connection, disk full) are
not wrapped: they are SQLAlchemy's ``OperationalError`` and friends."""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error raised on purpose by :mod:`nas_service.db`."""


class SchemaError(StorageError):
    """The database's schema is not the one this version of the code expects: not migrated,
    migrated by an older version (run ``nas-service db upgrade``), or by a newer one."""


class IdempotencyConflict(StorageError):
    """An idempotency key was reused with a different request body. The API answers 409 (or
    422): the client must pick a new key for a new request."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used for job {job_id} with a "
                         "different request body")
        self.key = key
        self.job_id = job_id


class InvalidCursor(StorageError):
    """A pagination cursor that this listing did not produce (garbage, or from another order or
    listing). The API answers 400."""


class LeaseLost(StorageError):
    """The caller's lease on a job is gone: another worker claimed it after the lease expired,
    or the job was finished. The worker must stop and write nothing more for this job."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"lease on job {job_id} lost: another worker holds it, or it finished")
        self.job_id = job_id
