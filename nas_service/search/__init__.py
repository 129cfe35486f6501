"""Search: strategies, the evaluation of candidates through the GHN with the architecture cache,
checkpoint files, the worker that runs search jobs from the database queue, and the adaptation
of the GHN to registered tasks that the same worker runs first (:mod:`.adaptation`).

::

    from nas_service.scoring import ArchitectureScorer
    from nas_service.search import CheckpointStore, Worker

    scorer = ArchitectureScorer.load(settings.ghn_path, device=settings.device)
    store = CheckpointStore(settings.checkpoint_dir)
    Worker.from_settings(settings, engine, scorer, store).run()

``docs/api.md`` describes the jobs as the API shows them; ``docs/storage.md`` the queue.
"""

from .adaptation import AdaptationRunner, AdaptationSettings
from .checkpoints import CHECKPOINT_FORMAT, CheckpointStore, StoredCheckpoint, checkpoint_metadata
from .evaluation import Evaluation, evaluate_architectures, score_and_store
from .strategies import (
    STRATEGIES,
    Outcome,
    Proposal,
    RandomSearch,
    RegularizedEvolution,
    SearchStrategy,
    candidate_seed,
    check_constraints,
    make_strategy,
)
from .worker import EXIT_WORKER_STUCK, Worker, WorkerHooks, default_worker_id

__all__ = [
    "CHECKPOINT_FORMAT",
    "EXIT_WORKER_STUCK",
    "AdaptationRunner",
    "AdaptationSettings",
    "STRATEGIES",
    "CheckpointStore",
    "Evaluation",
    "Outcome",
    "Proposal",
    "RandomSearch",
    "RegularizedEvolution",
    "SearchStrategy",
    "StoredCheckpoint",
    "Worker",
    "WorkerHooks",
    "candidate_seed",
    "check_constraints",
    "checkpoint_metadata",
    "default_worker_id",
    "evaluate_architectures",
    "make_strategy",
    "score_and_store",
]
