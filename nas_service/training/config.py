"""Settings of a GHN training run (kept free of heavy imports: the CLI reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

# Seeds of architectures used for training start here; held-out evaluation architectures use
# seeds below it, so no held-out architecture is ever trained on.
TRAIN_SEED_OFFSET = 1_000_000


@dataclass
class TrainingConfig:
    task: str = "fashion-mnist"
    data_root: str | None = None
    spaces: tuple[str, ...] = ("cells", "macro")
    steps: int = 1500
    meta_batch: int = 8
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 100
    grad_clip: float = 5.0
    max_parameters: int = 1_000_000
    max_flops: int = 20_000_000
    seed: int = 0
    validate_every: int = 250
    validation_architectures: int = 16
    checkpoint_every: int = 50
    log_every: int = 10
    ghn: dict = field(default_factory=dict)
    """Overrides of :class:`GHNConfig` fields."""
