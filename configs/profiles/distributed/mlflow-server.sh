#!/usr/bin/env bash
# The MLflow tracking and registry server of the distributed profile: metadata in PostgreSQL, artifacts proxied
# (clients read and write them through this server's http:// URI: no bucket credentials on workers).
# `make stack-up` runs the same command with the addresses of stack.yaml. In production, point
# --artifacts-destination at your object store (s3://bucket/viops) and run more --workers behind a load balancer.
set -euo pipefail
: "${MLFLOW_BACKEND_STORE_URI:=postgresql+psycopg2://postgres@127.0.0.1:5432/viops_mlflow}"
: "${MLFLOW_ARTIFACTS_DESTINATION:=$PWD/.stack/mlflow-artifacts}"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false   # no background job runners: viops does not use them
exec mlflow server \
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
    --host 127.0.0.1 --port 5000 --workers 2
