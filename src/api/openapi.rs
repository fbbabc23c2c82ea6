//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of every route, made (with utoipa's
//! builders) from the table that authorization enforces, `crate::http::endpoints::ENDPOINTS`: each
//! operation names the roles and the tenant scope it accepts, the success status, and the
//! `{code, message}` refusals every endpoint shares.

use std::sync::OnceLock;

use actix_web::{web, HttpResponse};
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, ObjectBuilder, OpenApi, OpenApiBuilder,
    PathsBuilder, Ref, Required, ResponseBuilder, Type,
};

use crate::http::endpoints::{Endpoint, Scope, ENDPOINTS};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/openapi.json", web::get().to(serve));
}

async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document_json().as_str())
}

fn document_json() -> &'static String {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| document().to_pretty_json().unwrap_or_else(|_| "{}".into()))
}

fn method(m: &str) -> HttpMethod {
    match m {
        "GET" => HttpMethod::Get,
        "POST" => HttpMethod::Post,
        "PUT" => HttpMethod::Put,
        "DELETE" => HttpMethod::Delete,
        "PATCH" => HttpMethod::Patch,
        other => unreachable!("method {other} in the endpoint table"),
    }
}

fn operation_id(e: &Endpoint) -> String {
    let mut id = e.method.to_ascii_lowercase();
    for part in e.path.split('/').filter(|p| !p.is_empty()) {
        id.push('_');
        id.extend(part.chars().filter(|c| !matches!(c, '{' | '}')).map(|c| {
            if c.is_ascii_alphanumeric() {
                c
            } else {
                '_'
            }
        }));
    }
    id
}

fn access(e: &Endpoint) -> String {
    if e.scope == Scope::Public {
        return "No API key.".into();
    }
    let roles: Vec<&str> = e.roles.iter().map(|r| r.as_str()).collect();
    let scope = match e.scope {
        Scope::Global => "keys of global scope only",
        Scope::Tenant => "the path's tenant must be in the key's scope",
        Scope::Scoped => "any scope; limited to the key's tenant",
        Scope::Public => "",
    };
    let own = if e.own_agent {
        "; an agent key only for its own agent"
    } else {
        ""
    };
    format!("Roles: {} ({scope}{own}).", roles.join(", "))
}

fn error_response(what: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(what).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Error")))
            .build(),
    )
}

/// The whole document.
/// Listings paged with `limit` and `after`, answering `{items, next_after}`.
const PAGED: &[&str] = &[
    "/v1/events",
    "/v1/deadletters",
    "/v1/tenants/{tenant}/agents/{agent}/conversations",
    "/v1/tenants/{tenant}/queues/{queue}/conversations",
    "/v1/tenants/{tenant}/destinations/{destination}/attempts",
];

pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for e in ENDPOINTS {
        let mut op = OperationBuilder::new()
            .operation_id(Some(operation_id(e)))
            .summary(Some(e.summary))
            .description(Some(access(e)))
            .tag(e.tag);
        for part in e.path.split('/') {
            if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                op = op.parameter(
                    ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
                );
            }
        }
        if e.method == "GET" && PAGED.contains(&e.path) {
            for (name, what) in [
                ("limit", "items per page, 1..=1000 (default 10)"),
                ("after", "the previous page's next_after"),
            ] {
                op = op.parameter(
                    ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Query)
                        .required(Required::False)
                        .description(Some(what))
                        .schema(Some(ObjectBuilder::new().schema_type(if name == "limit" {
                            Type::Integer
                        } else {
                            Type::String
                        }))),
                );
            }
        }
        if matches!(e.method, "POST" | "PUT" | "PATCH") {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(ObjectBuilder::new().schema_type(Type::Object)))
                            .build(),
                    )
                    .build(),
            ));
        }
        let mut responses = utoipa::openapi::ResponsesBuilder::new().response(
            e.ok.to_string(),
            ResponseBuilder::new().description("success").build(),
        );
        if e.scope != Scope::Public {
            op = op.security(SecurityRequirement::new("bearer", Vec::<String>::new()));
            responses = responses
                .response(
                    "401",
                    error_response("unauthorized: no valid API key").build(),
                )
                .response(
                    "403",
                    error_response(
                        "forbidden: the key's role or tenant scope does not allow it; api_disabled",
                    )
                    .build(),
                )
                .response(
                    "429",
                    error_response("rate_limited: over the key's limit (Retry-After)").build(),
                );
        }
        responses = responses
            .response("400", error_response("bad_request").build())
            .response(
                "404",
                error_response("unknown_* / not_found / postgres_disabled").build(),
            )
            .response(
                "503",
                error_response("dependency_unavailable (Retry-After)").build(),
            );
        paths = paths.path(
            e.path,
            PathItem::new(method(e.method), op.responses(responses.build()).build()),
        );
    }
    let error = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "code",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("stable snake_case code (docs/http-api.md, Errors)")),
        )
        .required("code")
        .property("message", ObjectBuilder::new().schema_type(Type::String))
        .required("message");
    let components = ComponentsBuilder::new()
        .schema("Error", error)
        .security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (sbk_...) created with POST /v1/api-keys, or the [api] token of the configuration (owner, global).",
                    ))
                    .build(),
            ),
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("switchboard")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Webhook ingestion and conversation routing gateway: webhooks, operations, and the /v1 operator and admin API. See docs/admin.md.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_in_the_document_once() {
        let doc: serde_json::Value = serde_json::from_str(document_json()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for e in ENDPOINTS {
            let op = &doc["paths"][e.path][e.method.to_ascii_lowercase()];
            assert!(op.is_object(), "{} {}", e.method, e.path);
            assert_eq!(op["operationId"], operation_id(e));
        }
        let ids: std::collections::HashSet<String> = ENDPOINTS.iter().map(operation_id).collect();
        assert_eq!(ids.len(), ENDPOINTS.len());
    }
}
