"""Pure PyTorch variational inference: priors, model densities, variational families, objectives, predictive,
calibration, Laplace approximation and importance diagnostics. No Lightning, MLflow, Airflow or pandas here."""
