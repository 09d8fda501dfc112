"""One training run: data, the Lightning fit and its callbacks, telemetry, final metrics, artifacts and plots."""
