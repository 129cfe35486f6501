"""What scoring a graph costs, estimated before any tensor is allocated: admission control for
the API and the workers.

The scoring protocol (:mod:`nas_service.scoring.scorer`) runs, for one graph: a GHN prediction of
every parameter, the network built with them (``to_module``), recalibration on
``recalibration_batches`` training batches of ``recalibration_batch_size`` images in train mode,
an optional readout forward over ``readout_images``, and the evaluation over the validation
images in batches of ``eval_batch_size``; then the state is copied to the CPU and serialised to a
safetensors checkpoint. So::

    peak bytes  = SCORING_OVERHEAD_BYTES
                  + 4 x (PARAMETER_COPIES x parameters
                         + peak_elements x max(recalibration batch, readout batch, eval batch))
    MACs        = macs per sample x (recalibration images + readout images + eval images)

When the ranking head reads the gradient norm at initialisation (:mod:`~.trainability`), one
forward and backward pass over ``grad_norm_images`` training images of a freshly initialised
copy of the network follows the evaluation; the peak is then the larger of the above and::

    SCORING_OVERHEAD_BYTES + 4 x (PARAMETER_COPIES x parameters
                                  + (saved_elements + peak_elements) x grad_norm_images)

and the MACs grow by ``3 x macs per sample x grad_norm_images`` (forward and backward). Where
that peak passes the budget, the gradient is accumulated over smaller batches that fit it
(:func:`~nas_service.scoring.trainability.initial_grad_norm`; batch norm then normalises each
with its own statistics, so the value is an approximation of the protocol's),
with ``peak_elements`` the per-sample peak of one forward pass
(:func:`nas_service.graph.footprint.footprint`: live outputs plus the running node's output and
workspace; padding and adaptive pooling that grow the spatial size, and attention's token x token
scores, are in it). A network without batch norm has each convolution's and linear layer's output
normalised in a forward hook (:func:`nas_service.scoring.evaluation.normalize_activations`),
which holds two more outputs' worth (the centred output and the quotient): its layers get a
workspace of 2 outputs instead of 1; ``saved_elements`` is every output and workspace of the
pass, what autograd may keep for the backward pass. ``PARAMETER_COPIES`` counts the GHN's
predicted tensors and its decoder's tiles, the network's parameters, the CPU copy of the state
and the serialised checkpoint (the gradient pass's network and gradients fit within them).

A graph is refused (:class:`ScoringTooCostly`) when its peak bytes pass the memory budget at the
recalibration batch (which the protocol fixes: its statistics depend on it), or its MACs pass the
compute budget. Otherwise the evaluation runs in the largest batch up to the device's that fits
the budget: the batch size of an evaluation in eval mode does not change a network's outputs, so
a smaller batch changes the time, not the score.

A memory failure that happens anyway (the estimate is a model; other work shares the machine) is
recognised by :func:`is_memory_failure`: PyTorch raises ``RuntimeError`` ("can't allocate
memory", "CUDA out of memory"), Python ``MemoryError``.
"""

from __future__ import annotations

from dataclasses import dataclass

from nas_service.graph import ArchitectureGraph
from nas_service.graph.footprint import Footprint, footprint

from .protocol import DEFAULT_MAX_SCORING_BYTES, DEFAULT_MAX_SCORING_MACS
from .trainability import even_batch_size

BYTES_PER_ELEMENT = 4  # float32: the GHN predicts and the networks run in it
PARAMETER_COPIES = 6
"""Float32 copies of the parameters one scoring holds at its worst: the GHN's predicted tensors
and the decoder tiles they are cut from, the network's parameters, the CPU state and the
checkpoint's bytes (measured on dense graphs of 5-50 M parameters, ``bench/admission_bench.py``)."""
SCORING_OVERHEAD_BYTES = 160 * 1024 * 1024
"""What scoring any graph adds besides its batch-sized tensors: the allocator's arenas of the
threads that run it, oneDNN's set-up, primitive caches and per-thread scratchpads, the GHN's
graph features (``bench/admission_bench.py``: small networks grow a fresh process by up to
110 MiB beyond their tensors, a 1 M-parameter ResNet-like one by 135 MiB)."""

