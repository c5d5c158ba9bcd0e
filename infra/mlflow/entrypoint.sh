#!/bin/sh
# Start `mlflow server --app-name basic-auth` with its auth config rendered from the environment.
#
# MLflow reads basic-auth settings from the ini file named by MLFLOW_AUTH_CONFIG_PATH; the admin user is
# created on first start from MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD (>= 12 characters;
# MLflow ships no default password). The password never lands in the file; the ini holds the user-store
# URI, which may contain the database password, so it is written mode 600 to a private directory.
# All other `mlflow server` arguments are passed through ("$@").
set -eu
: "${MLFLOW_AUTH_ADMIN_USERNAME:?must name the MLflow admin user}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?must be set (>= 12 characters)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?must be set (CSRF protection of the auth app)}"
: "${MLFLOW_AUTH_DATABASE_URI:?must point at the user store, e.g. postgresql+psycopg2://...}"
dir=$(mktemp -d "${TMPDIR:-/tmp}/mlflow-auth.XXXXXX")
ini="$dir/basic_auth.ini"
umask 077
# configparser treats % as interpolation: double it in values
esc() { printf '%s' "$1" | sed 's/%/%%/g'; }
cat > "$ini" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = $(esc "$MLFLOW_AUTH_DATABASE_URI")
admin_username = $(esc "$MLFLOW_AUTH_ADMIN_USERNAME")
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$ini"
exec mlflow server --app-name basic-auth "$@"
