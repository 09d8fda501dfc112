"""Training, registry and lifecycle, serving and diagnostics over the pure-PyTorch ``models`` layer
(docs/architecture.md lists the rooms)."""