_MEMORY_FAILURES = ("can't allocate memory", "out of memory", "not enough memory",
                    "failed to allocate", "std::bad_alloc")


@dataclass(frozen=True)
class ScoringBudget:
    """What one scoring may cost: bytes of memory and multiply-accumulates."""

    max_bytes: int = DEFAULT_MAX_SCORING_BYTES
    max_macs: int = DEFAULT_MAX_SCORING_MACS


@dataclass(frozen=True)
class ScoringCost:
    """The estimate for one graph under one protocol."""

    peak_bytes: int
    """At the recalibration batch (or the largest batch the protocol fixes)."""
    largest_tensor_bytes: int
    macs: int
    eval_batch_size: int
    """The evaluation's batch: the device's, or less where the budget asks for less."""
    footprint: Footprint
    grad_norm_batch_size: int = 0
    """Images per forward and backward pass of the gradient norm at initialisation: all of
    them, or fewer (an even number; gradients accumulated) where the budget asks for fewer; 0
    without one."""
    train_batch_size: int = 0
    """Images per forward and backward pass of a short training: its batch, or fewer (an even
    number; gradients accumulated) where the budget asks for fewer; 0 without one."""

    def to_dict(self) -> dict[str, int | str]:
        return {"peak_bytes": self.peak_bytes, "largest_tensor_bytes": self.largest_tensor_bytes,
                "macs": self.macs, "eval_batch_size": self.eval_batch_size,
                "peak_node": self.footprint.peak_node}


class ScoringTooCostly(ValueError):
    """Scoring this graph would pass a budget; ``resource`` is ``"memory"`` or ``"compute"``."""

    def __init__(self, resource: str, estimate: int, limit: int, detail: str) -> None:
        super().__init__(detail)
        self.resource = resource
        self.estimate = estimate
        self.limit = limit


