"""Training one character-level language model on a corpus: what ``nas-service train-char-lm``
runs (docs/sequence.md).

The model (``nas_service.sequence``) is trained with truncated BPTT for ``steps`` windows (or
until ``max_seconds``), then scored in bits per character on the validation and test splits.
With ``out`` the weights go to ``OUT/char-lm.safetensors`` (the model configuration, the
corpus and the scores in its metadata) and the result to ``OUT/result.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from nas_service.data.characters import DEFAULT_MIN_COUNT, load_char_corpus
from nas_service.sequence import (
    CharLanguageModel,
    CharModelConfig,
    batch_streams,
    count_parameters,
    evaluate_bpc,
    hidden_size_for_parameters,
    train_steps,
)

__all__ = ["CharLMSettings", "load_char_lm", "train_char_lm"]


@dataclass(frozen=True)
class CharLMSettings:
    kind: str = "rhn"
    hidden_size: int | None = None
    """``None``: the widest model within ``parameters``."""
    parameters: int = 1_000_000
    num_layers: int = 1
    depth: int = 5
    hyper_size: int = 64
    embedding_size: int = 64
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    layer_norm: bool = False
    corpus: str | None = None
    """A text file or a dictd database; ``None``: the installed GCIDE."""
    min_count: int = DEFAULT_MIN_COUNT
    steps: int = 2000
    max_seconds: float | None = None
    batch_size: int = 32
    bptt: int = 100
    lr: float = 3e-3
    clip: float = 1.0
    eval_chars: int | None = 200_000
    """Characters of each of the validation and test splits scored (``None``: all)."""
    seed: int = 0


def _model_config(s: CharLMSettings, vocab_size: int) -> CharModelConfig:
    cfg = CharModelConfig(s.kind, vocab_size=vocab_size, hidden_size=s.hidden_size or 1,
                          num_layers=s.num_layers, depth=s.depth, hyper_size=s.hyper_size,
                          embedding_size=s.embedding_size, dropout=s.dropout,
                          recurrent_dropout=s.recurrent_dropout, layer_norm=s.layer_norm)
    return cfg if s.hidden_size is not None else hidden_size_for_parameters(cfg, s.parameters)


def train_char_lm(settings: CharLMSettings, out: str | Path | None = None, *,
                  progress: bool = True) -> dict[str, object]:
    """Trains and scores one model; returns the result (also written to ``out``). Raises
    ``DatasetError`` for a missing or unreadable corpus, ``ValueError`` for bad settings."""
    corpus = load_char_corpus(settings.corpus, min_count=settings.min_count)
    cfg = _model_config(settings, corpus.vocab_size)
    torch.manual_seed(settings.seed)
    model = CharLanguageModel(cfg)
    streams = batch_streams(corpus.train, settings.batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=settings.steps, desc=f"train-char-lm {cfg.kind}", unit="step",
                   dynamic_ncols=True)

    def on_step(step: int, bpc: float) -> None:
        if bar is not None:
            bar.set_postfix(bpc=f"{bpc:.3f}", refresh=False)
            bar.update(1)

    try:
        stats = train_steps(model, streams, bptt=settings.bptt, optimizer=optimizer,
                            max_steps=settings.steps, max_seconds=settings.max_seconds,
                            clip=settings.clip, on_step=on_step)
    finally:
        if bar is not None:
            bar.close()
    started = time.perf_counter()
    scores = {split: evaluate_bpc(model, corpus.split(split), bptt=settings.bptt,
                                  batch_size=settings.batch_size,
                                  max_tokens=settings.eval_chars)
              for split in ("val", "test")}
    result: dict[str, object] = {
        "settings": asdict(settings), "model": cfg.to_dict(),
        "parameters": count_parameters(model), "corpus": corpus.describe(),
        "steps": stats.steps, "train_characters": stats.tokens,
        "train_seconds": round(stats.seconds, 1),
        "train_tokens_per_s": round(stats.tokens_per_second, 1),
        "train_bpc_last_50_steps": round(stats.train_bpc, 4),
        "val_bpc": round(scores["val"], 4), "test_bpc": round(scores["test"], 4),
        "eval_seconds": round(time.perf_counter() - started, 1),
    }
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(folder / "char-lm.safetensors"), metadata={
            "format": "nas-char-lm/1", "model": json.dumps(cfg.to_dict()),
            "vocabulary": json.dumps(corpus.vocabulary), "result": json.dumps(result)})
        (folder / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def load_char_lm(path: str | Path) -> tuple[CharLanguageModel, str]:
    """The model written by :func:`train_char_lm` and its vocabulary (index ``i`` is
    ``vocabulary[i]``)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "nas-char-lm/1":
        raise ValueError(f"{path}: not a character language model written by train-char-lm")
    model = CharLanguageModel(CharModelConfig(**json.loads(meta["model"])))
    model.load_state_dict(load_file(str(path)))
    return model, json.loads(meta["vocabulary"])
