#!/bin/bash
# First start of the postgres container: one database and one login per service, passwords from
# the environment (docker/.env), none in this file. The alerts roles (writer owner, read-only
# analyst) are made by `fleetwatch db init`, which the compose stack's `db-init` service runs.
set -euo pipefail

create() {  # create <database> <user> <password>
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
       -v db="$1" -v usr="$2" -v pw="$3" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'usr', :'pw')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'usr') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'usr')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'db') \gexec
SQL
}

create airflow airflow "${AIRFLOW_DB_PASSWORD:?set AIRFLOW_DB_PASSWORD in docker/.env}"
create mlflow mlflow "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD in docker/.env}"
create alerts fleetwatch_writer "${ALERTS_WRITER_PASSWORD:?set ALERTS_WRITER_PASSWORD in docker/.env}"
