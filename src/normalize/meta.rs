//! Meta normalizer: WhatsApp Cloud API (`object = whatsapp_business_account`), Messenger
//! (`page`) and Instagram (`instagram`) webhooks → unified events.
//!
//! Every entry × change × message/status/error (WhatsApp) and every entry × messaging/standby
//! item (Messenger, Instagram) becomes an event; Meta batches up to 1000 updates in one POST
//! and never promises index 0 is the only one. Typed objects Meta documents may be missing
//! (an `interactive` message without its `interactive` object arrives with `value.errors`),
//! ids may be numbers or strings, and new types and fields appear without notice: nothing
//! here assumes a field exists, and what is unknown is carried (as a notification, or with its
//! type verbatim), never dropped. Whatever cannot be attributed to a tenant, or is not a Meta
//! envelope at all, becomes a dead letter.
//!
//! This module must never panic on any input and never fail the request.

use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::util::{finish, millis, raw, s, secs, shared_state, strip_plus, unknown_channel};
use super::{Context, DeadLetter, DeadReason, Normalized};
use crate::event::{
    dedup_key, short_hash, Channel, Direction, Event, EventKind, Location, Media, Message,
    Notification, Party, Provider, ProviderError, Reaction, Reply, ReplyTo, Status,
};
use crate::verify::Verified;

pub fn normalize(req: &Verified, ctx: &Context<'_>) -> Normalized {
    let mut out = Normalized::default();
    let root: Value = match serde_json::from_slice(req.body()) {
        Ok(v) => v,
        Err(e) => {
            out.dead_letters.push(DeadLetter {
                reason: DeadReason::InvalidBody,
                detail: format!("the body is not JSON: {e}"),
                part: None,
            });
            return out;
        }
    };
    // An empty entry array carries nothing, but the invariant is that a verified body yields
    // events or a dead letter; treat it like a missing one.
    let entries = root
        .get("entry")
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty());
    match (root.get("object").and_then(Value::as_str), entries) {
        (Some("whatsapp_business_account"), Some(entries)) => {
            for entry in entries {
                whatsapp_entry(entry, ctx, &mut out);
            }
        }
        (Some(object @ ("page" | "instagram")), Some(entries)) => {
            let channel = if object == "page" {
                Channel::Messenger
            } else {
                Channel::Instagram
            };
            for entry in entries {
                messaging_entry(entry, channel, ctx, &mut out);
            }
        }
        (object, _) => out.dead_letters.push(DeadLetter {
            reason: DeadReason::UnexpectedShape,
            detail: format!(
                "not a Meta webhook envelope (object = {}, entry array {})",
                object.unwrap_or("missing"),
                if entries.is_some() {
                    "present"
                } else {
                    "missing or empty"
                }
            ),
            part: Some(root),
        }),
    }
    out
}

// ---------------------------------------------------------------------------------------
// helpers

fn errors(v: Option<&Value>) -> Vec<ProviderError> {
    v.and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|e| ProviderError {
                    code: s(e, "code").unwrap_or_else(|| "unknown".into()),
                    title: s(e, "title"),
                    message: s(e, "message"),
                    details: e
                        .get("error_data")
                        .and_then(|d| s(d, "details"))
                        .or_else(|| s(e, "details")),
                    href: s(e, "href"),
                })
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// WhatsApp

fn whatsapp_entry(entry: &Value, ctx: &Context<'_>, out: &mut Normalized) {
    let entry_id = s(entry, "id").unwrap_or_default();
    let Some(changes) = entry.get("changes").and_then(Value::as_array) else {
        out.dead_letters.push(DeadLetter {
            reason: DeadReason::UnexpectedShape,
            detail: format!("WhatsApp entry {entry_id:?} has no changes array"),
            part: Some(entry.clone()),
        });
        return;
    };
    if changes.is_empty() {
        // Nothing to normalize, but a verified entry is never dropped silently.
        out.dead_letters.push(DeadLetter {
            reason: DeadReason::UnexpectedShape,
            detail: format!("WhatsApp entry {entry_id:?} has an empty changes array"),
            part: Some(entry.clone()),
        });
        return;
    }
    for change in changes {
        let field = change.get("field").and_then(Value::as_str).unwrap_or("");
        let value = change.get("value").unwrap_or(&Value::Null);
        let metadata = value.get("metadata");
        let phone_number_id = metadata.and_then(|m| s(m, "phone_number_id"));
        // A number's own mapping wins; the WABA (entry id) maps every number of the account.
        let tenant = phone_number_id
            .as_deref()
            .and_then(|p| ctx.channels.get(p))
            .or_else(|| ctx.channels.get(&entry_id))
            .map(String::as_str)
            .or(ctx.default_tenant);
        let Some(tenant) = tenant else {
            // Name every id that was tried, so the operator knows which one to map.
            let mapped = format!("in the channels of source {}", ctx.source);
            let detail = match &phone_number_id {
                Some(p) if !entry_id.is_empty() => format!(
                    "neither phone_number_id {p:?} nor WhatsApp business account id \
                     {entry_id:?} is {mapped}"
                ),
                Some(p) => format!("phone_number_id {p:?} is not {mapped}"),
                None => format!("WhatsApp business account id {entry_id:?} is not {mapped}"),
            };
            unknown_channel(detail, change, out);
            continue;
        };
        let business = Party {
            id: phone_number_id.clone().unwrap_or_else(|| entry_id.clone()),
            display: metadata.and_then(|m| s(m, "display_phone_number")),
            ..Party::default()
        };
        let wa = Wa {
            ctx,
            tenant,
            business,
            contacts: value.get("contacts").and_then(Value::as_array),
        };
        if field == "messages" {
            let mut produced = false;
            let mut errors_attached = false;
            for m in value
                .get("messages")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                errors_attached |= wa.message(m, value, Direction::Inbound, out);
                produced = true;
            }
            for st in value
                .get("statuses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                wa.status(st, out);
                produced = true;
            }
            // value.errors explain a message whose typed object is missing (they were attached
            // to it); otherwise they are the change's own report and become an error event.
            let errs = errors(value.get("errors"));
            if !errs.is_empty() && !errors_attached {
                wa.error(&entry_id, value, errs, out);
                produced = true;
            }
            if produced {
                continue;
            }
        } else if field == "smb_message_echoes" {
            // Messages the business sent from the WhatsApp Business app (coexistence): they
            // are outbound messages of the conversation, not notifications.
            let echoes = value.get("message_echoes").and_then(Value::as_array);
            if let Some(echoes) = echoes.filter(|e| !e.is_empty()) {
                for m in echoes {
                    wa.message(m, value, Direction::Outbound, out);
                }
                continue;
            }
        }
        wa.notification(entry, field, value, out);
    }
}

