"""The reference models now live in ``nas_service.zoo``; this module keeps ``import zoo`` working."""

from nas_service.zoo import *  # noqa: F403
from nas_service.zoo import __all__  # noqa: F401
