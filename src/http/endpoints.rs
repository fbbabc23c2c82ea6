//! Every route the gateway serves, with who may call it: the one table that
//! [`super::authorize`] enforces and the OpenAPI document (`GET /v1/openapi.json`) is made
//! of. A route missing here is refused (403) by `authorize`, and a test checks that every
//! route registered in the code is in this table and answers.

use crate::admin::KeyRole::{self, Admin, Agent, Owner, Viewer};

/// Which keys an endpoint accepts, by tenant scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// No key (webhooks, probes, metrics, the OpenAPI document).
    Public,
    /// Keys of global scope only: the operation spans tenants.
    Global,
    /// The `{tenant}` of the path must be in the key's scope.
    Tenant,
    /// Any key; what it returns or may change is limited to the key's scope.
    Scoped,
}

#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub method: &'static str,
    /// The route pattern, as actix matches it and as OpenAPI writes it.
    pub path: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    pub scope: Scope,
    pub roles: &'static [KeyRole],
    /// An `agent` key may only act on the `{agent}` of the path that it is.
    pub own_agent: bool,
    /// Answer of success.
    pub ok: u16,
}

const ALL: &[KeyRole] = &[Owner, Admin, Agent, Viewer];
const READ: &[KeyRole] = &[Owner, Admin, Viewer];
const MANAGE: &[KeyRole] = &[Owner, Admin];
const OWNER: &[KeyRole] = &[Owner];
const NONE: &[KeyRole] = &[];

const fn e(
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    scope: Scope,
    roles: &'static [KeyRole],
) -> Endpoint {
    Endpoint {
        method,
        path,
        tag,
        summary,
        scope,
        roles,
        own_agent: false,
        ok: 200,
    }
}

const fn created(mut ep: Endpoint) -> Endpoint {
    ep.ok = 201;
    ep
}

const fn own_agent(mut ep: Endpoint) -> Endpoint {
    ep.own_agent = true;
    ep
}

use Scope::{Global, Public, Scoped, Tenant};

