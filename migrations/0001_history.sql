-- History: what the persister writes from the events stream (DESIGN.md step 10).
-- Every table is keyed so that writing the same event twice changes nothing.

-- One row per conversation; the routing columns follow the highest assignment seq seen.
CREATE TABLE conversations (
    tenant            text        NOT NULL,
    conversation_id   text        NOT NULL,
    channel           text        NOT NULL,
    source            text        NOT NULL,
    provider          text        NOT NULL,
    contact_id        text,
    business_id       text,
    agent             text,
    team              text,
    queue             text,
    state             text,
    assignment_seq    bigint      NOT NULL DEFAULT 0,
    first_message_at  timestamptz,
    last_message_at   timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, conversation_id)
);
CREATE INDEX conversations_contact ON conversations (tenant, contact_id);
CREATE INDEX conversations_source ON conversations (source);
CREATE INDEX conversations_updated ON conversations (tenant, updated_at);

-- Every event that is not a status or an assignment change: messages (both directions),
-- reactions, postbacks, referrals, system messages, notifications, provider errors.
-- status/status_rank mirror `deliveries` for messages we have.
CREATE TABLE messages (
    event_id             text        PRIMARY KEY,
    tenant               text        NOT NULL,
    conversation_id      text,
    source               text        NOT NULL,
    provider             text        NOT NULL,
    channel              text        NOT NULL,
    contact_id           text,
    business_id          text,
    provider_message_id  text,
    direction            text        NOT NULL,
    kind                 text        NOT NULL,
    type                 text,
    text                 text,
    occurred_at          timestamptz NOT NULL,
    received_at          timestamptz NOT NULL,
    status               text,
    status_rank          smallint    NOT NULL DEFAULT 0,
    status_at            timestamptz,
    event                jsonb       NOT NULL
);
CREATE INDEX messages_provider_message ON messages (tenant, provider, provider_message_id);
CREATE INDEX messages_conversation ON messages (tenant, conversation_id, occurred_at);
CREATE INDEX messages_contact ON messages (tenant, contact_id);
CREATE INDEX messages_received ON messages (tenant, received_at);
CREATE INDEX messages_source ON messages (source);

-- Every status event, as received (sent, delivered, read, failed... in any order).
CREATE TABLE message_statuses (
    event_id             text        PRIMARY KEY,
    tenant               text        NOT NULL,
    conversation_id      text,
    source               text        NOT NULL,
    provider             text        NOT NULL,
    channel              text        NOT NULL,
    contact_id           text,
    provider_message_id  text,
    state                text        NOT NULL,
    provider_state       text,
    status_rank          smallint    NOT NULL,
    occurred_at          timestamptz NOT NULL,
    received_at          timestamptz NOT NULL,
    event                jsonb       NOT NULL
);
CREATE INDEX message_statuses_message ON message_statuses (tenant, provider, provider_message_id);
CREATE INDEX message_statuses_contact ON message_statuses (tenant, contact_id);
CREATE INDEX message_statuses_received ON message_statuses (tenant, received_at);
CREATE INDEX message_statuses_source ON message_statuses (source);

-- The delivery state of each provider message, including the ones the business sent through
-- the provider's API (which never reach us as messages). It only moves forward by rank:
-- sent < delivered < read < played; failed, undelivered, rejected and expired are final.
CREATE TABLE deliveries (
    tenant               text        NOT NULL,
    provider             text        NOT NULL,
    provider_message_id  text        NOT NULL,
    conversation_id      text,
    contact_id           text,
    source               text        NOT NULL,
    status               text        NOT NULL,
    status_rank          smallint    NOT NULL,
    status_at            timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, provider, provider_message_id)
);
CREATE INDEX deliveries_contact ON deliveries (tenant, contact_id);
CREATE INDEX deliveries_source ON deliveries (source);
CREATE INDEX deliveries_updated ON deliveries (tenant, updated_at);

-- Every routing decision or change that carried an assignment, by the event that carried it.
CREATE TABLE assignments (
    event_id         text        PRIMARY KEY,
    tenant           text        NOT NULL,
    conversation_id  text,
    source           text        NOT NULL,
    contact_id       text,
    seq              bigint      NOT NULL,
    action           text        NOT NULL,
    agent            text,
    previous_agent   text,
    team             text,
    queue            text,
    rule             text,
    strategy         text        NOT NULL,
    reason           text        NOT NULL,
    queued           boolean     NOT NULL DEFAULT false,
    waited           boolean     NOT NULL DEFAULT false,
    wait_ms          bigint,
    at               timestamptz NOT NULL
);
CREATE INDEX assignments_conversation ON assignments (tenant, conversation_id, seq);
CREATE INDEX assignments_contact ON assignments (tenant, contact_id);
CREATE INDEX assignments_at ON assignments (tenant, at);
CREATE INDEX assignments_source ON assignments (source);