@dataclass(frozen=True)
class _Bytes:
    """What a graph's passes hold: ``fixed`` whatever the batch, then per image of a forward
    pass and of a forward and backward pass."""

    footprint: Footprint
    fixed: int
    forward_per_image: int
    backward_per_image: int

    @classmethod
    def of(cls, graph: ArchitectureGraph) -> _Bytes:
        has_batch_norm = any(n.op == "batch_norm" for n in graph.nodes)
        fp = footprint(graph, layer_workspace=1 if has_batch_norm else 2)
        return cls(fp, SCORING_OVERHEAD_BYTES + BYTES_PER_ELEMENT * PARAMETER_COPIES
                   * fp.parameters, BYTES_PER_ELEMENT * fp.peak_elements,
                   BYTES_PER_ELEMENT * (fp.saved_elements + fp.peak_elements))

    def forward_batch(self, wanted: int, budget: ScoringBudget | None) -> int:
        """A batch of forward passes in eval mode, ``wanted`` or the most that fit ``budget``
        (at least 1): its size does not change a network's outputs."""
        if budget is None or self.fixed + self.forward_per_image * wanted <= budget.max_bytes:
            return wanted
        return max(1, min(wanted, (budget.max_bytes - self.fixed)
                          // max(self.forward_per_image, 1)))

    def backward_batch(self, wanted: int, budget: ScoringBudget | None) -> int:
        """A batch of forward and backward passes, ``wanted`` or, where that passes ``budget``,
        the most that fit as an even number of at least 2 (gradients accumulated over such
        batches; :func:`~.trainability.even_batch_size` says why even)."""
        if (budget is None or not wanted
                or self.fixed + self.backward_per_image * wanted <= budget.max_bytes):
            return wanted
        fits = (budget.max_bytes - self.fixed) // max(self.backward_per_image, 1)
        return even_batch_size(min(wanted, fits))  # what the passes run


def scoring_cost(graph: ArchitectureGraph, *, eval_images: int, eval_batch_size: int,
                 recalibration_batches: int, recalibration_batch_size: int,
                 readout_images: int = 0, readout_batch_size: int = 0,
                 grad_norm_images: int = 0,
                 budget: ScoringBudget | None = None) -> ScoringCost:
    """The cost of scoring ``graph`` this way (``grad_norm_images``: the images of the gradient
    norm at initialisation, 0 without one); with ``budget``, the evaluation's batch and the
    gradient's are cut to what fits it (never below 1)."""
    b = _Bytes.of(graph)
    fixed_batch = max(recalibration_batch_size, min(readout_batch_size, readout_images))
    batch = b.forward_batch(eval_batch_size, budget)
    images = recalibration_batches * recalibration_batch_size + readout_images + eval_images
    gradient_batch = b.backward_batch(grad_norm_images, budget)
    return ScoringCost(peak_bytes=b.fixed + max(b.forward_per_image * max(fixed_batch, batch),
                                                b.backward_per_image * gradient_batch),
                       largest_tensor_bytes=BYTES_PER_ELEMENT * b.footprint.largest_elements
                       * max(fixed_batch, batch, gradient_batch),
                       macs=b.footprint.macs * (images + 3 * grad_norm_images),
                       eval_batch_size=batch, footprint=b.footprint,
                       grad_norm_batch_size=gradient_batch)


def short_training_cost(graph: ArchitectureGraph, *, steps: int, batch_size: int,
                        eval_images: int, eval_batch_size: int, recalibration_images: int,
                        recalibration_batch_size: int,
                        budget: ScoringBudget | None = None) -> ScoringCost:
    """The cost of a short training of ``graph`` (:mod:`~.short_training`): ``steps`` forward
    and backward passes over batches of ``batch_size``, the recalibration, then the evaluation.
    With ``budget``, the evaluation runs in the largest batch up to ``eval_batch_size`` that
    fits it, and a training batch whose backward pass does not fit is accumulated over the
    largest even number of images that does (``train_batch_size``; at least 2). The network,
    its gradients and the optimiser's momentum are three copies of the parameters, within
    :data:`PARAMETER_COPIES`."""
    b = _Bytes.of(graph)
    batch = b.forward_batch(eval_batch_size, budget)
    train_batch = b.backward_batch(batch_size, budget)
    return ScoringCost(
        peak_bytes=b.fixed + max(b.backward_per_image * train_batch,
                                 b.forward_per_image * max(batch, recalibration_batch_size)),
        largest_tensor_bytes=BYTES_PER_ELEMENT * b.footprint.largest_elements
        * max(train_batch, batch, recalibration_batch_size),
        macs=b.footprint.macs * (3 * steps * batch_size + recalibration_images + eval_images),
        eval_batch_size=batch, footprint=b.footprint, train_batch_size=train_batch)


def check_affordable(cost: ScoringCost, budget: ScoringBudget, what: str = "scoring") -> None:
    """Raises :class:`ScoringTooCostly` when ``cost`` passes ``budget``; ``what`` names the work
    in the message (``scoring``, ``short training``)."""
    if cost.peak_bytes > budget.max_bytes:
        raise ScoringTooCostly(
            "memory", cost.peak_bytes, budget.max_bytes,
            f"{what} this graph needs an estimated {_mib(cost.peak_bytes)} of memory "
            f"(largest tensor {_mib(cost.largest_tensor_bytes)}, peak at node "
            f"{cost.footprint.peak_node!r}); the limit is {_mib(budget.max_bytes)}")
    if cost.macs > budget.max_macs:
        raise ScoringTooCostly(
            "compute", cost.macs, budget.max_macs,
            f"{what} this graph needs an estimated {cost.macs:,} multiply-accumulates "
            f"({cost.footprint.macs:,} per image); the limit is {budget.max_macs:,}")


def is_memory_failure(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed (PyTorch's ``RuntimeError`` on CPU or
    CUDA, ``torch.OutOfMemoryError``, Python's ``MemoryError``)."""
    if isinstance(error, MemoryError):
        return True
    if not isinstance(error, RuntimeError):
        return False
    message = str(error).lower()
    return type(error).__name__ == "OutOfMemoryError" or any(m in message
                                                               for m in _MEMORY_FAILURES)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"