struct Wa<'a> {
    ctx: &'a Context<'a>,
    tenant: &'a str,
    business: Party,
    contacts: Option<&'a Vec<Value>>,
}

impl Wa<'_> {
    fn event(
        &self,
        kind: EventKind,
        direction: Direction,
        key: String,
        at: Option<OffsetDateTime>,
    ) -> Event {
        let mut e = Event::new(
            kind,
            Provider::Meta,
            Channel::Whatsapp,
            direction,
            self.tenant,
            self.ctx.source,
            key,
            at,
            self.ctx.received_at,
        );
        e.business = Some(self.business.clone());
        e
    }

    /// The contact a message is from (inbound) or to (echo): matched in `value.contacts` by
    /// phone (`wa_id`) or business-scoped user id, else the only contact.
    fn contact(
        &self,
        phone: Option<String>,
        user_id: Option<String>,
        parent: Option<String>,
    ) -> Option<Party> {
        self.party(phone, user_id, parent, true)
    }

    /// A user identity completed from `value.contacts`. `only_one_fallback`: when nothing
    /// matches, take the only contact listed — right for messages (Meta lists the sender).
    /// Statuses match exactly: for a group send the contacts describe a member, not the group.
    fn party(
        &self,
        phone: Option<String>,
        user_id: Option<String>,
        parent: Option<String>,
        only_one_fallback: bool,
    ) -> Option<Party> {
        let phone = phone.map(|p| strip_plus(&p));
        let contacts = self.contacts.map(Vec::as_slice).unwrap_or(&[]);
        let found = contacts
            .iter()
            .find(|c| {
                (phone.is_some() && s(c, "wa_id").map(|w| strip_plus(&w)) == phone)
                    || (user_id.is_some() && s(c, "user_id") == user_id)
            })
            .or(if only_one_fallback && contacts.len() == 1 {
                contacts.first()
            } else {
                None
            });
        let profile = found.and_then(|c| c.get("profile"));
        let phone = phone.or_else(|| found.and_then(|c| s(c, "wa_id")).map(|w| strip_plus(&w)));
        let user_id = user_id.or_else(|| found.and_then(|c| s(c, "user_id")));
        let parent_user_id = parent.or_else(|| found.and_then(|c| s(c, "parent_user_id")));
        let id = phone.clone().or_else(|| user_id.clone())?;
        Some(Party {
            id,
            name: profile.and_then(|p| s(p, "name")),
            display: None,
            username: profile.and_then(|p| s(p, "username")),
            phone,
            user_id,
            parent_user_id,
            language: None,
        })
    }

    /// Returns whether the change's `value.errors` were attached to this message.
    fn message(
        &self,
        m: &Value,
        value: &Value,
        direction: Direction,
        out: &mut Normalized,
    ) -> bool {
        let Some(id) = s(m, "id") else {
            out.dead_letters.push(DeadLetter {
                reason: DeadReason::UnexpectedShape,
                detail: "WhatsApp message without an id".into(),
                part: Some(m.clone()),
            });
            return false;
        };
        let kind_str = s(m, "type").unwrap_or_else(|| "unknown".into());
        let kind = match kind_str.as_str() {
            "reaction" => EventKind::Reaction,
            "system" => EventKind::System,
            _ => EventKind::Message,
        };
        let mut e = self.event(
            kind,
            direction,
            dedup_key(Provider::Meta, "wamid", &id, None),
            secs(m, "timestamp"),
        );
        e.provider_message_id = Some(id);
        e.contact = match direction {
            Direction::Inbound => self.contact(
                s(m, "from"),
                s(m, "from_user_id"),
                s(m, "from_parent_user_id"),
            ),
            Direction::Outbound => {
                self.contact(s(m, "to"), s(m, "to_user_id"), s(m, "to_parent_user_id"))
            }
        };
        let mut msg = wa_content(m, &kind_str);
        if kind == EventKind::System && e.contact.is_none() {
            // `user_changed_user_id` names nobody but the new identity: the conversation
            // continues under it (`user_changed_number` keeps `from`, the old number).
            if let Some(sys) = m.get("system") {
                e.contact = self.party(
                    s(sys, "wa_id"),
                    s(sys, "user_id"),
                    s(sys, "parent_user_id"),
                    false,
                );
            }
        }
        if let Some(group) = s(m, "group_id") {
            // A group message belongs to the group's conversation; the sender is a member.
            msg.participant = e.contact.take();
            e.contact = Some(Party {
                id: group,
                ..Party::default()
            });
        }
        if let Some(c) = m.get("context") {
            // An edit's reply_to already names the edited message; its context does not.
            if msg.reply_to.is_none() && (c.get("id").is_some() || c.get("from").is_some()) {
                msg.reply_to = Some(ReplyTo {
                    message_id: s(c, "id"),
                    from: s(c, "from").map(|f| strip_plus(&f)),
                    story: None,
                });
            }
            msg.forwarded = c.get("forwarded").and_then(Value::as_bool).unwrap_or(false);
            msg.frequently_forwarded = c
                .get("frequently_forwarded")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            msg.referred_product = c.get("referred_product").cloned();
        }
        msg.referral = m.get("referral").cloned();
        e.message = Some(msg);
        e.errors = errors(m.get("errors"));
        let mut attached = false;
        if e.errors.is_empty()
            && m.get(kind_str.as_str()).is_none()
            && !matches!(
                kind_str.as_str(),
                "request_welcome" | "unsupported" | "unknown"
            )
        {
            // The typed object is missing: the reason is in value.errors (e.g. 131000).
            e.errors = errors(value.get("errors"));
            attached = !e.errors.is_empty();
        }
        e.raw = raw(self.ctx, m);
        finish(e, out);
        attached
    }

    fn status(&self, st: &Value, out: &mut Normalized) {
        let (Some(id), Some(state)) = (s(st, "id"), s(st, "status")) else {
            out.dead_letters.push(DeadLetter {
                reason: DeadReason::UnexpectedShape,
                detail: "WhatsApp status without id or status".into(),
                part: Some(st.clone()),
            });
            return;
        };
        // Meta's words (sent, delivered, read, failed, played) are the shared vocabulary's;
        // a word Meta adds later becomes `unknown`, the word kept in `provider_state`. The
        // event id keeps Meta's word, so each new word is still its own event.
        let word = state.to_ascii_lowercase();
        let (state, provider_state) = shared_state(&word);
        let recipient = s(st, "recipient_id").map(|r| strip_plus(&r));
        let (contact, participant) = if s(st, "recipient_type").as_deref() == Some("group") {
            // recipient_id is the group; the member is in recipient_participant_* (Meta's
            // pages also spell it participant_recipient_id).
            let member = self.party(
                s(st, "recipient_participant_id").or_else(|| s(st, "participant_recipient_id")),
                s(st, "recipient_participant_user_id"),
                s(st, "recipient_participant_parent_user_id"),
                false,
            );
            let group = recipient.map(|id| Party {
                id,
                ..Party::default()
            });
            (group, member)
        } else {
            let user = self.party(
                recipient,
                s(st, "recipient_user_id"),
                s(st, "recipient_parent_user_id").or_else(|| s(st, "parent_recipient_user_id")),
                false,
            );
            (user, None)
        };
        // Every member of a group reads the same wamid: the member is part of the identity,
        // or the second member's "read" would be dropped as a duplicate of the first.
        let dedup_state = match &participant {
            Some(p) => format!("{word}:{}", p.id),
            None => word.clone(),
        };
        let mut e = self.event(
            EventKind::Status,
            Direction::Outbound,
            dedup_key(Provider::Meta, "wamid", &id, Some(&dedup_state)),
            secs(st, "timestamp"),
        );
        e.provider_message_id = Some(id.clone());
        e.contact = contact;
        e.status = Some(Status {
            state,
            provider_state,
            message_id: Some(id),
            conversation: st.get("conversation").cloned(),
            pricing: st.get("pricing").cloned(),
            callback_data: s(st, "biz_opaque_callback_data"),
            participant,
            ..Status::default()
        });
        e.errors = errors(st.get("errors"));
        e.raw = raw(self.ctx, st);
        finish(e, out);
    }

    fn error(&self, entry_id: &str, value: &Value, errs: Vec<ProviderError>, out: &mut Normalized) {
        let basis = format!("{entry_id}\u{0}{value}");
        let mut e = self.event(
            EventKind::Error,
            Direction::Inbound,
            dedup_key(Provider::Meta, "error", &short_hash(basis.as_bytes()), None),
            None,
        );
        e.errors = errs;
        e.raw = raw(self.ctx, value);
        finish(e, out);
    }

    fn notification(&self, entry: &Value, field: &str, value: &Value, out: &mut Normalized) {
        let entry_id = s(entry, "id").unwrap_or_default();
        let time = s(entry, "time").unwrap_or_default();
        let basis = format!("{entry_id}\u{0}{time}\u{0}{field}\u{0}{value}");
        let topic = if field.is_empty() { "unknown" } else { field };
        let mut e = self.event(
            EventKind::Notification,
            Direction::Inbound,
            dedup_key(Provider::Meta, topic, &short_hash(basis.as_bytes()), None),
            secs(entry, "time").or_else(|| secs(value, "timestamp")),
        );
        e.notification = Some(Notification {
            topic: topic.to_string(),
            event: value
                .get("event")
                .and_then(Value::as_str)
                .map(str::to_string),
            data: value.clone(),
            standby: false,
        });
        e.errors = errors(value.get("errors"));
        e.raw = raw(self.ctx, value);
        finish(e, out);
    }
}

