"""``/v1/tasks``: the tasks this service knows, and registering a new one by uploading a dataset.

``POST /v1/tasks`` takes ``multipart/form-data``: a ``name`` field, optionally ``num_classes``,
and one or more ``files`` (an ``.npz`` with ``x``/``y``; MNIST idx files; CIFAR-10 python
batches, or their ``.tar.gz``). The upload is decoded and checked
(:mod:`nas_service.data.uploads`, limits from the settings), stored under ``NAS_TASKS_DIR``
and recorded with a queued adaptation job (:mod:`nas_service.db.tasks`); a worker then adapts
the GHN to it (:mod:`nas_service.search.adaptation`). Once that job succeeded the task is
``scored``: ``POST /v1/architectures`` and search jobs accept its name.
"""

from __future__ import annotations

import shutil
import uuid

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine

from nas_service.data import (
    DatasetError,
    TaskSpec,
    UploadLimits,
    decode_upload,
    get_task,
    list_tasks,
    read_stored_task,
    register_task,
    resolve_root,
    store_task,
)
from nas_service.data.uploads import check_task_name, task_spec_for
from nas_service.db import RegisteredTask, read_session, tasks, write_session
from nas_service.search import AdaptationSettings
from nas_service.settings import Settings

from ..deps import ServiceDep, ServiceState
from ..errors import Problem, field_error, problem_responses
from ..forms import parse_form
from ..schemas import Adaptation, Progress, TaskResponse

router = APIRouter(prefix="/tasks", tags=["tasks"])

UPLOAD_PATH = "/v1/tasks"
"""The path whose request bodies may be as large as ``NAS_MAX_UPLOAD_BYTES``."""


def register_stored_tasks(engine: Engine) -> list[str]:
    """Make every registered task of the database known to this process by name (at start-up:
    request validation looks task names up). A task whose folder is gone is left out."""
    names = []
    with read_session(engine) as session:
        rows = [(row.name, row.path) for row in tasks.list_tasks(session)]
    for name, path in rows:
        try:
            register_task(read_stored_task(path))
            names.append(name)
        except DatasetError:
            continue
    return names


def upload_limits(settings: Settings) -> UploadLimits:
    return UploadLimits(max_bytes=max(settings.max_upload_bytes, 1) * 4,
                        max_images=settings.max_upload_images,
                        max_side=settings.max_task_image_side,
                        max_classes=settings.max_task_classes,
                        min_per_class=settings.min_task_images_per_class)


def adaptation_settings(settings: Settings) -> AdaptationSettings:
    return AdaptationSettings(steps=settings.adaptation_steps, beta=settings.adaptation_beta,
                              lr=settings.adaptation_lr,
                              probe_architectures=settings.adaptation_probe_architectures,
                              batch_graphs=settings.adaptation_batch_graphs,
                              batch_images=settings.adaptation_batch_images,
                              checkpoint_every=settings.adaptation_checkpoint_every,
                              max_flops=settings.adaptation_max_flops)


def _task_view(service: ServiceState, spec: TaskSpec,
               row: RegisteredTask | None) -> TaskResponse:
    try:
        folder, _ = resolve_root(spec)
        available = folder.is_dir()
    except DatasetError:
        available = False
    view = TaskResponse(
        name=spec.name, input_shape=list(spec.input_shape), num_classes=spec.num_classes,
        class_names=list(spec.class_names), validation_images=spec.val_size,
        scored=service.scorer is not None and service.scorer.supports(spec.name),
        data_available=available)
    if row is None:
        return view
    total = max(row.progress_total, 1)
    view.registered = True
    view.format, view.train_images, view.test_images = row.format, row.train_images, \
        row.test_images
    view.created_at = row.created_at
    view.adaptation = Adaptation(
        status=row.status.value, attempts=row.attempts, error=row.error, result=row.result,
        progress=Progress(done=row.progress_done, total=row.progress_total,
                          fraction=min(1.0, row.progress_done / total)),
        started_at=row.started_at, finished_at=row.finished_at)
    return view


def _row_spec(row: RegisteredTask) -> TaskSpec | None:
    try:
        return get_task(row.name)
    except DatasetError:
        pass
    try:
        return register_task(read_stored_task(row.path))
    except DatasetError:
        return None


@router.get("", response_model=list[TaskResponse])
def get_tasks(service: ServiceDep) -> list[TaskResponse]:
    """Every known task, built in and registered; ``scored`` tells which ones the loaded
    hypernetwork scores, ``adaptation`` how far a registered task's adaptation is."""
    if service.scorer is not None:
        service.scorer.refresh()
    with read_session(service.engine) as session:
        rows = {row.name: row for row in tasks.list_tasks(session)}
    views = []
    for row in rows.values():
        _row_spec(row)
    for name in list_tasks():
        views.append(_task_view(service, get_task(name), rows.get(name)))
    return views


