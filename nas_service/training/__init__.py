"""The offline research harness: GHN training (``nas-service train-ghn``), the evaluation of a
GHN's predicted parameters against training from scratch (``evaluate-ghn``), ranking reports with
trained ground truth (``rank-ghn``) and their written reports. It scores through
:mod:`nas_service.scoring`, like the service does; nothing in the service imports it.

Submodules are imported where they are used (``from nas_service.training.ghn_training import
train_ghn``): the CLI reads :mod:`~nas_service.training.config` without loading torch-geometric.
"""
