"""The processes of one GHN training run started by ``torchrun``: which rank this process is,
which device it computes on, and the two collectives a run needs.

``torchrun --nproc_per_node N -m nas_service train-ghn ...`` (with ``--nnodes`` and a rendezvous
endpoint across machines) starts N processes that train one GHN. Each takes its share of every
step's meta-batch (rank ``r`` of ``N`` the architectures ``r, r + N, ...``) and the same image
batch; :class:`GradientSum` then adds every rank's gradients, so the update is the one a single
process computes from the whole meta-batch (the loss is a sum over architectures, so the
gradients are summed, not averaged). Rank 0 alone reads and writes the run's folder and
validates; :func:`from_main` hands the others its starting state.

Guarantees: ranks hold identical GHN weights and optimizer moments at every step (they start
from rank 0's and apply the same summed gradients); a parameter no architecture of the step
used keeps no gradient on any rank, as in one process. Backend: ``nccl`` on GPUs (rank on
``cuda:{LOCAL_RANK}``), ``gloo`` on CPUs. A process not started by ``torchrun`` (or started with
one process) is a world of one and touches no process group.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in a training run: ``rank`` of ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that reads and writes the run's folder."""
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's part of a step's meta-batch: items ``rank, rank + world_size, ...``."""
        return list(items[self.rank::self.world_size])


def current_ranks() -> Ranks:
    """The ranks of the initialised process group, else a world of one."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size())


@contextmanager
def training_processes(device: str | torch.device | None = None
                       ) -> Iterator[tuple[Ranks, torch.device]]:
    """Joins the process group ``torchrun`` set up (its ``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK`` and rendezvous variables) for the duration of the block; yields this
    process's ranks and device. ``device`` is resolved as usual (:func:`resolve_device`); a
    CUDA device becomes ``cuda:{LOCAL_RANK}``, one GPU per process, and picks ``nccl``; a CPU
    picks ``gloo``."""
    from nas_service.ghn.checkpoint import resolve_device  # (torch-geometric: not for the rest)

    dev = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield Ranks(), dev
        return
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", device_id=dev)
    else:
        dist.init_process_group("gloo")
    try:
        yield current_ranks(), dev
    finally:
        dist.destroy_process_group()


def from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (pickled over the process group: keep tensors on the
    CPU, each rank moves them to its own device)."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class GradientSum:
    """Replaces every rank's gradients by their sum over the ranks, in one all-reduce.

    Which parameters have a gradient differs between ranks (a rank whose architectures have no
    bias or norm weight never runs the GHN's vector head): a parameter with a gradient on some
    rank gets the sum, zeros standing in for the others; one with a gradient on none keeps
    ``None``, as in one process, so the optimizer skips it (no weight decay, no moment decay).
    Which is which is agreed on the host (a ``gloo`` group of flags), so nothing waits for the
    device. Create it on every rank, in the same order: it creates that group."""

    def __init__(self) -> None:
        self._flags = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None

    def __call__(self, parameters: Sequence[torch.nn.Parameter], totals: torch.Tensor
                 ) -> torch.Tensor:
        """Sums the gradients of ``parameters`` in place; returns ``totals`` (any float32
        vector on the gradients' device, e.g. a step's loss) summed over the ranks as well."""
        used = torch.tensor([p.grad is not None for p in parameters], dtype=torch.int32)
        dist.all_reduce(used, group=self._flags)
        live = [p for p, u in zip(parameters, used.tolist(), strict=True) if u]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in live] + [totals.reshape(-1)])
        dist.all_reduce(flat)
        offset = 0
        for p in live:
            p.grad = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        return flat[offset:]
