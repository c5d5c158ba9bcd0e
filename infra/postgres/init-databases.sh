#!/bin/sh
# Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d): one role and database
# per service, so a leaked MLflow password does not open Prefect's database. Passwords come from the
# container's environment (infra/.env) and reach psql as variables (:'pw' quotes them), never as SQL text.
set -eu
: "${MLFLOW_DB_PASSWORD:?}" "${PREFECT_DB_PASSWORD:?}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v mlflow_pw="$MLFLOW_DB_PASSWORD" -v prefect_pw="$PREFECT_DB_PASSWORD" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_pw';
CREATE ROLE prefect LOGIN PASSWORD :'prefect_pw';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
CREATE DATABASE prefect OWNER prefect;
SQL
