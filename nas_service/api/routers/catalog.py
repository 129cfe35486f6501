"""``/v1/hypernetworks``: the hypernetwork this service scores with (tasks: ``tasks.py``)."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import ServiceDep
from ..schemas import HypernetworkResponse

router = APIRouter(tags=["catalog"])


@router.get("/hypernetworks", response_model=list[HypernetworkResponse])
def get_hypernetworks(service: ServiceDep) -> list[HypernetworkResponse]:
    """The loaded GHN: its task (and the registered tasks it was adapted to), version (SHA-256
    prefix of the checkpoint, and of its adaptation), device, config, training record, and the
    score it produces."""
    if service.scorer is None:
        return []
    service.scorer.refresh()
    return [HypernetworkResponse(**service.scorer.info())]
