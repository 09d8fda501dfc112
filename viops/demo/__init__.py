"""The demo: the whole viops lifecycle in one command (``make demo``), and the report it writes."""
