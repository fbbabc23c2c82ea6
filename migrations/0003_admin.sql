-- Administration through the API: tenants, sources with encrypted secrets, API keys,
-- versioned routing rule sets, and the change counter every replica polls. Changes are
-- recorded in audit_log (0002), which the database keeps append-only.

-- Tenants created through the API (tenants of config.toml are not stored here).
CREATE TABLE tenants (
    id          text        PRIMARY KEY,
    name        text,
    disabled    boolean     NOT NULL DEFAULT false,
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Webhook sources created through the API. `settings` holds only the keys that are not
-- secret (channels, tenant, replay window...); every secret (app secrets, verify tokens,
-- auth tokens, signing keys) is in `secret_ciphertext`: AES-256-GCM of a JSON object, under
-- the master key `secret_key_id`, with `secret_nonce` (96 bits, random per encryption) and
-- the source id as associated data, so a ciphertext moved to another row does not decrypt.
CREATE TABLE admin_sources (
    id                 text        PRIMARY KEY,
    tenant             text        NOT NULL,
    provider           text        NOT NULL,
    settings           jsonb       NOT NULL,
    secret_ciphertext  bytea       NOT NULL,
    secret_nonce       bytea       NOT NULL,
    secret_key_id      text        NOT NULL,
    secret_count       integer     NOT NULL,
    secret_rotated_at  timestamptz NOT NULL DEFAULT now(),
    disabled           boolean     NOT NULL DEFAULT false,
    created_by         text        NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admin_sources_tenant ON admin_sources (tenant);

-- API keys: only the SHA-256 of the token is kept (the token is 32 random bytes, so a hash
-- without salt or stretching cannot be searched); `prefix` identifies a key in lists and in
-- the audit log. tenant NULL = every tenant. agent: the agent an `agent` key acts as.
CREATE TABLE api_keys (
    id                text        PRIMARY KEY,
    prefix            text        NOT NULL UNIQUE,
    token_hash        bytea       NOT NULL UNIQUE,
    name              text,
    role              text        NOT NULL CHECK (role IN ('owner', 'admin', 'agent', 'viewer')),
    tenant            text,
    agent             text,
    requests_per_sec  integer     CHECK (requests_per_sec > 0),
    burst             integer     CHECK (burst > 0),
    created_by        text        NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    revoked_by        text,
    revoked_at        timestamptz,
    CHECK (role <> 'agent' OR (tenant IS NOT NULL AND agent IS NOT NULL))
);

-- Every rule set a tenant had through the API, by version (the routing store holds the one
-- in force; this is the history).
CREATE TABLE routing_rule_sets (
    tenant      text        NOT NULL,
    version     bigint      NOT NULL,
    body        jsonb       NOT NULL,
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, version)
);

-- One row: bumped in the transaction of every change above. Each replica polls it and
-- reloads tenants, sources and keys when it moved.
CREATE TABLE admin_changes (
    id       integer PRIMARY KEY CHECK (id = 1),
    version  bigint  NOT NULL
);
INSERT INTO admin_changes (id, version) VALUES (1, 0);
