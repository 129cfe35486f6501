"""The service's storage: SQLAlchemy models, engines and sessions, migrations, and the queries the
API and the workers make (the work queue).

::

    from nas_service.db import make_engine, migrate, queue, write_session

    migrate.upgrade(url)                      # nas-service db upgrade
    engine = make_engine(url)
    migrate.check_schema(engine)              # at API / worker start-up
    with write_session(engine) as session:
        job, created = queue.create_job(session, space="cells", task="fashion-mnist", ...)
    claimed = queue.claim_next_job(engine, worker_id, lease_seconds=30)

:mod:`nas_service.db.queue` states what is atomic and what may race; ``docs/storage.md``
describes the tables and the protocol. The ML core never imports this package.
"""

from nas_service.db import migrate, queue
from nas_service.db.clock import UTCDateTime, db_now
from nas_service.db.engine import make_engine, read_session, session_factory, write_session
from nas_service.db.errors import (
    IdempotencyConflict,
    InvalidCursor,
    LeaseLost,
    SchemaError,
    StorageError,
)
from nas_service.db.models import (
    Architecture,
    Base,
    Candidate,
    CandidateStatus,
    Checkpoint,
    JobEvent,
    JobStatus,
    SearchJob,
    SearchStrategy,
)

__all__ = [
    "Architecture",
    "Base",
    "Candidate",
    "CandidateStatus",
    "Checkpoint",
    "IdempotencyConflict",
    "InvalidCursor",
    "JobEvent",
    "JobStatus",
    "LeaseLost",
    "SchemaError",
    "SearchJob",
    "SearchStrategy",
    "StorageError",
    "UTCDateTime",
    "db_now",
    "make_engine",
    "migrate",
    "queue",
    "read_session",
    "session_factory",
    "write_session",
]
