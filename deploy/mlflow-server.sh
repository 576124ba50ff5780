#!/usr/bin/env bash
# An MLflow tracking server for the team: runs, params and metrics in PostgreSQL, artifacts (adapters,
# reports, loss curves) served by the server from MLFLOW_ARTIFACTS_DESTINATION (a folder, s3://, gs://...).
#
# Connection settings are libpq's own variables, so the password never appears on a command line:
#   PGHOST PGPORT PGUSER PGPASSWORD   the PostgreSQL server and role
#   MLFLOW_PG_DB                      database for MLflow (default: mlflow; must exist)
#   MLFLOW_ARTIFACTS_DESTINATION      where artifacts go (default: ./mlartifacts)
#   MLFLOW_HOST / MLFLOW_PORT         bind address (default: 127.0.0.1:5000; 0.0.0.0 only behind auth)
#   MLFLOW_WORKERS                    server workers (default: 4)
# Pipeline side: MLFLOW_TRACKING_URI=http://<host>:<port> (or [mlflow] tracking_uri), plus
# MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD when a proxy in front of it asks for them.
set -euo pipefail

: "${PGHOST:?set PGHOST (and PGPORT, PGUSER, PGPASSWORD)}"
: "${PGUSER:?set PGUSER}"
: "${PGPASSWORD:?set PGPASSWORD}"
port="${PGPORT:-5432}"
database="${MLFLOW_PG_DB:-mlflow}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-$PWD/mlartifacts}"
export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"

# No password in the URI: libpq takes it from PGPASSWORD. The explicit driver: SQLAlchemy 2.1 maps plain
# postgresql:// to psycopg 3, which is not installed (psycopg2 comes with dagster-postgres).
export MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://${PGUSER}@${PGHOST}:${port}/${database}"
exec mlflow server \
  --artifacts-destination "$artifacts" \
  --host "${MLFLOW_HOST:-127.0.0.1}" \
  --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-4}"
