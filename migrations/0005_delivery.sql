-- Push delivery (docs/delivery.md): destinations created through the API and the record of
-- every delivery attempt. Destinations of config.toml are not stored here.

-- A tenant's destination. The signing secret (whsec_...) is in `secret_ciphertext`:
-- AES-256-GCM under the master key `secret_key_id`, with `secret_nonce`, and
-- "switchboard:destination:<tenant>:<id>" as associated data, so a ciphertext moved to
-- another row does not decrypt. `kinds` empty: every event kind.
CREATE TABLE admin_destinations (
    tenant             text        NOT NULL,
    id                 text        NOT NULL,
    url                text        NOT NULL,
    kinds              text[]      NOT NULL DEFAULT '{}',
    timeout_ms         integer     NOT NULL CHECK (timeout_ms > 0),
    max_in_flight      integer     NOT NULL CHECK (max_in_flight > 0),
    requests_per_sec   integer     CHECK (requests_per_sec > 0),
    enabled            boolean     NOT NULL DEFAULT true,
    -- Why the gateway disabled it (gone, failing), NULL when an operator did or it is on.
    disabled_reason    text,
    secret_ciphertext  bytea       NOT NULL,
    secret_nonce       bytea       NOT NULL,
    secret_key_id      text        NOT NULL,
    secret_rotated_at  timestamptz NOT NULL DEFAULT now(),
    created_by         text        NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, id)
);

-- One row per attempt: never a body, request or response, only what happened. The
-- conversation id lets a contact's erasure remove the attempts of its conversations.
CREATE TABLE delivery_attempts (
    id               bigserial   PRIMARY KEY,
    tenant           text        NOT NULL,
    destination      text        NOT NULL,
    event_id         text        NOT NULL,
    conversation_id  text,
    attempt          integer     NOT NULL,
    at               timestamptz NOT NULL DEFAULT now(),
    outcome          text        NOT NULL,
    status           integer,
    latency_ms       integer     NOT NULL,
    error            text
);
CREATE INDEX delivery_attempts_destination ON delivery_attempts (tenant, destination, id);
CREATE INDEX delivery_attempts_conversation ON delivery_attempts (tenant, conversation_id);
CREATE INDEX delivery_attempts_at ON delivery_attempts (at);
