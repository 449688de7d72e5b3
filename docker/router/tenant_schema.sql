-- What `tenants add ID --isolation schema|database` creates in the new tenant's own namespace, as its
-- own role (router.yaml tenant.schema_sql). Shared tenants use the shared `items` table instead.
CREATE TABLE IF NOT EXISTS items (
    id bigserial PRIMARY KEY,
    tenant_id text NOT NULL DEFAULT current_setting('app.tenant_id'),
    name text NOT NULL
);
