"""Image-classification tasks loaded from their standard on-disk formats.

Each task (``fashion-mnist``, ``mnist``, ``cifar10``) is decoded once per process into
uint8/int64 tensors and split into ``train``, a fixed ``val`` (carved from the original
training set with a seeded, version-independent permutation; used to score architectures)
and ``test`` (final evaluation only). Batches are drawn straight from memory, without
DataLoader workers, which is what a 2-core CPU wants.

Quick use::

    from nas_service.data import load_task

    task = load_task("fashion-mnist")            # default folder, or $NAS_DATASETS_DIR
    for x, y in task.batches("train", 128, shuffle=True, seed=0, augment=True):
        ...
    x_val, y_val = task.tensors("val")

Every problem with the files raises :class:`DatasetError`. See ``docs/data.md``.
"""

from .errors import DatasetError
from .formats import restricted_unpickle
from .loader import (
    SPLIT_SEED,
    SPLITS,
    Split,
    TaskData,
    clear_cache,
    load_task,
    normalize,
    random_crop_flip,
    split_indices,
)
from .tasks import (
    DATASETS_DIR_ENV,
    TASKS,
    TaskSpec,
    forget_task,
    get_task,
    list_tasks,
    register_task,
    resolve_root,
)
from .uploads import DecodedUpload, UploadLimits, decode_upload, read_stored_task, store_task

__all__ = [
    "DATASETS_DIR_ENV",
    "SPLITS",
    "SPLIT_SEED",
    "TASKS",
    "DatasetError",
    "DecodedUpload",
    "Split",
    "TaskData",
    "TaskSpec",
    "UploadLimits",
    "clear_cache",
    "decode_upload",
    "forget_task",
    "get_task",
    "list_tasks",
    "load_task",
    "normalize",
    "random_crop_flip",
    "read_stored_task",
    "register_task",
    "resolve_root",
    "restricted_unpickle",
    "split_indices",
    "store_task",
]
