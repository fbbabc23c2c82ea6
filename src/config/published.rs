//! Credentials the README publishes (the demo configuration's), and the rule that keeps
//! them off the network: the gateway refuses to serve on anything but a loopback address
//! while any of them is configured ([`exposure_problems`]); `check-config` says the same.

use std::net::SocketAddr;

use super::{Config, SourceConfig, FILE_ENV_PREFIX};

/// The demo values of config.toml, printed in the README (and older demo values).
pub const PUBLISHED: &[&str] = &[
    "demo-api-token-published-in-the-readme",
    "demo-api-token",
    "demo-app-secret-do-not-use-in-production",
    "demo-verify-token",
];

fn published(value: &str) -> bool {
    PUBLISHED.contains(&value)
}

/// Every key holding a published credential, each with how to set a real one.
pub fn published_credentials(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if config
        .api
        .token
        .as_ref()
        .is_some_and(|t| published(t.expose()))
    {
        out.push(format!(
            "api.token is the demo token published in the README: set a random one of at least {} characters (e.g. `openssl rand -hex 32`) in SWITCHBOARD__API__TOKEN or {FILE_ENV_PREFIX}API__TOKEN=<file>",
            super::MIN_API_TOKEN_CHARS
        ));
    }
    for (id, source) in &config.sources {
        let SourceConfig::Meta(m) = source else {
            continue;
        };
        let env = id.to_ascii_uppercase();
        if m.app_secrets.iter().any(|s| published(s.expose())) {
            out.push(format!(
                "sources.{id}.app_secrets holds the demo app secret published in the README: set your Meta app's App Secret in SWITCHBOARD__SOURCES__{env}__APP_SECRETS='[\"...\"]' or {FILE_ENV_PREFIX}SOURCES__{env}__APP_SECRETS=<file>"
            ));
        }
        if published(m.verify_token.expose()) {
            out.push(format!(
                "sources.{id}.verify_token is the demo verify token published in the README: set your own in SWITCHBOARD__SOURCES__{env}__VERIFY_TOKEN or {FILE_ENV_PREFIX}SOURCES__{env}__VERIFY_TOKEN=<file>"
            ));
        }
    }
    out
}

/// Whether `server.bind` reaches beyond this machine (anything but a loopback address).
pub fn listens_beyond_loopback(config: &Config) -> bool {
    config
        .server
        .bind
        .parse::<SocketAddr>()
        .map_or(true, |a| !a.ip().is_loopback())
}

/// Why this configuration must not be served: published credentials on a non-loopback
/// address. Empty when it may.
pub fn exposure_problems(config: &Config) -> Vec<String> {
    if !listens_beyond_loopback(config) {
        return Vec::new();
    }
    published_credentials(config)
}

/// The refusal, as one message: what is wrong, each key, and the way out.
pub fn refusal(config: &Config, problems: &[String]) -> String {
    format!(
        "refusing to serve on server.bind = {} with credentials published in the README (anyone could use them):\n  - {}\nSet real values, or listen on a loopback address (e.g. 127.0.0.1:8080) to try the demo.",
        config.server.bind,
        problems.join("\n  - ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = r#"
        [api]
        token = "demo-api-token-published-in-the-readme"
        [tenants.acme]
        [sources.meta_main]
        provider = "meta"
        app_secrets = ["demo-app-secret-do-not-use-in-production"]
        verify_token = "demo-verify-token"
        channels = { "123" = "acme" }
    "#;

    #[test]
    fn published_credentials_are_refused_beyond_loopback_only() {
        let mut c = Config::from_toml(DEMO).unwrap();
        assert!(exposure_problems(&c).is_empty(), "127.0.0.1 by default");
        assert_eq!(published_credentials(&c).len(), 3);
        for bind in ["0.0.0.0:8080", "[::]:8080", "10.1.2.3:80"] {
            c.server.bind = bind.into();
            let p = exposure_problems(&c);
            assert_eq!(p.len(), 3, "{bind}");
            let text = refusal(&c, &p);
            for key in [
                "api.token",
                "sources.meta_main.app_secrets",
                "sources.meta_main.verify_token",
                "SWITCHBOARD__API__TOKEN",
            ] {
                assert!(text.contains(key), "{text}");
            }
        }
        c.server.bind = "[::1]:8080".into();
        assert!(exposure_problems(&c).is_empty());
    }

    #[test]
    fn shipped_demo_config_publishes_exactly_what_the_readme_prints() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let c =
            Config::from_toml(&std::fs::read_to_string(root.join("config.toml")).unwrap()).unwrap();
        assert_eq!(published_credentials(&c).len(), 3);
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        for value in &PUBLISHED[..1] {
            assert!(readme.contains(value), "{value}");
        }
        for value in &PUBLISHED[2..] {
            assert!(readme.contains(value), "{value}");
        }
    }
}
