"""``python -m viops.demo`` (what ``make demo`` runs): the whole lifecycle on embedded defaults."""

import sys

from viops.demo.lifecycle import main

sys.exit(main())
