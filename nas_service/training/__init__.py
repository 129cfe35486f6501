"""GHN training, evaluation of predicted-parameter networks, ranking metrics, the surrogate.

Submodules are imported where they are used (``from nas_service.training.ghn_training import
train_ghn``): the CLI reads :mod:`~nas_service.training.config` without loading torch-geometric.
"""
