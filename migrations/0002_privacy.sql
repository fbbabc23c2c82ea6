-- Privacy and administration: the audit log, erasures, Meta data deletion requests and the
-- sources seen in the configuration (for the retention of disconnected sources).

-- Append-only: the database itself refuses UPDATE, DELETE and TRUNCATE, whoever asks.
CREATE TABLE audit_log (
    id      bigserial   PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text        NOT NULL,
    tenant  text,
    action  text        NOT NULL,
    target  text        NOT NULL,
    before  jsonb,
    after   jsonb
);
CREATE INDEX audit_log_tenant_at ON audit_log (tenant, at);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();

-- Contacts erased, by a hash of (tenant, contact id) rather than the id itself: the
-- persister skips events of an erased contact received before the erasure (they may still
-- be on their way through the streams), without this table keeping the identity.
CREATE TABLE erasures (
    tenant        text        NOT NULL,
    contact_hash  text        NOT NULL,
    erased_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, contact_hash)
);

-- Meta's data deletion callback: one row per request, looked up by its confirmation code.
CREATE TABLE deletion_requests (
    confirmation_code  text        PRIMARY KEY,
    source             text        NOT NULL,
    user_hash          text        NOT NULL,
    status             text        NOT NULL,
    requested_at       timestamptz NOT NULL DEFAULT now(),
    completed_at       timestamptz,
    detail             jsonb
);

-- Sources named in the configuration, and since when one is no longer there.
CREATE TABLE sources (
    source           text        PRIMARY KEY,
    provider         text        NOT NULL,
    first_seen_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at     timestamptz NOT NULL DEFAULT now(),
    disconnected_at  timestamptz
);