fn wa_media(kind: &str, o: &Value) -> Media {
    Media {
        kind: kind.to_string(),
        id: s(o, "id"),
        url: s(o, "url").or_else(|| s(o, "link")),
        mime_type: s(o, "mime_type"),
        sha256: s(o, "sha256"),
        caption: s(o, "caption"),
        filename: s(o, "filename"),
        voice: o.get("voice").and_then(Value::as_bool),
        animated: o.get("animated").and_then(Value::as_bool),
    }
}

/// The typed content of a WhatsApp message of type `kind`.
fn wa_content(m: &Value, kind: &str) -> Message {
    let mut msg = Message {
        kind: kind.to_string(),
        ..Message::default()
    };
    let body = m.get(kind);
    match (kind, body) {
        ("text", Some(t)) => msg.text = s(t, "body"),
        ("image" | "video" | "audio" | "document" | "sticker", Some(o)) => {
            let media = wa_media(kind, o);
            msg.text = media.caption.clone();
            msg.media = Some(media);
        }
        ("location", Some(l)) => {
            if let (Some(lat), Some(lon)) = (
                l.get("latitude").and_then(Value::as_f64),
                l.get("longitude").and_then(Value::as_f64),
            ) {
                msg.location = Some(Location {
                    latitude: lat,
                    longitude: lon,
                    name: s(l, "name"),
                    address: s(l, "address"),
                    url: s(l, "url"),
                });
            }
        }
        ("contacts", Some(c)) => msg.contacts = Some(c.clone()),
        ("interactive", Some(i)) => {
            let itype = s(i, "type").unwrap_or_else(|| "unknown".into());
            let inner = i.get(itype.as_str()).unwrap_or(&Value::Null);
            let mut reply = Reply {
                kind: itype.clone(),
                id: s(inner, "id"),
                title: s(inner, "title"),
                description: s(inner, "description"),
                response: None,
            };
            if itype == "nfm_reply" {
                reply.id = s(inner, "name");
                reply.title = s(inner, "body");
                // Flows put their answer in a JSON string; keep it structured when it parses.
                reply.response = inner.get("response_json").map(|r| match r {
                    Value::String(text) => serde_json::from_str(text).unwrap_or_else(|_| r.clone()),
                    other => other.clone(),
                });
            } else if reply.id.is_none() && reply.title.is_none() && !inner.is_null() {
                reply.response = Some(inner.clone());
            }
            msg.text = reply.title.clone();
            msg.reply = Some(reply);
        }
        ("button", Some(b)) => {
            msg.reply = Some(Reply {
                kind: "button".into(),
                id: s(b, "payload"),
                title: s(b, "text"),
                ..Reply::default()
            });
            msg.text = s(b, "text");
        }
        ("reaction", Some(r)) => {
            let emoji = s(r, "emoji").filter(|e| !e.is_empty());
            msg.reaction = Some(Reaction {
                message_id: s(r, "message_id").unwrap_or_default(),
                action: if emoji.is_some() { "react" } else { "unreact" }.into(),
                emoji,
            });
        }
        ("order", Some(o)) => {
            msg.text = s(o, "text");
            msg.order = Some(o.clone());
        }
        ("system", Some(sys)) => {
            msg.text = s(sys, "body");
            let mut info = sys.clone();
            if let (Some(obj), Some(identity)) = (info.as_object_mut(), m.get("identity")) {
                obj.insert("identity".into(), identity.clone());
            }
            msg.system = Some(info);
        }
        ("edit", Some(ed)) => {
            // The new content is a message of its own type: map it like one, keep type "edit"
            // and name the inner type, so an edited caption or list reply is not lost.
            if let Some(inner) = ed.get("message") {
                if let Some(inner_kind) = s(inner, "type") {
                    msg = Message {
                        kind: kind.to_string(),
                        content_type: Some(inner_kind.clone()),
                        ..wa_content(inner, &inner_kind)
                    };
                }
            }
            msg.reply_to = s(ed, "original_message_id").map(|id| ReplyTo {
                message_id: Some(id),
                ..ReplyTo::default()
            });
            return msg;
        }
        ("revoke", Some(rv)) => {
            msg.reply_to = s(rv, "original_message_id").map(|id| ReplyTo {
                message_id: Some(id),
                ..ReplyTo::default()
            });
            return msg;
        }
        ("unsupported", Some(u)) => msg.content_type = s(u, "type"),
        _ => {}
    }
    msg
}

