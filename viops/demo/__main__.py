"""``python -m viops.demo`` (what ``make demo`` runs): the whole lifecycle on embedded defaults."""

from viops.demo.lifecycle import main
from viops.process import run_as_process

run_as_process(main)
