"""The service's storage, the one package that talks to the database: SQLAlchemy models,
engines and sessions, migrations, and the queries the API and the workers make.

- :mod:`~nas_service.db.queue`: the work queue, the lease protocol of search jobs (create,
  cancel, claim, heartbeat, record a candidate, finish, release);
- :mod:`~nas_service.db.listings`: reading jobs, candidates and events, in pages with keyset
  cursors;
- :mod:`~nas_service.db.catalog`: the architectures scored per GHN version, and their
  checkpoint files;
- :mod:`~nas_service.db.tasks`: registered (uploaded) tasks and the lease protocol of the jobs
  that adapt the GHN to them;
- :mod:`~nas_service.db.storable`: what may be written at all, checked on every statement
  before it is sent (:class:`UnstorableValue`).

::

    from nas_service.db import listings, make_engine, migrate, queue, read_session, write_session

    migrate.upgrade(url)                      # nas-service db upgrade
    engine = make_engine(url)
    migrate.check_schema(engine)              # at API / worker start-up
    with write_session(engine) as session:
        job, created = queue.create_job(session, space="cells", task="fashion-mnist", ...)
    claimed = queue.claim_next_job(engine, worker_id, lease_seconds=30)
    with read_session(engine) as session:
        page = listings.list_candidates(session, claimed.job_id, order_by="score")

Each of those modules states what is atomic and what may race; ``docs/storage.md`` describes the
tables and the protocol. The ML core never imports this package.
"""

from nas_service.db import catalog, listings, migrate, queue, tasks
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
    RegisteredTask,
    SearchJob,
    SearchStrategy,
)
from nas_service.db.storable import UnstorableValue

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
    "RegisteredTask",
    "SchemaError",
    "SearchJob",
    "SearchStrategy",
    "StorageError",
    "UTCDateTime",
    "UnstorableValue",
    "catalog",
    "db_now",
    "listings",
    "make_engine",
    "migrate",
    "queue",
    "read_session",
    "session_factory",
    "tasks",
    "write_session",
]