// ---------------------------------------------------------------------------------------
// Messenger and Instagram

fn messaging_entry(entry: &Value, channel: Channel, ctx: &Context<'_>, out: &mut Normalized) {
    let Some(page) = s(entry, "id") else {
        out.dead_letters.push(DeadLetter {
            reason: DeadReason::UnexpectedShape,
            detail: format!("{} entry without an id", channel.as_str()),
            part: Some(entry.clone()),
        });
        return;
    };
    let Some(tenant) = ctx.tenant_for(&page) else {
        let what = if channel == Channel::Messenger {
            "Page id"
        } else {
            "Instagram account id"
        };
        let detail = format!(
            "{what} {page:?} is not in the channels of source {}",
            ctx.source
        );
        unknown_channel(detail, entry, out);
        return;
    };
    let m = Msgr {
        ctx,
        tenant,
        channel,
        page: page.clone(),
    };
    let list = |key: &str| {
        entry
            .get(key)
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    };
    let (messaging, standby, changes) = (list("messaging"), list("standby"), list("changes"));
    if messaging.is_empty() && standby.is_empty() && changes.is_empty() {
        out.dead_letters.push(DeadLetter {
            reason: DeadReason::UnexpectedShape,
            detail: format!(
                "{} entry {page:?} has no messaging, standby or changes items",
                channel.as_str()
            ),
            part: Some(entry.clone()),
        });
        return;
    }
    for item in messaging {
        m.item(item, false, out);
    }
    // Handover Protocol: items for threads another app owns. Same events, marked standby.
    for item in standby {
        m.item(item, true, out);
    }
    // Feed, comments and mentions use changes[] even on page/instagram objects.
    for change in changes {
        let field = change
            .get("field")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        let value = change.get("value").unwrap_or(&Value::Null);
        let basis = format!("{page}\u{0}{field}\u{0}{value}");
        let mut e = m.event(
            EventKind::Notification,
            Direction::Inbound,
            dedup_key(Provider::Meta, field, &short_hash(basis.as_bytes()), None),
            millis(entry, "time"),
        );
        e.notification = Some(Notification {
            topic: field.to_string(),
            event: value
                .get("verb")
                .or_else(|| value.get("event"))
                .and_then(Value::as_str)
                .map(str::to_string),
            data: value.clone(),
            standby: false,
        });
        e.raw = raw(ctx, change);
        finish(e, out);
    }
}

