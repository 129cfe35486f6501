"""``python -m nas_service``: the same command line as the ``nas-service`` script."""

import sys

from nas_service.commands import main

# Guarded: worker processes started with "spawn" (GHN training) import this module again.
if __name__ == "__main__":
    sys.exit(main())
