"""``/v1/tasks`` and ``/v1/hypernetworks``: what this service can score, and with what."""

from __future__ import annotations

from fastapi import APIRouter

from nas_service.data import DatasetError, get_task, list_tasks, resolve_root

from ..deps import ServiceDep
from ..schemas import HypernetworkResponse, TaskResponse

router = APIRouter(tags=["catalog"])


@router.get("/tasks", response_model=list[TaskResponse])
def get_tasks(service: ServiceDep) -> list[TaskResponse]:
    """Every known task; ``scored`` tells which ones a loaded hypernetwork scores."""
    tasks = []
    for name in list_tasks():
        spec = get_task(name)
        try:
            folder, _ = resolve_root(spec)
            available = folder.is_dir()
        except DatasetError:
            available = False
        tasks.append(TaskResponse(
            name=spec.name, input_shape=list(spec.input_shape), num_classes=spec.num_classes,
            class_names=list(spec.class_names), validation_images=spec.val_size,
            scored=service.scorer is not None and service.scorer.supports(spec.name),
            data_available=available))
    return tasks


@router.get("/hypernetworks", response_model=list[HypernetworkResponse])
def get_hypernetworks(service: ServiceDep) -> list[HypernetworkResponse]:
    """The loaded GHN: its task, version (SHA-256 prefix of the checkpoint), device, config,
    training record, and the score it produces."""
    if service.scorer is None:
        return []
    return [HypernetworkResponse(**service.scorer.info())]
