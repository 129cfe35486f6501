"""GHN training, evaluation of predicted-parameter networks, ranking metrics, the surrogate."""

from .evaluation import accuracy, load_parameters, recalibrate_batch_norm
from .ghn_training import TrainingConfig, train_ghn

__all__ = ["TrainingConfig", "accuracy", "load_parameters", "recalibrate_batch_norm", "train_ghn"]
