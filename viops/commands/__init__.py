"""The ``viops`` subcommands, one module per group: training, registry, monitoring."""