struct Msgr<'a> {
    ctx: &'a Context<'a>,
    tenant: &'a str,
    channel: Channel,
    page: String,
}

/// The keys of a messaging item that are not its event.
const ENVELOPE_KEYS: &[&str] = &["sender", "recipient", "timestamp"];

impl Msgr<'_> {
    fn event(
        &self,
        kind: EventKind,
        direction: Direction,
        key: String,
        at: Option<OffsetDateTime>,
    ) -> Event {
        let mut e = Event::new(
            kind,
            Provider::Meta,
            self.channel,
            direction,
            self.tenant,
            self.ctx.source,
            key,
            at,
            self.ctx.received_at,
        );
        e.business = Some(Party {
            id: self.page.clone(),
            ..Party::default()
        });
        e
    }

    fn item(&self, item: &Value, standby: bool, out: &mut Normalized) {
        let sender = item
            .get("sender")
            .and_then(|v| s(v, "id"))
            .unwrap_or_default();
        let recipient = item
            .get("recipient")
            .and_then(|v| s(v, "id"))
            .unwrap_or_default();
        let at = millis(item, "timestamp");
        let ts = s(item, "timestamp").unwrap_or_default();
        let user = |id: &str| {
            (!id.is_empty()).then(|| Party {
                id: id.to_string(),
                ..Party::default()
            })
        };
        // The user is whoever is not the page (echoes are sent by the page).
        let from_page = sender == self.page;
        let contact = if from_page {
            user(&recipient)
        } else {
            user(&sender)
        };
        // Items the page itself caused (echoes, its own reactions) are the business side.
        let direction = if from_page {
            Direction::Outbound
        } else {
            Direction::Inbound
        };
        let user_id = contact.as_ref().map(|c| c.id.clone()).unwrap_or_default();

        if let Some(m) = item.get("message") {
            let echo = m.get("is_echo").and_then(Value::as_bool).unwrap_or(false);
            let direction = if echo { Direction::Outbound } else { direction };
            let deleted = m
                .get("is_deleted")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let mid = s(m, "mid");
            let key = match &mid {
                // An unsend carries the mid of the message it removes: without its own state
                // it would be deduplicated away as a redelivery of that message.
                Some(mid) if deleted => dedup_key(Provider::Meta, "mid", mid, Some("deleted")),
                Some(mid) => dedup_key(Provider::Meta, "mid", mid, None),
                None => dedup_key(
                    Provider::Meta,
                    "message",
                    &format!("{}:{user_id}:{ts}", self.page),
                    None,
                ),
            };
            let mut e = self.event(EventKind::Message, direction, key, at);
            e.provider_message_id = mid;
            e.contact = contact;
            let mut msg = messenger_content(m, item);
            msg.standby = standby;
            e.message = Some(msg);
            e.raw = raw(self.ctx, item);
            return finish(e, out);
        }
        if let Some(p) = item.get("postback") {
            let mid = s(p, "mid");
            let key = match &mid {
                Some(mid) => dedup_key(Provider::Meta, "postback", mid, None),
                None => dedup_key(
                    Provider::Meta,
                    "postback",
                    &format!("{}:{user_id}:{ts}", self.page),
                    None,
                ),
            };
            let mut e = self.event(EventKind::Postback, Direction::Inbound, key, at);
            e.provider_message_id = mid;
            e.contact = contact;
            e.message = Some(Message {
                kind: "postback".into(),
                text: s(p, "title"),
                reply: Some(Reply {
                    kind: "postback".into(),
                    id: s(p, "payload"),
                    title: s(p, "title"),
                    ..Reply::default()
                }),
                referral: p.get("referral").cloned(),
                standby,
                ..Message::default()
            });
            e.raw = raw(self.ctx, item);
            return finish(e, out);
        }
        if let Some(r) = item.get("reaction") {
            let mid = s(r, "mid").unwrap_or_default();
            let action = s(r, "action").unwrap_or_else(|| "react".into());
            let emoji = s(r, "emoji").or_else(|| s(r, "reaction"));
            let id = format!(
                "{mid}:{user_id}:{action}:{}:{ts}",
                emoji.clone().unwrap_or_default()
            );
            let mut e = self.event(
                EventKind::Reaction,
                direction,
                dedup_key(Provider::Meta, "reaction", &id, None),
                at,
            );
            e.contact = contact;
            e.message = Some(Message {
                kind: "reaction".into(),
                reaction: Some(Reaction {
                    message_id: mid,
                    emoji: if action == "unreact" { None } else { emoji },
                    action,
                }),
                standby,
                ..Message::default()
            });
            e.raw = raw(self.ctx, item);
            return finish(e, out);
        }
        for (key, state) in [("read", "read"), ("delivery", "delivered")] {
            if let Some(r) = item.get(key) {
                let watermark = millis(r, "watermark").map(crate::event::rfc3339);
                let mids: Vec<String> = r
                    .get("mids")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|m| m.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let mid = s(r, "mid");
                let marker = mid
                    .clone()
                    .or_else(|| s(r, "watermark"))
                    .unwrap_or_else(|| ts.clone());
                let id = format!("{}:{user_id}:{marker}", self.page);
                let mut e = self.event(
                    EventKind::Status,
                    Direction::Outbound,
                    dedup_key(Provider::Meta, "watermark", &id, Some(state)),
                    at.or_else(|| millis(r, "watermark")),
                );
                e.provider_message_id = mid.clone();
                e.contact = contact;
                e.status = Some(Status {
                    state: state.into(),
                    message_id: mid,
                    message_ids: mids,
                    watermark,
                    standby,
                    ..Status::default()
                });
                e.raw = raw(self.ctx, item);
                return finish(e, out);
            }
        }
        if let Some(r) = item.get("referral") {
            let id = format!("{}:{user_id}:{ts}", self.page);
            let mut e = self.event(
                EventKind::Referral,
                direction,
                dedup_key(Provider::Meta, "referral", &id, None),
                at,
            );
            e.contact = contact;
            e.message = Some(Message {
                kind: "referral".into(),
                referral: Some(r.clone()),
                standby,
                ..Message::default()
            });
            e.raw = raw(self.ctx, item);
            return finish(e, out);
        }
        // Anything else (optin, account_linking, handover, policy_enforcement, edits...) is
        // carried as a notification named after its key.
        let obj = item.as_object().cloned().unwrap_or_else(Map::new);
        let topic = obj
            .keys()
            .find(|k| !ENVELOPE_KEYS.contains(&k.as_str()))
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        let data = obj.get(&topic).cloned().unwrap_or(Value::Null);
        let basis = format!(
            "{}\u{0}{user_id}\u{0}{ts}\u{0}{topic}\u{0}{data}",
            self.page
        );
        let mut e = self.event(
            EventKind::Notification,
            direction,
            dedup_key(Provider::Meta, &topic, &short_hash(basis.as_bytes()), None),
            at,
        );
        e.contact = contact;
        e.notification = Some(Notification {
            topic,
            event: None,
            data,
            standby,
        });
        e.raw = raw(self.ctx, item);
        finish(e, out);
    }
}

