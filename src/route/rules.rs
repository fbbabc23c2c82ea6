//! Rule evaluation: a pure function from (rule set, event, clock) to the plan of where the
//! conversation should go. No I/O and no state: the same inputs always give the same plan,
//! which is what makes `switchboard routing simulate` and replays trustworthy.

use serde::Deserialize;

use crate::config::routing::{CompiledConditions, Rule, Ruleset, Target};
use crate::event::{Channel, Direction, EventKind, Provider};

/// The fields of an event that routing reads, borrowed from its JSON (the rest, `raw`
/// included, is skipped without being built).
#[derive(Debug, Deserialize)]
pub struct EventView {
    pub event_id: String,
    pub kind: EventKind,
    pub tenant: String,
    pub source: String,
    pub provider: Provider,
    pub channel: Channel,
    pub direction: Direction,
    #[serde(default)]
    pub conversation_id: Option<String>,
    #[serde(default)]
    pub contact: Option<PartyView>,
    #[serde(default)]
    pub business: Option<PartyView>,
    #[serde(default)]
    pub message: Option<MessageView>,
    #[serde(default)]
    pub assignment: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct PartyView {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct MessageView {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub referral: Option<serde_json::Value>,
}

impl EventView {
    /// Whether this event can open or continue a conversation: something the contact did
    /// (a message, reaction, button tap or referral), in a known conversation. Statuses,
    /// echoes of our own messages and account notifications never touch assignments.
    pub fn routable(&self) -> bool {
        matches!(
            self.kind,
            EventKind::Message | EventKind::Reaction | EventKind::Postback | EventKind::Referral
        ) && self.direction == Direction::Inbound
            && self.conversation_id.is_some()
            && self.contact.is_some()
    }

    fn text(&self) -> Option<&str> {
        self.message.as_ref()?.text.as_deref()
    }

    fn referral_ids(&self) -> Vec<String> {
        let Some(r) = self.message.as_ref().and_then(|m| m.referral.as_ref()) else {
            return Vec::new();
        };
        // WhatsApp: source_id (the ad or post id); Messenger/Instagram: ref, ad_id.
        ["source_id", "ad_id", "ref", "ctwa_clid"]
            .iter()
            .filter_map(|k| r.get(*k).and_then(|v| v.as_str()).map(str::to_string))
            .collect()
    }
}

/// Where a conversation should go: the rule that matched (None: the tenant default), its
/// target, and the fallback after a wait.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    pub rule: Option<&'a Rule>,
    pub target: &'a Target,
    pub priority: u8,
}

impl Plan<'_> {
    pub fn rule_id(&self) -> Option<&str> {
        self.rule.map(|r| r.id.as_str())
    }
    pub fn fallback(&self) -> Option<(&Target, u64)> {
        let r = self.rule?;
        r.fallback.as_ref().map(|f| (f, r.overflow_after_ms))
    }
}

/// First matching rule wins; none → the tenant default.
pub fn plan<'a>(rs: &'a Ruleset, ev: &EventView, now_ms: u64) -> Plan<'a> {
    for r in &rs.rules {
        if matches(rs, &r.when, ev, now_ms) {
            return Plan {
                rule: Some(r),
                target: &r.target,
                priority: r.priority,
            };
        }
    }
    Plan {
        rule: None,
        target: &rs.default,
        priority: 0,
    }
}

fn any_eq(list: &[String], v: &str) -> bool {
    list.iter().any(|x| x == v)
}

pub fn matches(rs: &Ruleset, c: &CompiledConditions, ev: &EventView, now_ms: u64) -> bool {
    if !c.channels.is_empty() && !c.channels.contains(&ev.channel) {
        return false;
    }
    if !c.providers.is_empty() && !any_eq(&c.providers, ev.provider.as_str()) {
        return false;
    }
    if !c.sources.is_empty() && !any_eq(&c.sources, &ev.source) {
        return false;
    }
    let business = ev.business.as_ref().map(|b| b.id.as_str()).unwrap_or("");
    if !c.businesses.is_empty() && !any_eq(&c.businesses, business) {
        return false;
    }
    let contact = ev.contact.as_ref().map(|b| b.id.as_str()).unwrap_or("");
    if !c.contact_prefixes.is_empty()
        && !c
            .contact_prefixes
            .iter()
            .any(|p| contact.starts_with(p.as_str()))
    {
        return false;
    }
    if let Some(set) = &c.contacts {
        if !set.contains(contact) {
            return false;
        }
    }
    if !c.languages.is_empty() {
        let lang = ev
            .contact
            .as_ref()
            .and_then(|p| p.language.as_deref())
            .unwrap_or("")
            .to_ascii_lowercase();
        // "es" matches "es", "es-ES", "es_MX".
        let primary = lang.split(['-', '_']).next().unwrap_or("");
        if !c.languages.iter().any(|l| *l == lang || *l == primary) {
            return false;
        }
    }
    if !c.message_types.is_empty() {
        let t = ev.message.as_ref().map(|m| m.kind.as_str()).unwrap_or("");
        if !any_eq(&c.message_types, t) {
            return false;
        }
    }
    if let Some(want) = c.referral {
        let has = ev.message.as_ref().is_some_and(|m| m.referral.is_some())
            || ev.kind == EventKind::Referral;
        if has != want {
            return false;
        }
    }
    if !c.referral_ids.is_empty() {
        let ids = ev.referral_ids();
        if !ids.iter().any(|id| any_eq(&c.referral_ids, id)) {
            return false;
        }
    }
    if !c.keywords.is_empty() || c.text_regex.is_some() {
        let text = ev.text().unwrap_or("");
        if !c.keywords.is_empty() && !has_keyword(text, &c.keywords) {
            return false;
        }
        if let Some(re) = &c.text_regex {
            if !re.is_match(text) {
                return false;
            }
        }
    }
    if let Some(cal) = c.within_hours {
        if !rs.calendars[cal].is_open(now_ms) {
            return false;
        }
    }
    if let Some(cal) = c.outside_hours {
        if rs.calendars[cal].is_open(now_ms) {
            return false;
        }
    }
    true
}