@router.get("/{name}", response_model=TaskResponse, responses=problem_responses(404))
def get_registered_task(name: str, service: ServiceDep) -> TaskResponse:
    """One task, built in or registered, with its adaptation's status and progress."""
    if service.scorer is not None:
        service.scorer.refresh()
    with read_session(service.engine) as session:
        row = tasks.get_task(session, name[:128])
    spec = _row_spec(row) if row is not None else None
    if spec is None:
        try:
            spec = get_task(name)
        except DatasetError:
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise Problem(404, f"no task named {shown!r}", slug="not-found",
                          title="Task not found") from None
    return _task_view(service, spec, row)


def _invalid(location: str, message: str, field: str | None = None) -> Problem:
    return Problem(422, message, slug="invalid-request", title="Invalid request",
                   errors=[field_error(location, message, field=field)])


def _register(service: ServiceState, body: bytes, content_type: str | None) -> TaskResponse:
    settings = service.settings
    form = parse_form(body, content_type)
    unknown = sorted(set(form.fields) - {"name", "num_classes"})
    if unknown:
        raise _invalid(f"/body/{unknown[0]}", f"unknown field {unknown[0]!r}; the form takes "
                       "'name', 'num_classes' and 'files'", unknown[0])
    wrong = sorted({f for f, _, _ in form.files} - {"files"})
    if wrong:
        raise _invalid(f"/body/{wrong[0]}", f"files go in the 'files' field, not {wrong[0]!r}",
                       wrong[0])
    name = form.fields.get("name")
    if name is None:
        raise _invalid("/body/name", "the form needs a 'name' field", "name")
    try:
        check_task_name(name)
    except DatasetError as e:
        raise _invalid("/body/name", str(e), "name") from None
    num_classes = None
    if "num_classes" in form.fields:
        text = form.fields["num_classes"].strip()
        if not text.isdigit() or not 2 <= int(text) <= settings.max_task_classes:
            raise _invalid("/body/num_classes", f"num_classes must be an integer from 2 to "
                           f"{settings.max_task_classes}", "num_classes")
        num_classes = int(text)
    if not form.files:
        raise _invalid("/body/files", "the form holds no file in 'files'", "files")
    with read_session(service.engine) as session:
        if tasks.get_task(session, name) is not None:
            raise _exists(name)
    try:
        upload = decode_upload([(filename, data) for _, filename, data in form.files],
                               upload_limits(settings), num_classes=num_classes)
    except DatasetError as e:
        where = f"/body/files/{e.filename}" if e.filename else "/body/files"
        raise Problem(422, str(e), slug="invalid-dataset", title="Invalid dataset",
                      errors=[field_error(where, e.reason, field="files")]) from None
    assert settings.tasks_dir is not None
    final = settings.tasks_dir / name
    incoming = settings.tasks_dir / f".incoming-{uuid.uuid4().hex}"
    spec = task_spec_for(name, upload, final)
    try:
        train_images, test_images = store_task(
            TaskSpec(**{**vars(spec), "default_root": str(incoming)}), upload)
        size = sum(p.stat().st_size for p in incoming.iterdir())
        record = adaptation_settings(settings)
        with write_session(service.engine) as session:
            row = tasks.create_task(
                session, name=name, format=upload.format, input_shape=spec.input_shape,
                num_classes=spec.num_classes, class_names=spec.class_names,
                train_images=train_images, test_images=test_images,
                size_bytes=size, path=str(final), settings=record.record(),
                progress_total=record.steps)
            # The folder takes its final name inside the transaction: a failed rename rolls the
            # row back; a folder left by a registration whose commit failed has no row and is
            # replaced.
            if final.exists():
                shutil.rmtree(final)
            incoming.rename(final)
    except tasks.TaskExists:
        raise _exists(name) from None
    finally:
        if incoming.exists():
            shutil.rmtree(incoming, ignore_errors=True)
    stored = register_task(read_stored_task(final))
    if service.worker is not None:
        service.worker.wake()
    with read_session(service.engine) as session:
        row = tasks.get_task(session, name)
    return _task_view(service, stored, row)


def _exists(name: str) -> Problem:
    return Problem(409, f"a task named {name!r} is registered already", slug="task-exists",
                   title="Task exists", errors=[field_error("/body/name", "name taken",
                                                            field="name")])


@router.post(
    "", status_code=201, response_model=TaskResponse,
    summary="Register a task by uploading its dataset",
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["name", "files"], "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"},
            "num_classes": {"type": "integer", "minimum": 2},
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}},
    responses={201: {"description": "stored; its adaptation job is queued",
                     "headers": {"Location": {"schema": {"type": "string"}}}},
               **problem_responses(400, 409, 413, 415, 422)})
async def create_task(request: Request, response: Response,
                      service: ServiceDep) -> TaskResponse:
    """Decodes and checks the upload (shapes, dtypes, label range, class count, examples per
    class, image size, archive safety), stores it and queues the GHN's adaptation to it: follow
    ``adaptation.progress`` with ``GET /v1/tasks/{name}``."""
    body = await request.body()
    view = await run_in_threadpool(_register, service, body,
                                   request.headers.get("content-type"))
    response.headers["Location"] = f"/v1/tasks/{view.name}"
    return view

