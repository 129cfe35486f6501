"""The architectures with ground truth several benchmarks report Kendall tau on. The ranked
``cells``/``macro`` architectures: the held-out architectures of the GHN's training spaces
(``held_out_architectures``, the first :data:`HELD_OUT`) that have 5-epoch trained accuracy in
:data:`RANKED_RESULT` (written by ``nas-service rank-ghn``; 39 of them for the bundled GHN). And
the generalisation benchmark's sets, whose records (trained accuracy, proxies) are in
:data:`GENERALIZATION_RESULT`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from nas_service.ghn import GraphHyperNetwork
from nas_service.graph import ArchitectureGraph
from nas_service.training.evaluate import training_config_of
from nas_service.training.ghn_training import held_out_architectures

RANKED_RESULT = (Path(__file__).resolve().parents[2] / "bench" / "results"
                 / "ranking-fashion-mnist" / "result.json")
HELD_OUT = 50
GENERALIZATION_RESULT = RANKED_RESULT.parents[1] / "generalization_bench.json"


def generalization_records() -> list[dict]:
    """The generalisation benchmark's record of every architecture it scored."""
    return json.loads(GENERALIZATION_RESULT.read_text())["architectures"]


def trained_accuracy(records: Sequence[dict] | None = None) -> dict[str, float]:
    """Trained accuracy by content hash: the ranked architectures' and those of the
    generalisation ``records`` (read from :data:`GENERALIZATION_RESULT` when not given)."""
    records = generalization_records() if records is None else records
    return {**ranked_truth(), **{a["hash"]: a["trained_accuracy"] for a in records
                                 if a.get("trained_accuracy") is not None}}


def ranked_truth() -> dict[str, float]:
    """Trained accuracy of each ranked architecture, by content hash."""
    return {a["hash"]: a["trained_accuracy"]
            for a in json.loads(RANKED_RESULT.read_text())["architectures"]}


def ranked_architectures(ghn: GraphHyperNetwork, input_shape: Sequence[int], num_classes: int,
                         truth: dict[str, float]) -> list[ArchitectureGraph]:
    """The held-out architectures of ``ghn``'s training spaces that ``truth`` has."""
    return [g for g in held_out_architectures(training_config_of(ghn), HELD_OUT, input_shape,
                                              num_classes)
            if g.content_hash() in truth]
