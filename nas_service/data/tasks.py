"""Task registry: what each task is and where its files live: image classification
(``fashion-mnist``, ``mnist``, ``cifar10``) and character-level language modelling
(``gcide-chars``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import DatasetError

__all__ = [
    "DATASETS_DIR_ENV",
    "TASKS",
    "TaskSpec",
    "forget_task",
    "get_task",
    "list_tasks",
    "register_task",
    "resolve_root",
]

GCIDE_CHARS_SEQUENCE = 64
"""Characters a ``gcide-chars`` network reads at once (``T``): each scored from a zero state."""
GCIDE_VOCABULARY = ("\ufffd\n !\"&'()*+,-./0123456789:;=?ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^`"
                    "abcdefghijklmnopqrstuvwxyz{|}~")
"""The vocabulary of the GCIDE corpus at the default ``min_count`` (index 0: unknown
characters); :func:`nas_service.data.characters.load_char_task` checks the installed corpus
against it."""

#: Environment variable naming a folder that holds one sub-folder per task
#: (``$NAS_DATASETS_DIR/<task-name>``).
DATASETS_DIR_ENV = "NAS_DATASETS_DIR"


@dataclass(frozen=True)
class TaskSpec:
    """Static description of an image-classification task.

    Attributes:
        name: canonical task name (the key in :data:`TASKS` and the sub-folder name under
            ``$NAS_DATASETS_DIR``).
        input_shape: ``(C, H, W)`` of one image as the model sees it.
        num_classes: labels are guaranteed to lie in ``[0, num_classes)`` after loading.
        class_names: human-readable name of each class id, ``len == num_classes``.
        mean, std: per-channel normalisation on the ``[0, 1]`` pixel scale; the values
            documented for the dataset, so that scores are comparable with the literature.
        default_root: folder used when neither ``root=`` nor ``$NAS_DATASETS_DIR`` is given
            (``None``: the task has no default location and one of those must be set).
        val_size: number of images carved out of the original training set as the fixed
            validation split (used to score architectures; the test split is only for
            final evaluation).
        family: on-disk format family: ``"idx"`` (MNIST-style), ``"cifar"``, ``"npz"``
            (``train.npz`` + ``test.npz`` in the folder itself: a task registered by upload,
            :mod:`nas_service.data.uploads`), or ``"characters"``: a language-modelling task on a character corpus
            (:mod:`nas_service.data.characters`), whose ``input_shape`` is ``(T,)`` (token ids),
            ``num_classes`` the vocabulary size and ``class_names`` the vocabulary's characters;
            its ``val_size`` is the number of validation windows of ``T + 1`` characters a score
            is taken on.
        augment_pad: zero padding used by the random-crop training augmentation.
        augment_flip: whether random horizontal flips are label-preserving for this task.
        metric: what a score measures: ``"accuracy"`` (higher is better) or ``"bpc"``, bits per
            character of next-character prediction (lower is better).
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_root: str | None
    val_size: int
    family: str
    augment_pad: int
    augment_flip: bool
    metric: str = "accuracy"

    def __post_init__(self) -> None:
        # Catch registry typos at import time rather than as odd broadcasting later.
        if self.family not in ("idx", "cifar", "npz", "characters"):
            raise ValueError(f"{self.name}: unknown family {self.family!r}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: class_names must have num_classes entries")
        if self.metric != ("bpc" if self.family == "characters" else "accuracy"):
            raise ValueError(f"{self.name}: a {self.family} task's metric is not {self.metric!r}")
        if self.family == "characters":
            if len(self.input_shape) != 1 or self.mean or self.std:
                raise ValueError(f"{self.name}: a character task has input_shape (T,) and no "
                                 "mean/std")
            return
        channels = self.input_shape[0]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"{self.name}: mean/std must have one value per channel")

    @property
    def is_language_model(self) -> bool:
        """Whether this is a character task: graphs read ``[T]`` token ids and predict the next
        token at every position (``task="next_token"`` outputs)."""
        return self.family == "characters"

    @property
    def higher_is_better(self) -> bool:
        """Accuracy: higher is better; bits per character: lower is better."""
        return self.metric == "accuracy"


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="fashion-mnist",
            input_shape=(1, 28, 28),
            num_classes=10,
            class_names=(
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ),
            mean=(0.2860,),
            std=(0.3530,),
            default_root="/usr/share/datasets/fashion-mnist",
            val_size=5000,
            family="idx",
            augment_pad=2,
            augment_flip=False,
        ),
        TaskSpec(
            name="mnist",
            input_shape=(1, 28, 28),
            num_classes=10,
            class_names=tuple(str(d) for d in range(10)),
            mean=(0.1307,),
            std=(0.3081,),
            default_root="/usr/share/datasets/mnist",
            val_size=5000,
            family="idx",
            augment_pad=2,
            augment_flip=False,
        ),
        TaskSpec(
            name="cifar10",
            input_shape=(3, 32, 32),
            num_classes=10,
            class_names=(
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ),
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            default_root=None,
            val_size=5000,
            family="cifar",
            augment_pad=4,
            augment_flip=True,
        ),
        TaskSpec(
            name="gcide-chars",
            input_shape=(GCIDE_CHARS_SEQUENCE,),
            num_classes=len(GCIDE_VOCABULARY),
            class_names=tuple(GCIDE_VOCABULARY),
            mean=(),
            std=(),
            default_root="/usr/share/dictd",
            val_size=128,
            family="characters",
            augment_pad=0,
            augment_flip=False,
            metric="bpc",
        ),
    )
}

