#!/bin/sh
# A shard's first start (docker-entrypoint-initdb.d), as the superuser, in the shard's database:
# - the router's role: LOGIN and nothing else; it owns nothing here and can create nothing
#   (`tenant-router check` fails otherwise);
# - the shared `items` table, created and owned by the admin (this superuser); the setup service's
#   `rls enable items` then protects it. Its key leads with the tenant column, which moves need;
# - pg_basebackup (the replica) may connect for replication, with a password.
set -eu

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set=router_password="$TENANT_ROUTER_SERVER_PASSWORD" <<'SQL'
CREATE ROLE tenant_router LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION
    PASSWORD :'router_password';
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
CREATE TABLE items (
    id bigserial,
    tenant_id text NOT NULL DEFAULT current_setting('app.tenant_id'),
    name text NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
SQL

echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
