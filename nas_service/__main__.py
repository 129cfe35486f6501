"""``python -m nas_service``: the same command line as the ``nas-service`` script."""

import sys

from nas_service.cli import main

sys.exit(main())
