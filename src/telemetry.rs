//! Logging setup (tracing): text for people, JSON for pipelines. `RUST_LOG` overrides the
//! configured level.
//!
//! Whatever either says, other crates log at INFO at most ([`privacy_cap`]): below that,
//! libraries print what passes through them (tokio_postgres logs every statement with its
//! parameters at DEBUG: contact ids and message text), and no message content or contact
//! identifier may reach the logs at any level.

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat};

/// Whether an event or span may be logged at all: this crate's at any level, every other
/// crate's (including `log` records of libraries such as tokio_postgres) at INFO or above.
pub fn privacy_cap(meta: &Metadata<'_>) -> bool {
    let target = meta.target();
    let ours = target == "switchboard" || target.starts_with("switchboard::");
    ours || *meta.level() <= Level::INFO
}

/// Installs the global subscriber; a second call (tests) keeps the first one.
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = filter.and(filter_fn(privacy_cap));
    let registry = tracing_subscriber::registry();
    let _ = match cfg.format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .with_target(false)
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(fmt::layer().with_target(false).with_filter(filter))
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::callsite::Identifier;
    use tracing::field::FieldSet;
    use tracing::metadata::Kind;

    struct Site;
    impl tracing::callsite::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unreachable!()
        }
    }
    static SITE: Site = Site;

    fn meta(target: &'static str, level: Level) -> Metadata<'static> {
        Metadata::new(
            "e",
            target,
            level,
            None,
            None,
            None,
            FieldSet::new(&[], Identifier(&SITE)),
            Kind::EVENT,
        )
    }

    #[test]
    fn other_crates_are_capped_at_info_and_ours_are_not() {
        assert!(!privacy_cap(&meta("tokio_postgres::query", Level::DEBUG)));
        assert!(!privacy_cap(&meta("tokio_postgres", Level::TRACE)));
        assert!(!privacy_cap(&meta("actix_http::h1", Level::DEBUG)));
        assert!(privacy_cap(&meta("tokio_postgres", Level::INFO)));
        assert!(privacy_cap(&meta("redis", Level::WARN)));
        assert!(privacy_cap(&meta("switchboard::ingest", Level::DEBUG)));
        assert!(privacy_cap(&meta("switchboard", Level::TRACE)));
        assert!(!privacy_cap(&meta("switchboardx", Level::DEBUG)));
    }
}
