"""Diagnostics of fitted posteriors: posteriordb conformance, experiment comparison, amortization gaps."""
