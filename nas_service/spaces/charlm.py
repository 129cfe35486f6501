"""The ``charlm`` space: recurrent character-level language models.

A network reads ``T`` token ids and predicts the next token at every position (a graph with
``task="next_token"``, input ``[T]``, output ``(T, vocabulary)``; ``num_classes`` is the
vocabulary size)::

    embedding (E) - [dropout] - 1 to 3 recurrent layers, each [- dropout]
                  - [linear (head width) - tanh] - linear per token (vocabulary) - output

All layers have one cell type and one width ``H``:

* ``lstm``, ``gru``: ``torch.nn.LSTM`` / ``GRU`` (the ``recurrent`` op, one node per layer);
* ``rhn``: recurrent highway network of recurrence depth ``L`` (Zilly et al. 2017);
* ``hyper_lstm``: HyperLSTM with a hypernetwork of width ``N`` (Ha et al. 2017);
* ``hyper_rhn``: recurrent highway hypernetwork of depth ``L`` and width ``N`` (Suarez 2017);

the last three are :mod:`nas_service.sequence`'s cells, with layer norm as an option
(``docs/sequence.md``). Genome::

    {"space": "charlm", "version": 1,
     "embedding": 32, "cell": "rhn", "layers": 2, "hidden": 128,
     "depth": 3,            # rhn and hyper_rhn only, else null
     "hyper": 32,           # hyper_lstm and hyper_rhn only, else null
     "layer_norm": false,   # false for lstm and gru
     "dropout": 0.1, "head": 0}   # head: width of a hidden tanh layer before the decoder, 0: none
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from ..graph import DEFAULT_LIMITS, ArchitectureGraph, GraphBuilder, GraphLimits
from .base import Genome, GenomeSearchSpace, SearchSpaceError, copy_genome, weighted_choice

CELLS: tuple[str, ...] = ("lstm", "gru", "rhn", "hyper_lstm", "hyper_rhn")
DEEP_CELLS = frozenset({"rhn", "hyper_rhn"})
"""Cells with a recurrence depth."""
HYPER_CELLS = frozenset({"hyper_lstm", "hyper_rhn"})
"""Cells with a hypernetwork."""
NORMED_CELLS = DEEP_CELLS | HYPER_CELLS
"""Cells with a layer-norm option (``nn.LSTM`` and ``nn.GRU`` have none)."""
MAX_LAYERS = 3
MAX_DEPTH = 5
MIN_WIDTH, MAX_WIDTH = 8, 2048
DROPOUTS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)
MIN_SEQUENCE = 2
"""Shortest input ``T``: one token to read and one to predict."""

_CELLS = (("lstm", 3), ("gru", 2), ("rhn", 3), ("hyper_lstm", 2), ("hyper_rhn", 2))
_EMBEDDINGS = ((16, 2), (32, 3), (48, 2), (64, 2))
_HIDDEN = ((32, 1), (48, 2), (64, 3), (96, 2), (128, 2), (192, 1))
_HYPER = ((8, 1), (16, 3), (32, 2))
_HEADS = ((0, 4), (64, 1), (128, 1))
_MUTATIONS = (("cell", 15), ("layers", 15), ("hidden", 20), ("embedding", 10), ("depth", 10),
              ("hyper", 8), ("layer_norm", 8), ("dropout", 8), ("head", 6))


class CharLMSpace(GenomeSearchSpace):
    """Recurrent character language models (see the module docstring)."""

    name = "charlm"

    def check_input(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        shape = tuple(input_shape)
        if len(shape) != 1 or not isinstance(shape[0], int) or isinstance(shape[0], bool) \
                or shape[0] < MIN_SEQUENCE:
            raise SearchSpaceError(
                f"the charlm space generates language models: input_shape must be [T], a "
                f"sequence of at least {MIN_SEQUENCE} token ids, got {list(shape)}")
        return shape

    def sample_genome(self, rng: random.Random, input_shape: Sequence[int] = (64,)) -> Genome:
        self.check_input(input_shape)
        cell = weighted_choice(rng, _CELLS)
        return self._new_genome(
            embedding=weighted_choice(rng, _EMBEDDINGS),
            cell=cell,
            layers=weighted_choice(rng, ((1, 4), (2, 3), (3, 1))),
            hidden=weighted_choice(rng, _HIDDEN),
            depth=rng.randint(1, MAX_DEPTH) if cell in DEEP_CELLS else None,
            hyper=weighted_choice(rng, _HYPER) if cell in HYPER_CELLS else None,
            layer_norm=cell in NORMED_CELLS and rng.random() < 0.4,
            dropout=weighted_choice(rng, ((0.0, 4), (0.1, 2), (0.2, 1), (0.3, 1))),
            head=weighted_choice(rng, _HEADS),
        )

    def mutate_genome(self, genome: Genome, rng: random.Random,
                      input_shape: Sequence[int] = (64,)) -> Genome:
        self.check_genome(genome)
        self.check_input(input_shape)
        for _ in range(100):
            child = copy_genome(genome)
            _mutate(child, weighted_choice(rng, _MUTATIONS), rng)
            if child != genome and _genome_problem(child) is None:
                return child
        raise AssertionError("no valid mutation found in 100 draws")  # hidden always works

    def shrink_genome(self, genome: Genome, factor: float) -> Genome | None:
        smaller = copy_genome(genome)
        for key in ("embedding", "hidden", "hyper", "head"):
            if smaller[key]:
                smaller[key] = max(MIN_WIDTH, int(smaller[key] * factor))
        if smaller == genome and genome["layers"] > 1:
            smaller["layers"] -= 1  # already narrowest: drop a layer
        return None if smaller == genome else smaller

    def check_genome(self, genome: Any) -> None:
        self._check_header(genome)
        problem = _genome_problem(genome)
        if problem:
            raise SearchSpaceError(f"invalid 'charlm' genome: {problem}")

    def genome_to_graph(self, genome: Genome, input_shape: Sequence[int] = (64,),
                        num_classes: int = 10, *, name: str | None = None,
                        limits: GraphLimits = DEFAULT_LIMITS) -> ArchitectureGraph:
        self.check_genome(genome)
        shape = self.check_input(input_shape)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise SearchSpaceError(f"a language model needs a vocabulary (num_classes) of at "
                                   f"least 2 tokens, got {num_classes!r}")
        g = genome
        b = GraphBuilder(shape, name=name, input_id="tokens")
        x = b.add("embedding", b.input, id="embedding", num_embeddings=num_classes,
                  embedding_dim=g["embedding"])
        if g["dropout"]:
            x = b.add("dropout", x, id="embedding_drop", p=g["dropout"])
        for k in range(g["layers"]):
            x = b.add(_layer_op(g), x, id=f"layer{k}", **_layer_attrs(g))
            if g["dropout"]:
                x = b.add("dropout", x, id=f"layer{k}_drop", p=g["dropout"])
        if g["head"]:
            x = b.add("tanh", b.add("linear", x, id="head_hidden", out_features=g["head"]),
                      id="head_act")
        logits = b.add("linear", x, id="decoder", out_features=num_classes)
        return b.build(logits, num_classes, limits, task="next_token")


def _layer_op(g: Genome) -> str:
    """The op of a recurrent layer: ``nn.LSTM``/``GRU`` are modes of ``recurrent``."""
    return g["cell"] if g["cell"] in NORMED_CELLS else "recurrent"


def _layer_attrs(g: Genome) -> dict[str, Any]:
    cell = g["cell"]
    if cell not in NORMED_CELLS:
        return {"mode": cell, "hidden_size": g["hidden"]}
    attrs: dict[str, Any] = {"hidden_size": g["hidden"], "layer_norm": g["layer_norm"]}
    if cell in DEEP_CELLS:
        attrs["depth"] = g["depth"]
    if cell in HYPER_CELLS:
        attrs["hyper_size"] = g["hyper"]
    return attrs


def _mutate(g: Genome, what: str, rng: random.Random) -> None:
    if what == "cell":
        g["cell"] = rng.choice([c for c in CELLS if c != g["cell"]])
        g["depth"] = (g["depth"] or rng.randint(1, MAX_DEPTH)) if g["cell"] in DEEP_CELLS \
            else None
        g["hyper"] = (g["hyper"] or weighted_choice(rng, _HYPER)) if g["cell"] in HYPER_CELLS \
            else None
        g["layer_norm"] = g["layer_norm"] and g["cell"] in NORMED_CELLS
    elif what == "layers":
        g["layers"] = rng.choice([n for n in range(1, MAX_LAYERS + 1) if n != g["layers"]])
    elif what in ("hidden", "embedding", "head"):
        table = {"hidden": _HIDDEN, "embedding": _EMBEDDINGS, "head": _HEADS}[what]
        if what != "head" and rng.random() < 0.5:  # a step of 25 %, as well as a fresh draw
            g[what] = max(MIN_WIDTH, int(g[what] * rng.choice([0.75, 1.25])))
        else:
            g[what] = weighted_choice(rng, table)
    elif what == "depth" and g["cell"] in DEEP_CELLS:
        g["depth"] = rng.choice([d for d in range(1, MAX_DEPTH + 1) if d != g["depth"]])
    elif what == "hyper" and g["cell"] in HYPER_CELLS:
        g["hyper"] = max(MIN_WIDTH, int(g["hyper"] * rng.choice([0.5, 2])))
    elif what == "layer_norm" and g["cell"] in NORMED_CELLS:
        g["layer_norm"] = not g["layer_norm"]
    elif what == "dropout":
        g["dropout"] = rng.choice([p for p in DROPOUTS if p != g["dropout"]])


_KEYS = {"space", "version", "embedding", "cell", "layers", "hidden", "depth", "hyper",
         "layer_norm", "dropout", "head"}


def _is_int(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _genome_problem(g: dict[str, Any]) -> str | None:
    """The first problem of genome ``g``, or ``None``."""
    if set(g) != _KEYS:
        missing, extra = sorted(_KEYS - set(g)), sorted(set(g) - _KEYS)
        return f"keys missing: {missing}, unknown: {extra}"
    if g["cell"] not in CELLS:
        return f"'cell' must be one of {list(CELLS)}, got {g['cell']!r}"
    for key, lo, hi in (("embedding", MIN_WIDTH, MAX_WIDTH), ("hidden", MIN_WIDTH, MAX_WIDTH),
                        ("layers", 1, MAX_LAYERS)):
        if not _is_int(g[key], lo, hi):
            return f"'{key}' must be an int in [{lo}, {hi}], got {g[key]!r}"
    if g["cell"] in DEEP_CELLS:
        if not _is_int(g["depth"], 1, MAX_DEPTH):
            return f"'depth' must be an int in [1, {MAX_DEPTH}] for {g['cell']}, got {g['depth']!r}"
    elif g["depth"] is not None:
        return f"'depth' must be null for {g['cell']}, got {g['depth']!r}"
    if g["cell"] in HYPER_CELLS:
        if not _is_int(g["hyper"], MIN_WIDTH, MAX_WIDTH):
            return (f"'hyper' must be an int in [{MIN_WIDTH}, {MAX_WIDTH}] for {g['cell']}, "
                    f"got {g['hyper']!r}")
    elif g["hyper"] is not None:
        return f"'hyper' must be null for {g['cell']}, got {g['hyper']!r}"
    if not isinstance(g["layer_norm"], bool) or (g["layer_norm"] and g["cell"] not in NORMED_CELLS):
        return f"'layer_norm' must be a bool, and false for lstm and gru, got {g['layer_norm']!r}"
    if g["dropout"] not in DROPOUTS or isinstance(g["dropout"], bool):
        return f"'dropout' must be one of {list(DROPOUTS)}, got {g['dropout']!r}"
    if not (g["head"] == 0 or _is_int(g["head"], MIN_WIDTH, MAX_WIDTH)) or isinstance(g["head"], bool):
        return f"'head' must be 0 or an int in [{MIN_WIDTH}, {MAX_WIDTH}], got {g['head']!r}"
    return None
