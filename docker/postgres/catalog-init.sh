#!/bin/sh
# The catalog's first start (docker-entrypoint-initdb.d), as the superuser: the router's role (LOGIN
# only) and its own database, router_catalog, where `tenant-router catalog init` creates the schema.
set -eu

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    --set=router_password="$TENANT_ROUTER_SERVER_PASSWORD" <<'SQL'
CREATE ROLE tenant_router LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION
    PASSWORD :'router_password';
CREATE DATABASE router_catalog OWNER tenant_router;
SQL