/// Whole-word (or whole-phrase) match, case-insensitive: "price" matches "Price?" but not
/// "priceless".
fn has_keyword(text: &str, keywords: &[String]) -> bool {
    let lower = text.to_lowercase();
    keywords.iter().any(|k| {
        let mut from = 0;
        while let Some(pos) = lower[from..].find(k.as_str()) {
            let start = from + pos;
            let end = start + k.len();
            let before = lower[..start].chars().next_back();
            let after = lower[end..].chars().next();
            let boundary = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
            if boundary(before) && boundary(after) {
                return true;
            }
            from = start + lower[start..].chars().next().map_or(1, char::len_utf8);
        }
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::routing::{
        AgentConfig, CalendarConfig, Conditions, RoutingConfig, RuleConfig, TeamConfig,
    };

    fn ruleset(rules: Vec<(&str, Conditions)>) -> Ruleset {
        let mut cfg = RoutingConfig {
            default_team: Some("support".into()),
            default_strategy: "least_loaded".into(),
            max_queued: 10,
            ..Default::default()
        };
        cfg.teams.insert("support".into(), TeamConfig::default());
        cfg.agents.insert(
            "alice".into(),
            AgentConfig {
                teams: vec!["support".into()],
                ..Default::default()
            },
        );
        cfg.contact_lists
            .insert("vip".into(), vec!["15550000001".into()]);
        cfg.calendars.insert(
            "office".into(),
            CalendarConfig {
                timezone: "UTC".into(),
                hours: [("mon".to_string(), vec!["09:00-17:00".to_string()])].into(),
                holidays: vec![],
            },
        );
        cfg.rules = rules
            .into_iter()
            .map(|(id, when)| RuleConfig {
                id: id.into(),
                when,
                team: Some("support".into()),
                ..Default::default()
            })
            .collect();
        Ruleset::compile("t", 1, cfg, "routing", &|_| true).expect("valid rule set")
    }

    fn event(contact: &str, text: &str) -> serde_json::Value {
        serde_json::json!({
            "event_id": "evt_1", "kind": "message", "tenant": "t", "source": "meta_main",
            "provider": "meta", "channel": "whatsapp", "direction": "inbound",
            "conversation_id": "conv_1",
            "contact": {"id": contact, "language": "es-MX"},
            "business": {"id": "106540352242922"},
            "message": {"type": "text", "text": text}
        })
    }

    fn view(v: serde_json::Value) -> EventView {
        serde_json::from_value(v).unwrap()
    }

    /// Monday 2026-11-30 10:00 UTC (office open) and 20:00 (closed).
    const OPEN: u64 = 1_796_032_800_000;
    const CLOSED: u64 = 1_796_068_800_000;

    /// Each condition, alone, matching and not matching.
    #[test]
    fn every_condition_matches_and_refuses() {
        let base = event("34600111222", "Where is my ORDER #123?");
        let c = |f: fn(&mut Conditions)| {
            let mut w = Conditions::default();
            f(&mut w);
            w
        };
        let cases: Vec<(&str, Conditions, serde_json::Value, bool)> = vec![
            (
                "channel",
                c(|w| w.channels = vec!["whatsapp".into()]),
                base.clone(),
                true,
            ),
            (
                "channel",
                c(|w| w.channels = vec!["sms".into()]),
                base.clone(),
                false,
            ),
            (
                "provider",
                c(|w| w.providers = vec!["meta".into()]),
                base.clone(),
                true,
            ),
            (
                "provider",
                c(|w| w.providers = vec!["twilio".into()]),
                base.clone(),
                false,
            ),
            (
                "source",
                c(|w| w.sources = vec!["meta_main".into()]),
                base.clone(),
                true,
            ),
            (
                "source",
                c(|w| w.sources = vec!["other".into()]),
                base.clone(),
                false,
            ),
            (
                "business",
                c(|w| w.businesses = vec!["106540352242922".into()]),
                base.clone(),
                true,
            ),
            (
                "business",
                c(|w| w.businesses = vec!["1".into()]),
                base.clone(),
                false,
            ),
            (
                "prefix",
                c(|w| w.contact_prefixes = vec!["55".into(), "34".into()]),
                base.clone(),
                true,
            ),
            (
                "prefix",
                c(|w| w.contact_prefixes = vec!["55".into()]),
                base.clone(),
                false,
            ),
            (
                "list",
                c(|w| w.contact_lists = vec!["vip".into()]),
                event("15550000001", "x"),
                true,
            ),
            (
                "list",
                c(|w| w.contact_lists = vec!["vip".into()]),
                base.clone(),
                false,
            ),
            (
                "keyword",
                c(|w| w.keywords = vec!["order".into()]),
                base.clone(),
                true,
            ),
            (
                "keyword",
                c(|w| w.keywords = vec!["ord".into()]),
                base.clone(),
                false,
            ),
            (
                "regex",
                c(|w| w.text_regex = Some(r"(?i)order\s+#\d+".into())),
                base.clone(),
                true,
            ),
            (
                "regex",
                c(|w| w.text_regex = Some(r"^refund".into())),
                base.clone(),
                false,
            ),
            (
                "language",
                c(|w| w.languages = vec!["es".into()]),
                base.clone(),
                true,
            ),
            (
                "language",
                c(|w| w.languages = vec!["pt".into()]),
                base.clone(),
                false,
            ),
            (
                "type",
                c(|w| w.message_types = vec!["text".into()]),
                base.clone(),
                true,
            ),
            (
                "type",
                c(|w| w.message_types = vec!["image".into()]),
                base.clone(),
                false,
            ),
            (
                "no referral",
                c(|w| w.referral = Some(false)),
                base.clone(),
                true,
            ),
            (
                "referral",
                c(|w| w.referral = Some(true)),
                base.clone(),
                false,
            ),
        ];
        for (name, when, ev, expected) in cases {
            let rs = ruleset(vec![("r", when)]);
            let got = plan(&rs, &view(ev), OPEN).rule_id() == Some("r");
            assert_eq!(got, expected, "condition {name}");
        }
        // Referral ids: the ad that brought the contact.
        let mut ad = base.clone();
        ad["message"]["referral"] = serde_json::json!({"source_id": "120208", "source_type": "ad"});
        let rs = ruleset(vec![(
            "ads",
            c(|w| {
                w.referral = Some(true);
                w.referral_ids = vec!["120208".into()];
            }),
        )]);
        assert_eq!(plan(&rs, &view(ad.clone()), OPEN).rule_id(), Some("ads"));
        ad["message"]["referral"]["source_id"] = "999".into();
        assert_eq!(plan(&rs, &view(ad), OPEN).rule_id(), None);
    }

    #[test]
    fn hours_first_match_wins_and_the_default_catches_the_rest() {
        let rs = ruleset(vec![
            (
                "night",
                Conditions {
                    outside_hours: Some("office".into()),
                    ..Default::default()
                },
            ),
            (
                "day",
                Conditions {
                    within_hours: Some("office".into()),
                    ..Default::default()
                },
            ),
            ("everything", Conditions::default()),
        ]);
        let ev = view(event("1", "hi"));
        assert_eq!(plan(&rs, &ev, OPEN).rule_id(), Some("day"));
        assert_eq!(plan(&rs, &ev, CLOSED).rule_id(), Some("night"));
        let rs = ruleset(vec![(
            "sms-only",
            Conditions {
                channels: vec!["sms".into()],
                ..Default::default()
            },
        )]);
        let p = plan(&rs, &ev, OPEN);
        assert_eq!(p.rule_id(), None);
        assert_eq!(p.target.queue, "team:support");
    }

    #[test]
    fn only_what_the_contact_did_is_routable() {
        let mut status = event("1", "x");
        status["kind"] = "status".into();
        assert!(!view(status).routable());
        let mut echo = event("1", "x");
        echo["direction"] = "outbound".into();
        assert!(!view(echo).routable());
        assert!(view(event("1", "x")).routable());
    }

    #[test]
    fn keywords_match_whole_words_in_any_case() {
        let k = vec!["price".to_string(), "quiero comprar".to_string()];
        assert!(has_keyword("What's the PRICE?", &k));
        assert!(has_keyword("hola, quiero comprar algo", &k));
        assert!(!has_keyword("priceless", &k));
        assert!(!has_keyword("", &k));
        assert!(has_keyword("¿precio? price", &k));
    }
}
