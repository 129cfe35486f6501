"""Continual-learning task sequences built from an image-classification task of
:mod:`nas_service.data`: Split (disjoint class pairs, each relabelled ``0..k−1``) and Permuted
(the whole task under fixed, seeded pixel permutations).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from nas_service.data import TaskData

from .errors import ContinualError

__all__ = ["ContinualTask", "permuted_tasks", "pixel_permutations", "split_tasks"]


@dataclass(frozen=True, eq=False)
class ContinualTask:
    """One task of a sequence, held in memory.

    ``train_x``/``test_x`` are normalised float images ``(N, C, H, W)`` (shared between the
    tasks of a permuted sequence: the permutation is applied per batch, not stored);
    ``train_y``/``test_y`` int64 labels in ``[0, classes)``. ``original_classes[k]`` is the
    label of the source task that local label ``k`` stands for.
    """

    name: str
    classes: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    original_classes: tuple[int, ...]
    permutation: torch.Tensor | None = None  # (C·H·W,) pixel order of the flattened image

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C, H, W)`` as this task presents it (permuted, when it is)."""
        if self.permutation is None:
            return x
        return x.flatten(1)[:, self.permutation].view_as(x)

    def sample(self, batch_size: int, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch drawn uniformly with replacement: ``(B, C, H, W)``, ``(B,)``."""
        idx = torch.randint(len(self.train_y), (batch_size,), generator=generator)
        return self.inputs(self.train_x[idx]), self.train_y[idx]

    def test_batches(self, batch_size: int = 1000
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The test split in order, as the task presents it."""
        for start in range(0, len(self.test_y), batch_size):
            end = start + batch_size
            yield self.inputs(self.test_x[start:end]), self.test_y[start:end]


def _limited(x: torch.Tensor, y: torch.Tensor, limit: int | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    return (x, y) if limit is None else (x[:limit], y[:limit])


def split_tasks(data: TaskData, groups: Sequence[Sequence[int]] | None = None, *,
                test_limit: int | None = None) -> list[ContinualTask]:
    """Split ``data`` into one task per group of classes (default: consecutive pairs, e.g. 5
    tasks of 2 for a 10-class task). Each task keeps only its classes' images, labelled by
    position in the group. ``test_limit`` keeps the first images of each test set (tests)."""
    k = data.spec.num_classes
    if groups is None:
        groups = [tuple(range(c, min(c + 2, k))) for c in range(0, k, 2)]
    seen: set[int] = set()
    for g in groups:
        if len(g) < 2:
            raise ContinualError(f"each task needs at least two classes, got {tuple(g)}")
        for c in g:
            if not 0 <= c < k:
                raise ContinualError(f"class {c} is not a class of {data.spec.name} (0..{k - 1})")
            if c in seen:
                raise ContinualError(f"class {c} appears in more than one task")
            seen.add(c)
    train_x, train_y = data.tensors("train")
    test_x, test_y = data.tensors("test")
    tasks = []
    for i, g in enumerate(groups):
        lookup = torch.full((k,), -1, dtype=torch.int64)
        lookup[list(g)] = torch.arange(len(g))
        tr = lookup[train_y] >= 0
        te = lookup[test_y] >= 0
        x, y = _limited(test_x[te], lookup[test_y[te]], test_limit)
        tasks.append(ContinualTask(
            name=f"split-{i + 1}", classes=len(g), train_x=train_x[tr],
            train_y=lookup[train_y[tr]], test_x=x, test_y=y,
            original_classes=tuple(int(c) for c in g)))
    return tasks


def pixel_permutations(count: int, pixels: int, seed: int) -> list[torch.Tensor]:
    """``count`` permutations of ``range(pixels)``, a pure function of ``(count, pixels,
    seed)``. The first is the identity (task 1 is the unpermuted task, as in the paper)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ContinualError(f"count must be a positive int, got {count!r}")
    generator = torch.Generator().manual_seed(int(seed))
    perms = [torch.arange(pixels)]
    perms += [torch.randperm(pixels, generator=generator) for _ in range(count - 1)]
    return perms


def permuted_tasks(data: TaskData, count: int = 10, *, seed: int = 0,
                   test_limit: int | None = None) -> list[ContinualTask]:
    """``count`` tasks: all of ``data``'s classes, each under its own fixed pixel permutation
    (:func:`pixel_permutations`). The image tensors are shared by all tasks."""
    train_x, train_y = data.tensors("train")
    test_x, test_y = _limited(*data.tensors("test"), test_limit)
    pixels = int(torch.tensor(data.spec.input_shape).prod())
    k = data.spec.num_classes
    return [ContinualTask(name=f"permuted-{i + 1}", classes=k, train_x=train_x, train_y=train_y,
                          test_x=test_x, test_y=test_y, original_classes=tuple(range(k)),
                          permutation=None if i == 0 else perm)
            for i, perm in enumerate(pixel_permutations(count, pixels, seed))]