pub const ENDPOINTS: &[Endpoint] = &[
    // Webhooks and operations.
    e(
        "POST",
        "/webhooks/{source}",
        "webhooks",
        "A provider's webhook; 200 once durably accepted",
        Public,
        NONE,
    ),
    e(
        "GET",
        "/webhooks/{source}",
        "webhooks",
        "Meta's verification handshake, or a GET delivery",
        Public,
        NONE,
    ),
    e(
        "POST",
        "/webhooks/{source}/data-deletion",
        "privacy",
        "Meta's data deletion callback (signed_request)",
        Public,
        NONE,
    ),
    e(
        "GET",
        "/webhooks/{source}/data-deletion/{code}",
        "privacy",
        "Status of a data deletion request",
        Public,
        NONE,
    ),
    e("GET", "/healthz", "operations", "Alive", Public, NONE),
    e(
        "GET",
        "/readyz",
        "operations",
        "Ready: the backend answers",
        Public,
        NONE,
    ),
    e(
        "GET",
        "/metrics",
        "operations",
        "Prometheus metrics",
        Public,
        NONE,
    ),
    e(
        "GET",
        "/v1/openapi.json",
        "operations",
        "This document",
        Public,
        NONE,
    ),
    // Streams.
    e(
        "GET",
        "/v1/events",
        "streams",
        "The newest events (or those after a stream id)",
        Global,
        READ,
    ),
    e(
        "GET",
        "/v1/deadletters",
        "streams",
        "The newest dead letters",
        Global,
        READ,
    ),
    // Tenants.
    e(
        "GET",
        "/v1/tenants",
        "tenants",
        "Tenants in the key's scope (file and API)",
        Scoped,
        READ,
    ),
    created(e(
        "POST",
        "/v1/tenants",
        "tenants",
        "Create a tenant",
        Global,
        MANAGE,
    )),
    e(
        "GET",
        "/v1/tenants/{tenant}",
        "tenants",
        "One tenant",
        Tenant,
        READ,
    ),
    e(
        "PATCH",
        "/v1/tenants/{tenant}",
        "tenants",
        "Rename, disable or enable an API tenant",
        Tenant,
        MANAGE,
    ),
    e(
        "DELETE",
        "/v1/tenants/{tenant}",
        "tenants",
        "Delete an API tenant without sources",
        Global,
        OWNER,
    ),
    // Sources.
    e(
        "GET",
        "/v1/tenants/{tenant}/sources",
        "sources",
        "The tenant's sources (file and API), secrets never shown",
        Tenant,
        READ,
    ),
    created(e(
        "POST",
        "/v1/tenants/{tenant}/sources",
        "sources",
        "Create a source; its secrets are stored encrypted",
        Tenant,
        MANAGE,
    )),
    e(
        "GET",
        "/v1/tenants/{tenant}/sources/{source}",
        "sources",
        "One source, secrets never shown",
        Tenant,
        READ,
    ),
    e(
        "PATCH",
        "/v1/tenants/{tenant}/sources/{source}",
        "sources",
        "Change a source's settings, disable or enable it",
        Tenant,
        MANAGE,
    ),
    e(
        "POST",
        "/v1/tenants/{tenant}/sources/{source}/rotate-secret",
        "sources",
        "Replace a source's secrets",
        Tenant,
        MANAGE,
    ),
    // Push delivery (docs/delivery.md).
    e(
        "GET",
        "/v1/tenants/{tenant}/destinations",
        "destinations",
        "The tenant's push destinations (file and API), secrets never shown",
        Tenant,
        READ,
    ),
    created(e(
        "POST",
        "/v1/tenants/{tenant}/destinations",
        "destinations",
        "Create a destination; its whsec_ secret is shown once, then stored encrypted",
        Tenant,
        MANAGE,
    )),
    e(
        "GET",
        "/v1/tenants/{tenant}/destinations/{destination}",
        "destinations",
        "One destination and its state, secret never shown",
        Tenant,
        READ,
    ),
    e(
        "PUT",
        "/v1/tenants/{tenant}/destinations/{destination}",
        "destinations",
        "Replace a destination's settings (a new secret is shown once); enable or disable it",
        Tenant,
        MANAGE,
    ),
    e(
        "DELETE",
        "/v1/tenants/{tenant}/destinations/{destination}",
        "destinations",
        "Delete a destination with its queued events and recorded attempts",
        Tenant,
        MANAGE,
    ),
    e(
        "GET",
        "/v1/tenants/{tenant}/destinations/{destination}/attempts",
        "destinations",
        "The destination's delivery attempts (status, latency, error), paged",
        Tenant,
        READ,
    ),
    e(
        "POST",
        "/v1/tenants/{tenant}/destinations/{destination}/redeliver",
        "destinations",
        "Queue one event, or the events of a time range, again for this destination",
        Tenant,
        MANAGE,
    ),
    // Routing.
    e(
        "POST",
        "/v1/routing/reload",
        "routing",
        "Reload every tenant's rules from the configuration file",
        Global,
        MANAGE,
    ),
    e(
        "GET",
        "/v1/tenants/{tenant}/routing",
        "routing",
        "The rule set in force",
        Tenant,
        READ,
    ),
    e(
        "PUT",
        "/v1/tenants/{tenant}/routing",
        "routing",
        "Replace the rule set (a new version, validated first)",
        Tenant,
        MANAGE,
    ),
    e(
        "GET",
        "/v1/tenants/{tenant}/routing/versions",
        "routing",
        "Every version set through the API",
        Tenant,
        READ,
    ),
    e(
        "GET",
        "/v1/tenants/{tenant}/routing/versions/{version}",
        "routing",
        "One version's rule set",
        Tenant,
        READ,
    ),
    e(
        "PUT",
        "/v1/tenants/{tenant}/routing/agents/{agent}",
        "routing",
        "Add or replace one agent (a new rule set version)",
        Tenant,
        MANAGE,
    ),
    e(
        "DELETE",
        "/v1/tenants/{tenant}/routing/agents/{agent}",
        "routing",
        "Remove one agent (a new rule set version)",
        Tenant,
        MANAGE,
    ),
    e(
        "PUT",
        "/v1/tenants/{tenant}/routing/teams/{team}",
        "routing",
        "Add or replace one team (a new rule set version)",
        Tenant,
        MANAGE,
    ),
    e(
        "DELETE",
        "/v1/tenants/{tenant}/routing/teams/{team}",
        "routing",
        "Remove one team (a new rule set version)",
        Tenant,
        MANAGE,
    ),
    e(
        "GET",
        "/v1/tenants/{tenant}/agents",
        "routing",
        "Agents' live state",
        Tenant,
        ALL,
    ),
    own_agent(e(
        "PUT",
        "/v1/tenants/{tenant}/agents/{agent}/presence",
        "routing",
        "Set an agent's presence (an agent key: its own)",
        Tenant,
        &[Owner, Admin, Agent],
    )),
    own_agent(e(
        "GET",
        "/v1/tenants/{tenant}/agents/{agent}/conversations",
        "routing",
        "An agent's open conversations, paged (an agent key: its own; viewers: no contact)",
        Tenant,
        ALL,
    )),
    own_agent(e(
        "GET",
        "/v1/tenants/{tenant}/agents/{agent}/stream",
        "routing",
        "Server-Sent Events of an agent's assignments, transfers and closes (an agent key: its own)",
        Tenant,
        &[Owner, Admin, Agent],
    )),
    e(
        "PUT",
        "/v1/tenants/{tenant}/agents/{agent}/capacity",
        "routing",
        "Set an agent's capacity",
        Tenant,
        MANAGE,
    ),
    e(
        "GET",
        "/v1/tenants/{tenant}/queues",
        "routing",
        "Queue depths",
        Tenant,
        ALL,
    ),
    e(
        "GET",
        "/v1/tenants/{tenant}/queues/{queue}/conversations",
        "routing",
        "A queue's waiting conversations in service order, paged (an agent key: queues it serves; viewers: no contact)",
        Tenant,
        ALL,
    ),
    e(
        "GET",
        "/v1/tenants/{tenant}/conversations/{conv}",
        "routing",
        "A conversation's state and history",
        Tenant,
        ALL,
    ),
    e(
        "POST",
        "/v1/tenants/{tenant}/conversations/{conv}/close",
        "routing",
        "Close a conversation",
        Tenant,
        MANAGE,
    ),
    e(
        "POST",
        "/v1/tenants/{tenant}/conversations/{conv}/reopen",
        "routing",
        "Reopen a conversation",
        Tenant,
        MANAGE,
    ),
    e(
        "POST",
        "/v1/tenants/{tenant}/conversations/{conv}/transfer",
        "routing",
        "Transfer a conversation",
        Tenant,
        MANAGE,
    ),
    e(
        "POST",
        "/v1/tenants/{tenant}/conversations/{conv}/accept",
        "routing",
        "Accept the conversation's pending offer (an agent key: only its own offers)",
        Tenant,
        &[Owner, Admin, Agent],
    ),
    e(
        "POST",
        "/v1/tenants/{tenant}/conversations/{conv}/reject",
        "routing",
        "Reject the conversation's pending offer: it goes to the next candidate (an agent key: only its own offers)",
        Tenant,
        &[Owner, Admin, Agent],
    ),
    // Privacy.
    e(
        "DELETE",
        "/v1/tenants/{tenant}/contacts/{contact}",
        "privacy",
        "Erase a contact's history",
        Tenant,
        MANAGE,
    ),
    e(
        "GET",
        "/v1/tenants/{tenant}/contacts/{contact}/export",
        "privacy",
        "Export a contact's history",
        Tenant,
        MANAGE,
    ),
    // Keys, audit, master key.
    e(
        "GET",
        "/v1/api-keys",
        "api-keys",
        "API keys in the key's scope (never their tokens)",
        Scoped,
        MANAGE,
    ),
    created(e(
        "POST",
        "/v1/api-keys",
        "api-keys",
        "Create a key; the token is in this answer only",
        Scoped,
        MANAGE,
    )),
    e(
        "DELETE",
        "/v1/api-keys/{key}",
        "api-keys",
        "Revoke a key",
        Scoped,
        MANAGE,
    ),
    e(
        "GET",
        "/v1/audit",
        "audit",
        "The audit log in the key's scope, newest first",
        Scoped,
        MANAGE,
    ),
    e(
        "POST",
        "/v1/admin/rotate-master-key",
        "admin",
        "Re-encrypt every secret under the first master key",
        Global,
        OWNER,
    ),
];

/// The endpoint of a method and route pattern.
pub fn find(method: &str, pattern: &str) -> Option<&'static Endpoint> {
    ENDPOINTS
        .iter()
        .find(|e| e.method == method && e.path == pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_duplicates_and_public_means_no_roles() {
        let mut seen = std::collections::HashSet::new();
        for e in ENDPOINTS {
            assert!(seen.insert((e.method, e.path)), "{} {}", e.method, e.path);
            assert_eq!(e.scope == Scope::Public, e.roles.is_empty(), "{}", e.path);
            if e.scope == Scope::Tenant {
                assert!(e.path.contains("{tenant}"), "{} {}", e.method, e.path);
            }
            if e.own_agent {
                assert!(e.path.contains("{agent}"));
            }
        }
    }
}