# Spellings people commonly type; they all map to one canonical name so that caches and
# folder names never fork.
_ALIASES = {
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
}


# Tasks registered at run time (uploaded datasets), by canonical name. Kept apart from TASKS so
# that the built-in registry stays what the code says it is.
_REGISTERED: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Make :func:`get_task` (and so :func:`~nas_service.data.load_task`) know ``spec``.

    Registering the same spec again is a no-op; a name a built-in task or alias holds, or a
    registered name with another spec, raises :class:`DatasetError`.
    """
    if spec.name in TASKS or spec.name in _ALIASES:
        raise DatasetError(f"task name {spec.name!r} is a built-in task's", task=spec.name)
    known = _REGISTERED.get(spec.name)
    if known is not None and known != spec:
        raise DatasetError(f"another task is registered as {spec.name!r}", task=spec.name)
    _REGISTERED[spec.name] = spec
    return spec


def forget_task(name: str) -> None:
    """Drop a registered task from this process's registry (tests; a failed registration)."""
    _REGISTERED.pop(name, None)


def list_tasks() -> list[str]:
    """Return the canonical names of all known tasks (built-in and registered), sorted."""
    return sorted([*TASKS, *_REGISTERED])


def get_task(name: str) -> TaskSpec:
    """Return the spec of task ``name``.

    Matching ignores case, surrounding spaces and ``_`` vs ``-``, and accepts a few common
    aliases (``cifar-10``, ``fashion_mnist``...). Raises :class:`DatasetError` listing the
    known names when nothing matches.
    """
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    try:
        return TASKS[key] if key in TASKS else _REGISTERED[key]
    except KeyError:
        raise DatasetError(
            f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}"
        ) from None


def resolve_root(spec: TaskSpec, root: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """Decide which folder holds ``spec``'s files.

    Precedence (first that applies wins, no fallback to the next one, so that a
    misconfigured folder is reported rather than silently replaced):

    1. ``root`` when given;
    2. ``$NAS_DATASETS_DIR/<task-name>`` when the variable is set and non-empty;
    3. ``spec.default_root``.

    Returns ``(folder, origin)`` where ``origin`` says which rule picked it (used in error
    messages). Raises :class:`DatasetError` when no rule applies. The folder is not
    checked for existence here.
    """
    if root is not None:
        return Path(root).expanduser(), "root argument"
    env = os.environ.get(DATASETS_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser() / spec.name, f"${DATASETS_DIR_ENV}={env}"
    if spec.default_root is not None:
        return Path(spec.default_root), "default folder"
    raise DatasetError(
        f"no folder given: pass root=... or set ${DATASETS_DIR_ENV} so that the files are "
        f"found in ${DATASETS_DIR_ENV}/{spec.name}",
        task=spec.name,
    )
