"""``python -m viops``: the same command as the ``viops`` console script."""

import sys

from viops.cli import main

sys.exit(main())