fn messenger_media(a: &Value) -> Media {
    let payload = a.get("payload").unwrap_or(&Value::Null);
    let kind = if payload.get("sticker_id").is_some() {
        "sticker".to_string()
    } else {
        s(a, "type").unwrap_or_else(|| "unknown".into())
    };
    Media {
        kind,
        id: s(payload, "sticker_id")
            .or_else(|| s(payload, "attachment_id"))
            .or_else(|| s(payload, "id")),
        url: s(payload, "url"),
        caption: s(a, "title").or_else(|| s(payload, "title")),
        ..Media::default()
    }
}

fn messenger_content(m: &Value, item: &Value) -> Message {
    let mut msg = Message {
        text: s(m, "text"),
        ..Message::default()
    };
    let attachments: Vec<Media> = m
        .get("attachments")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(messenger_media).collect())
        .unwrap_or_default();
    let deleted = m
        .get("is_deleted")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let unsupported = m
        .get("is_unsupported")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    msg.kind = if deleted {
        "revoke".into()
    } else if unsupported {
        "unsupported".into()
    } else if let Some(first) = attachments.first() {
        first.kind.clone()
    } else if msg.text.is_some() {
        "text".into()
    } else {
        "unknown".into()
    };
    let mut attachments = attachments.into_iter();
    msg.media = attachments.next();
    msg.attachments = attachments.collect();
    if let Some(q) = m.get("quick_reply") {
        msg.reply = Some(Reply {
            kind: "quick_reply".into(),
            id: s(q, "payload"),
            title: msg.text.clone(),
            ..Reply::default()
        });
    }
    if let Some(r) = m.get("reply_to") {
        msg.reply_to = Some(ReplyTo {
            message_id: s(r, "mid"),
            from: None,
            story: r.get("story").cloned(),
        });
    }
    if deleted {
        msg.reply_to = Some(ReplyTo {
            message_id: s(m, "mid"),
            ..ReplyTo::default()
        });
    }
    msg.referral = m.get("referral").or_else(|| item.get("referral")).cloned();
    msg
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use time::macros::datetime;

    use super::*;
    use crate::normalize::testing;

    /// Fixture directory of this normalizer.
    const FIXTURES: &str = "meta";

    fn channels() -> HashMap<String, String> {
        let acme = [
            "101809759215303",
            "102290129340398",
            "10634295353625",
            "106540352242922",
            "12345654332",
            "1234567890",
            "1234567890321",
            "1234567890987654321",
            "17841400000000000",
            "17841452691600098",
            "2432658263680361",
            "419561257915477",
            "5467539754836534",
            "<BUSINESS_PHONE_NUMBER_ID>",
            "<WHATSAPP_BUSINESS_ACCOUNT_ID>",
            "REDACTED",
            "whatsapp-business-account-id",
        ];
        let mut m: HashMap<String, String> = acme
            .iter()
            .map(|id| (id.to_string(), "acme".to_string()))
            .collect();
        // A second tenant on the same Meta app: one app callback serves many workspaces.
        m.insert("1122334455667".into(), "globex".into());
        m
    }

    fn ctx(channels: &HashMap<String, String>) -> Context<'_> {
        Context {
            source: "meta_test",
            received_at: datetime!(2026-01-01 00:00:00 UTC),
            include_raw: true,
            channels,
            default_tenant: None,
        }
    }

    #[test]
    fn every_fixture_normalizes_as_expected() {
        let ch = channels();
        testing::check_all(FIXTURES, &ctx(&ch), normalize);
    }

    #[test]
    fn event_ids_are_stable_and_unique_within_a_batch() {
        let ch = channels();
        for path in testing::bodies(FIXTURES) {
            let body = std::fs::read(&path).unwrap();
            let a = normalize(&Verified::assume_verified(body.clone()), &ctx(&ch));
            let b = normalize(&Verified::assume_verified(body), &ctx(&ch));
            let ids: Vec<&str> = a.events.iter().map(|e| e.event_id.as_str()).collect();
            let again: Vec<&str> = b.events.iter().map(|e| e.event_id.as_str()).collect();
            assert_eq!(ids, again, "{}", path.display());
            let unique: std::collections::HashSet<&&str> = ids.iter().collect();
            assert_eq!(unique.len(), ids.len(), "{}", path.display());
        }
    }

    #[test]
    fn every_fixture_yields_something() {
        let ch = channels();
        for path in testing::bodies(FIXTURES) {
            let n = normalize(
                &Verified::assume_verified(std::fs::read(&path).unwrap()),
                &ctx(&ch),
            );
            assert!(
                !n.events.is_empty() || !n.dead_letters.is_empty(),
                "{} produced nothing: a verified webhook is never dropped",
                path.display()
            );
        }
    }

    fn mutate(body: &[u8], edits: &[(usize, u8)]) -> Vec<u8> {
        let mut b = body.to_vec();
        for (pos, byte) in edits {
            if !b.is_empty() {
                let i = pos % b.len();
                b[i] = *byte;
            }
        }
        b
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn never_panics_on_arbitrary_bytes(
            body in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            let ch = channels();
            let _ = normalize(&Verified::assume_verified(body), &ctx(&ch));
        }

        #[test]
        fn never_panics_on_mutated_fixtures(
            which in 0usize..1000,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..24),
        ) {
            let ch = channels();
            let bodies = testing::bodies(FIXTURES);
            let body = std::fs::read(&bodies[which % bodies.len()]).unwrap();
            let _ = normalize(&Verified::assume_verified(mutate(&body, &edits)), &ctx(&ch));
        }

        /// Byte edits mostly break the JSON; this keeps it valid and swaps or deletes one
        /// node of a real payload, so the normalizer meets every documented path with the
        /// wrong type, a missing field or a stranger value.
        #[test]
        fn never_panics_on_structurally_mutated_fixtures(
            which in 0usize..1000,
            edits in proptest::collection::vec(
                (any::<prop::sample::Index>(), prop::option::of(arb_json())),
                1..6,
            ),
        ) {
            let ch = channels();
            let bodies = testing::bodies(FIXTURES);
            let body = std::fs::read(&bodies[which % bodies.len()]).unwrap();
            let Ok(mut v) = serde_json::from_slice::<Value>(&body) else { return Ok(()); };
            for (at, replacement) in &edits {
                let paths = pointers(&v, String::new());
                let path = &paths[at.index(paths.len())];
                replace_at(&mut v, path, replacement.clone());
            }
            let n = normalize(&Verified::assume_verified(v.to_string()), &ctx(&ch));
            for e in &n.events {
                prop_assert!(e.event_id.starts_with("evt_") && e.event_id.len() == 36);
                prop_assert_eq!(
                    e.conversation_id.is_some(),
                    e.contact.is_some() && e.business.is_some()
                );
            }
        }

        #[test]
        fn never_panics_on_arbitrary_json_shapes(v in arb_json()) {
            let ch = channels();
            for object in ["whatsapp_business_account", "page", "instagram"] {
                let entry = serde_json::json!({
                    "id": "106540352242922",
                    "changes": [{"field": "messages", "value": v.clone()}],
                    "messaging": [v.clone()],
                });
                let wrapped = serde_json::json!({"object": object, "entry": [v.clone(), entry]});
                let _ = normalize(&Verified::assume_verified(wrapped.to_string()), &ctx(&ch));
            }
        }
    }

    /// JSON pointers of every node of `v` (the root is "").
    fn pointers(v: &Value, here: String) -> Vec<String> {
        let mut out = vec![here.clone()];
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    out.extend(pointers(
                        child,
                        format!("{here}/{}", k.replace('~', "~0").replace('/', "~1")),
                    ));
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    out.extend(pointers(child, format!("{here}/{i}")));
                }
            }
            _ => {}
        }
        out
    }

    /// Replaces the node at `path` (None: removes it from its parent).
    fn replace_at(root: &mut Value, path: &str, replacement: Option<Value>) {
        let Some((parent, last)) = path.rsplit_once('/') else {
            *root = replacement.unwrap_or(Value::Null);
            return;
        };
        let key = last.replace("~1", "/").replace("~0", "~");
        match (root.pointer_mut(parent), replacement) {
            (Some(Value::Object(m)), Some(r)) => {
                m.insert(key, r);
            }
            (Some(Value::Object(m)), None) => {
                m.remove(&key);
            }
            (Some(Value::Array(a)), r) => {
                if let Ok(i) = key.parse::<usize>() {
                    if i < a.len() {
                        match r {
                            Some(r) => a[i] = r,
                            None => {
                                a.remove(i);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn run(body: &str) -> Normalized {
        let ch = channels();
        normalize(&Verified::assume_verified(body.to_string()), &ctx(&ch))
    }

    #[test]
    fn an_unsend_is_not_a_duplicate_of_the_message_it_removes() {
        let item = |message: &str| {
            format!(
                r#"{{"sender":{{"id":"7"}},"recipient":{{"id":"1234567890321"}},"timestamp":1,"message":{message}}}"#
            )
        };
        let body = format!(
            r#"{{"object":"page","entry":[{{"id":"1234567890321","messaging":[{},{}]}}]}}"#,
            item(r#"{"mid":"m_1","text":"hi"}"#),
            item(r#"{"mid":"m_1","is_deleted":true}"#)
        );
        let n = run(&body);
        assert_eq!(n.events.len(), 2);
        assert_ne!(n.events[0].event_id, n.events[1].event_id);
        assert_eq!(n.events[1].message.as_ref().unwrap().kind, "revoke");
    }

    #[test]
    fn standby_items_are_marked_and_keep_their_kind() {
        let body = r#"{"object":"instagram","entry":[{"id":"17841452691600098","standby":[
            {"sender":{"id":"5"},"recipient":{"id":"17841452691600098"},"timestamp":1,"read":{"mid":"m_9"}},
            {"sender":{"id":"5"},"recipient":{"id":"17841452691600098"},"timestamp":2,"optin":{"ref":"x"}}]}]}"#;
        let n = run(body);
        assert_eq!(n.events.len(), 2);
        assert_eq!(n.events[0].kind, EventKind::Status);
        assert!(n.events[0].status.as_ref().unwrap().standby);
        assert_eq!(n.events[1].kind, EventKind::Notification);
        assert!(n.events[1].notification.as_ref().unwrap().standby);
    }

    #[test]
    fn an_unknown_page_is_dead_lettered_and_the_rest_of_the_post_still_counts() {
        let body = r#"{"object":"page","entry":[
            {"id":"404404404","messaging":[{"sender":{"id":"5"},"recipient":{"id":"404404404"},"timestamp":1,"message":{"mid":"m_a","text":"?"}}]},
            {"id":1234567890321,"messaging":[{"sender":{"id":5},"recipient":{"id":1234567890321},"timestamp":2,"message":{"mid":"m_b","text":"ok"}}]}]}"#;
        let n = run(body);
        assert_eq!(n.dead_letters.len(), 1);
        assert_eq!(n.dead_letters[0].reason, DeadReason::UnknownChannel);
        assert!(n.dead_letters[0].detail.contains("404404404"));
        assert!(n.dead_letters[0].detail.contains("meta_test"));
        assert_eq!(n.events.len(), 1);
        // Numeric ids become the same strings as quoted ones.
        assert_eq!(n.events[0].business.as_ref().unwrap().id, "1234567890321");
        assert_eq!(n.events[0].contact.as_ref().unwrap().id, "5");
    }

    #[test]
    fn entries_with_nothing_in_them_are_dead_lettered_not_dropped() {
        for body in [
            r#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[]}]}"#,
            r#"{"object":"page","entry":[{"id":"1234567890321","time":1}]}"#,
            r#"{"object":"instagram","entry":[7]}"#,
            r#"{"object":"page","entry":[]}"#,
        ] {
            let n = run(body);
            assert!(n.events.is_empty(), "{body}");
            assert_eq!(n.dead_letters.len(), 1, "{body}");
            assert_eq!(
                n.dead_letters[0].reason,
                DeadReason::UnexpectedShape,
                "{body}"
            );
        }
    }

    #[test]
    fn notification_identity_ignores_key_order_but_not_content() {
        let body = |value: &str| {
            format!(
                r#"{{"object":"whatsapp_business_account","entry":[{{"id":"102290129340398","time":1,"changes":[{{"field":"account_update","value":{value}}}]}}]}}"#
            )
        };
        let a = run(&body(r#"{"event":"X","info":{"a":1,"b":2}}"#));
        let b = run(&body(r#"{"info":{"b":2,"a":1},"event":"X"}"#));
        let c = run(&body(r#"{"event":"Y","info":{"a":1,"b":2}}"#));
        assert_eq!(a.events[0].event_id, b.events[0].event_id);
        assert_ne!(a.events[0].event_id, c.events[0].event_id);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z_]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            let keys = prop_oneof![
                Just("id".to_string()),
                Just("type".to_string()),
                Just("messages".to_string()),
                Just("statuses".to_string()),
                Just("text".to_string()),
                Just("timestamp".to_string()),
                Just("message".to_string()),
                Just("sender".to_string()),
                Just("errors".to_string()),
                Just("interactive".to_string()),
                Just("contacts".to_string()),
                Just("metadata".to_string()),
                "[a-z]{1,8}",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(keys, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
