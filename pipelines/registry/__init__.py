"""The MLflow model registry: versions and aliases, promotion and rollback, the audit trail, the evaluation gate."""
