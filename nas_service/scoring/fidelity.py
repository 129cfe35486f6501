"""Multi-fidelity scoring: rungs of cheaper scores and successive halving between them.

A *fidelity* is how much data a score is taken on: the first ``images`` images of the task's
validation split, and the first ``recalibration_batches`` of the fixed recalibration batches
(batch-norm statistics, or activations of networks without batch norm, and the classifier's
readout). The full fidelity is the service's protocol (:mod:`~.protocol`); a cheaper one scales
the recalibration with the validation images::

    recalibration_batches(images) = max(1, round(full_batches * images / full_images))

so 250 of 1,000 images recalibrate on 1 of the 4 batches of 128. Scoring time is nearly
proportional to the images a network runs over (validation plus recalibration), so a rung of
250 images costs about a quarter of a full score.

A :class:`FidelitySchedule` is successive halving (Jamieson & Talwalkar, 2016; Li et al.,
"Hyperband", 2018) within a search job. Candidates are grouped in *brackets* of ``bracket``
consecutive indices. Every candidate of a bracket is scored at rung 0; of the candidates scored
at rung *k*, the best ``ceil(n_k / eta)`` by their rung-*k* score are scored again at rung
*k + 1*, up to the last rung, which is the full fidelity. The promotions of a bracket depend only
on its own candidates' scores, which are deterministic, so a job redone after a crash promotes
exactly the same candidates: nothing depends on which worker scored what, or when.

No torch here: the settings, the API's request validation and the worker all read it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_RUNGS = 6
MAX_ETA = 64
MAX_BRACKET = 4096


class FidelityError(ValueError):
    """A fidelity schedule that cannot run; ``field`` names the offending key (``rungs``,
    ``eta``, ``bracket``) and ``index`` the offending rung, if any."""

    def __init__(self, message: str, field: str, index: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.index = index


@dataclass(frozen=True)
class Fidelity:
    """One rung's scoring budget."""

    images: int
    """Validation images the score is taken on (the first N of the fixed split)."""
    recalibration_batches: int
    """Recalibration batches (the first N of the fixed ones)."""


def scaled_recalibration_batches(images: int, full_images: int, full_batches: int) -> int:
    """The recalibration batches of a score on ``images`` of ``full_images`` validation images:
    the full protocol's ``full_batches`` scaled alike, at least one."""
    if images >= full_images:
        return full_batches
    return max(1, min(full_batches, round(full_batches * images / full_images)))


@dataclass(frozen=True)
class FidelitySchedule:
    """Rungs of validation images (increasing, the last one the full budget), the promotion
    factor ``eta`` and the bracket size (see the module docstring)."""

    rungs: tuple[int, ...]
    eta: int = 4
    bracket: int | None = None
    """Consecutive candidates whose rung-0 scores compete for promotion; ``None``:
    ``eta ** len(rungs)`` (16 for two rungs and ``eta=4``: 4 of them reach the full score)."""

    @classmethod
    def single(cls, full_images: int) -> FidelitySchedule:
        """One rung, the full fidelity: every candidate gets the full score (no halving)."""
        return cls((full_images,), eta=1)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, full_images: int) -> FidelitySchedule:
        """The schedule of a job's ``fidelity`` config (``None``: :meth:`single`), checked
        against the service's full budget. Raises :class:`FidelityError`."""
        if config is None:
            return cls.single(full_images)
        schedule = cls(tuple(config["rungs"]), int(config.get("eta", 4)), config.get("bracket"))
        schedule.check(full_images)
        return schedule

    def to_config(self) -> dict[str, Any]:
        return {"rungs": list(self.rungs), "eta": self.eta, "bracket": self.bracket_size}

    @property
    def bracket_size(self) -> int:
        """Candidates per bracket; with one rung there is nothing to promote, and the whole job
        is one bracket."""
        if len(self.rungs) == 1:
            return MAX_BRACKET
        if self.bracket is not None:
            return self.bracket
        return min(self.eta ** len(self.rungs), MAX_BRACKET)

    @property
    def top_rung(self) -> int:
        return len(self.rungs) - 1

    def check(self, full_images: int) -> None:
        """Raises :class:`FidelityError` unless the rungs increase strictly from 1 up to
        ``full_images`` (the last rung *is* the full budget, so only full scores compete for a
        job's best candidate), ``2 <= eta <= 64`` when there are several rungs, and the
        bracket holds at least ``eta`` candidates."""
        if not 1 <= len(self.rungs) <= MAX_RUNGS:
            raise FidelityError(f"rungs must list 1 to {MAX_RUNGS} image budgets, got "
                                f"{len(self.rungs)}", "rungs")
        for i, images in enumerate(self.rungs):
            if isinstance(images, bool) or not isinstance(images, int) or images < 1:
                raise FidelityError(f"a rung is a number of validation images (at least 1), "
                                    f"got {images!r}", "rungs", i)
            if i and images <= self.rungs[i - 1]:
                raise FidelityError(f"rungs must increase: {images} follows "
                                    f"{self.rungs[i - 1]}", "rungs", i)
        if self.rungs[-1] != full_images:
            raise FidelityError(f"the last rung must be the full budget of {full_images} "
                                f"validation images (NAS_EVAL_IMAGES), got {self.rungs[-1]}",
                                "rungs", len(self.rungs) - 1)
        if len(self.rungs) > 1 and not 2 <= self.eta <= MAX_ETA:
            raise FidelityError(f"eta must be 2 to {MAX_ETA}, got {self.eta}", "eta")
        if self.bracket is not None and not (max(self.eta, 1) <= self.bracket <= MAX_BRACKET):
            raise FidelityError(f"bracket must be {max(self.eta, 1)} (eta) to {MAX_BRACKET}, "
                                f"got {self.bracket}", "bracket")

    def fidelity(self, rung: int, full_images: int, full_batches: int) -> Fidelity:
        images = self.rungs[rung]
        return Fidelity(images, scaled_recalibration_batches(images, full_images, full_batches))

    def brackets(self, candidates: int) -> list[range]:
        """The brackets of a job of ``candidates`` candidates, in order (the last may be
        shorter)."""
        size = self.bracket_size if len(self.rungs) > 1 else max(candidates, 1)
        return [range(start, min(start + size, candidates))
                for start in range(0, candidates, size)]

    def promoted(self, rung_scores: Mapping[int, float]) -> list[int]:
        """Of a bracket's candidates scored at some rung (``{index: score at that rung}``), the
        indices that go on to the next rung: the best ``ceil(n / eta)``, ties to the lower index;
        in index order."""
        keep = math.ceil(len(rung_scores) / max(self.eta, 1))
        best = sorted(rung_scores, key=lambda i: (-rung_scores[i], i))[:keep]
        return sorted(best)


def expected_cost_per_candidate(schedule: FidelitySchedule,
                                rung_seconds: Sequence[float]) -> float:
    """Seconds per candidate of a full bracket: every candidate pays rung 0, and a fraction
    ``eta ** -k`` (rounded up per bracket) pays rung *k* as well."""
    size = schedule.bracket_size
    total, survivors = 0.0, size
    for k, seconds in enumerate(rung_seconds):
        if k:
            survivors = math.ceil(survivors / max(schedule.eta, 1))
        total += survivors * seconds
    return total / size
