//! Telegram Bot API webhooks (one `Update` per POST) → unified events.
//!
//! Identities. The source is one bot, so `business.id` is the source id (an update never
//! names the bot that receives it) and the tenant is `channels[<source id>]`, else the
//! source's `tenant`. The contact is the *chat* (`chat.id`; a private chat's id is the user's
//! id, a group's or channel's id is negative): a group is one conversation, and the member who
//! wrote is `message.participant`. Message ids are unique only within a chat, so
//! `provider_message_id` is `"<chat_id>:<message_id>"` (the pair the Bot API needs to reply
//! or edit). Dedup is on `update_id`, which Telegram assigns per bot: the namespace carries
//! the source id so that two bots' updates never collide.
//!
//! Mapping:
//! - `message`, `channel_post`, `business_message` → `kind = message`; `edited_message`,
//!   `edited_channel_post`, `edited_business_message` → `kind = message` with
//!   `message.type = edit` (Meta's vocabulary), the new content's type in `content_type`,
//!   and `reply_to.message_id` = the edited message (same `provider_message_id`).
//! - Content: text → text; photo → image (largest size); animation → video (animated);
//!   video, video_note → video; voice → audio (voice); audio; document; sticker; venue and
//!   location → location; contact → contacts; web_app_data → reply; service messages
//!   (new_chat_members, pinned_message, forum_topic_created...) → `kind = system`,
//!   `message.type = system`, `content_type` = the field; anything else (poll, dice, game,
//!   invoice, story, giveaway...) → `message.type` = Telegram's field name verbatim.
//! - `callback_query` → `kind = postback`, `message.reply {type: callback_query, id: data}`,
//!   `provider_message_id` = the query id, `reply_to` = the message that had the button.
//! - `message_reaction` → `kind = reaction`, `message.reaction {message_id: "<chat>:<id>",
//!   emoji: the first new emoji, action: react}` (an empty new set: `unreact` with the old
//!   emoji), the user as `participant` in groups.
//! - Every other update type (my_chat_member, chat_member, chat_join_request, inline_query,
//!   poll_answer, ...) → `kind = notification`, topic = the update field, event = the new
//!   member status for membership changes (`kicked` = the user blocked the bot), contact =
//!   its chat or user when it has one.
//!
//! Never panics, never drops: what cannot be read becomes a dead letter.

use serde_json::{json, Value};
use time::OffsetDateTime;

use super::util::{finish, json_body, raw, s, secs, tenant_or_dead, unexpected};
use super::{Context, Normalized};
use crate::event::{
    dedup_key, Channel, Direction, Event, EventKind, Location, Media, Message, Notification, Party,
    Provider, Reaction, Reply, ReplyTo,
};
use crate::verify::Verified;

/// Update fields that carry a message.
const MESSAGE_UPDATES: &[&str] = &["message", "channel_post", "business_message"];
const EDIT_UPDATES: &[&str] = &[
    "edited_message",
    "edited_channel_post",
    "edited_business_message",
];

/// Message fields that describe the message rather than being its content.
const METADATA: &[&str] = &[
    "message_id",
    "message_thread_id",
    "direct_messages_topic",
    "from",
    "sender_chat",
    "sender_boost_count",
    "sender_business_bot",
    "date",
    "business_connection_id",
    "chat",
    "forward_origin",
    "forward_from",
    "forward_from_chat",
    "forward_from_message_id",
    "forward_signature",
    "forward_sender_name",
    "forward_date",
    "is_topic_message",
    "is_automatic_forward",
    "reply_to_message",
    "external_reply",
    "quote",
    "reply_to_story",
    "reply_to_checklist_task_id",
    "via_bot",
    "edit_date",
    "has_protected_content",
    "is_from_offline",
    "is_paid_post",
    "media_group_id",
    "author_signature",
    "paid_star_count",
    "entities",
    "caption",
    "caption_entities",
    "show_caption_above_media",
    "has_media_spoiler",
    "link_preview_options",
    "suggested_post_info",
    "effect_id",
    "reply_markup",
];

/// Service messages: something happened in the chat, nobody wrote.
const SERVICE: &[&str] = &[
    "new_chat_members",
    "left_chat_member",
    "new_chat_title",
    "new_chat_photo",
    "delete_chat_photo",
    "group_chat_created",
    "supergroup_chat_created",
    "channel_chat_created",
    "message_auto_delete_timer_changed",
    "migrate_to_chat_id",
    "migrate_from_chat_id",
    "pinned_message",
    "users_shared",
    "chat_shared",
    "connected_website",
    "write_access_allowed",
    "proximity_alert_triggered",
    "boost_added",
    "chat_background_set",
    "forum_topic_created",
    "forum_topic_edited",
    "forum_topic_closed",
    "forum_topic_reopened",
    "general_forum_topic_hidden",
    "general_forum_topic_unhidden",
    "video_chat_scheduled",
    "video_chat_started",
    "video_chat_ended",
    "video_chat_participants_invited",
    "giveaway_created",
    "giveaway_completed",
    "refunded_payment",
    "gift",
    "unique_gift",
    "paid_message_price_changed",
    "checklist_tasks_done",
    "checklist_tasks_added",
];

pub fn normalize(req: &Verified, ctx: &Context<'_>) -> Normalized {
    let mut out = Normalized::default();
    let Some(update) = json_body(req.body(), &mut out) else {
        return out;
    };
    let Some(update_id) = update
        .get("update_id")
        .and_then(Value::as_i64)
        .map(|n| n.to_string())
    else {
        unexpected(
            "not a Telegram Update: no integer update_id".into(),
            &update,
            &mut out,
        );
        return out;
    };
    // An Update carries exactly one optional field besides update_id.
    let Some((field, value)) = update
        .as_object()
        .and_then(|o| o.iter().find(|(k, v)| *k != "update_id" && v.is_object()))
    else {
        unexpected(
            format!("Telegram update {update_id} carries no update object"),
            &update,
            &mut out,
        );
        return out;
    };
    let Some(tenant) = tenant_or_dead(ctx, ctx.source, &update, &mut out) else {
        return out;
    };
    let t = Tg {
        ctx,
        tenant,
        key: dedup_key(
            Provider::Telegram,
            &format!("update:{}", ctx.source),
            &update_id,
            None,
        ),
    };
    let field = field.as_str();
    if MESSAGE_UPDATES.contains(&field) {
        t.message(value, false, &mut out);
    } else if EDIT_UPDATES.contains(&field) {
        t.message(value, true, &mut out);
    } else if field == "callback_query" {
        t.callback(value, &mut out);
    } else if field == "message_reaction" {
        t.reaction(value, &mut out);
    } else {
        t.notification(field, value, &mut out);
    }
    out
}

/// `"<chat_id>:<message_id>"`, the identity of a message.
fn message_ref(m: &Value) -> Option<String> {
    let chat = m.get("chat").and_then(|c| s(c, "id"))?;
    Some(format!("{chat}:{}", s(m, "message_id")?))
}

fn full_name(v: &Value) -> Option<String> {
    match (s(v, "first_name"), s(v, "last_name")) {
        (Some(f), Some(l)) => Some(format!("{f} {l}")),
        (f, l) => f.or(l),
    }
}

/// A user or chat as a party: id, name (title or first + last name), username.
fn party(v: &Value) -> Option<Party> {
    Some(Party {
        id: s(v, "id")?,
        name: s(v, "title").or_else(|| full_name(v)),
        username: s(v, "username"),
        language: s(v, "language_code"),
        ..Party::default()
    })
}

/// The member who wrote in a group or channel (absent in private chats, where it is the chat).
fn participant(m: &Value, chat: &Party) -> Option<Party> {
    let who = m
        .get("from")
        .or_else(|| m.get("sender_chat"))
        .and_then(party)?;
    (who.id != chat.id).then_some(who)
}

fn file_media(kind: &str, v: &Value, caption: Option<String>) -> Media {
    Media {
        kind: kind.into(),
        id: s(v, "file_id"),
        mime_type: s(v, "mime_type"),
        filename: s(v, "file_name"),
        caption,
        ..Media::default()
    }
}

/// The largest `PhotoSize` (by pixels, then bytes; Telegram lists them smallest first).
fn largest_photo(sizes: &[Value]) -> Option<&Value> {
    sizes.iter().filter(|p| p.is_object()).max_by_key(|p| {
        let dim = |k| p.get(k).and_then(Value::as_u64).unwrap_or(0);
        (dim("width").saturating_mul(dim("height")), dim("file_size"))
    })
}

fn location(v: &Value) -> Option<Location> {
    Some(Location {
        latitude: v.get("latitude")?.as_f64()?,
        longitude: v.get("longitude")?.as_f64()?,
        ..Location::default()
    })
}

/// A message's content: (is a service message, content).
fn content(m: &Value) -> (bool, Message) {
    let caption = s(m, "caption");
    let mut msg = Message::default();
    let media = |msg: &mut Message, kind: &str, media: Media| {
        msg.kind = kind.into();
        msg.text = media.caption.clone();
        msg.media = Some(media);
    };
    if let Some(text) = s(m, "text") {
        msg.kind = "text".into();
        msg.text = Some(text);
    } else if let Some(a) = m.get("animation").filter(|v| v.is_object()) {
        let mut md = file_media("animation", a, caption);
        md.animated = Some(true);
        media(&mut msg, "video", md);
    } else if let Some(p) = m
        .get("photo")
        .and_then(Value::as_array)
        .and_then(|sizes| largest_photo(sizes))
    {
        media(&mut msg, "image", file_media("image", p, caption));
    } else if let Some(v) = m.get("video").filter(|v| v.is_object()) {
        media(&mut msg, "video", file_media("video", v, caption));
    } else if let Some(v) = m.get("video_note").filter(|v| v.is_object()) {
        media(&mut msg, "video", file_media("video_note", v, caption));
    } else if let Some(v) = m.get("voice").filter(|v| v.is_object()) {
        let mut md = file_media("audio", v, caption);
        md.voice = Some(true);
        media(&mut msg, "audio", md);
    } else if let Some(v) = m.get("audio").filter(|v| v.is_object()) {
        media(&mut msg, "audio", file_media("audio", v, caption));
    } else if let Some(v) = m.get("document").filter(|v| v.is_object()) {
        media(&mut msg, "document", file_media("document", v, caption));
    } else if let Some(v) = m.get("sticker").filter(|v| v.is_object()) {
        let mut md = file_media("sticker", v, None);
        let flag = |k| v.get(k).and_then(Value::as_bool).unwrap_or(false);
        md.animated = Some(flag("is_animated") || flag("is_video"));
        media(&mut msg, "sticker", md);
    } else if let Some(v) = m.get("venue").filter(|v| v.is_object()) {
        msg.kind = "location".into();
        msg.location = v.get("location").and_then(location).map(|l| Location {
            name: s(v, "title"),
            address: s(v, "address"),
            ..l
        });
    } else if let Some(v) = m.get("location").filter(|v| v.is_object()) {
        msg.kind = "location".into();
        msg.location = location(v);
    } else if let Some(v) = m.get("contact").filter(|v| v.is_object()) {
        msg.kind = "contacts".into();
        msg.contacts = Some(json!([v]));
    } else if let Some(v) = m.get("web_app_data").filter(|v| v.is_object()) {
        msg.kind = "reply".into();
        msg.reply = Some(Reply {
            kind: "web_app_data".into(),
            id: s(v, "data"),
            title: s(v, "button_text"),
            ..Reply::default()
        });
    } else if let Some(field) = SERVICE.iter().find(|f| m.get(**f).is_some()) {
        msg.kind = "system".into();
        msg.content_type = Some(field.to_string());
        msg.system = Some(json!({ *field: m.get(*field) }));
        return (true, msg);
    } else {
        // poll, dice, game, invoice, story, paid_media, giveaway, checklist... verbatim.
        let other = m
            .as_object()
            .and_then(|o| o.keys().find(|k| !METADATA.contains(&k.as_str())).cloned());
        msg.kind = other.unwrap_or_else(|| "unsupported".into());
        msg.text = caption.or_else(|| m.get("poll").and_then(|p| s(p, "question")));
    }
    (false, msg)
}

/// The text of the inline keyboard button of `m` whose `callback_data` is `data`.
fn button_text(m: &Value, data: &str) -> Option<String> {
    m.get("reply_markup")?
        .get("inline_keyboard")?
        .as_array()?
        .iter()
        .filter_map(Value::as_array)
        .flatten()
        .find(|b| b.get("callback_data").and_then(Value::as_str) == Some(data))
        .and_then(|b| s(b, "text"))
}

struct Tg<'a> {
    ctx: &'a Context<'a>,
    tenant: &'a str,
    key: String,
}

impl Tg<'_> {
    fn event(&self, kind: EventKind, at: Option<OffsetDateTime>) -> Event {
        let mut e = Event::new(
            kind,
            Provider::Telegram,
            Channel::Telegram,
            Direction::Inbound,
            self.tenant,
            self.ctx.source,
            self.key.clone(),
            at,
            self.ctx.received_at,
        );
        e.business = Some(Party {
            id: self.ctx.source.to_string(),
            ..Party::default()
        });
        e
    }

    fn message(&self, m: &Value, edit: bool, out: &mut Normalized) {
        let (Some(mut chat), Some(id)) = (m.get("chat").and_then(party), message_ref(m)) else {
            return unexpected(
                "Telegram message without chat.id or message_id".into(),
                m,
                out,
            );
        };
        // A private chat is the user: the chat object has no language, its sender does.
        if let Some(from) = m.get("from").and_then(party).filter(|f| f.id == chat.id) {
            chat.language = chat.language.or(from.language);
        }
        let (service, mut msg) = content(m);
        if edit {
            msg.content_type = Some(std::mem::replace(&mut msg.kind, "edit".into()));
            msg.reply_to = Some(ReplyTo {
                message_id: Some(id.clone()),
                ..ReplyTo::default()
            });
        } else if let Some(r) = m.get("reply_to_message").filter(|r| r.is_object()) {
            msg.reply_to = Some(ReplyTo {
                message_id: message_ref(r),
                from: r
                    .get("from")
                    .or_else(|| r.get("sender_chat"))
                    .and_then(|f| s(f, "id")),
                ..ReplyTo::default()
            });
        } else if let Some(story) = m.get("reply_to_story").filter(|r| r.is_object()) {
            msg.reply_to = Some(ReplyTo {
                story: Some(story.clone()),
                ..ReplyTo::default()
            });
        }
        msg.forwarded = [
            "forward_origin",
            "forward_from",
            "forward_from_chat",
            "forward_sender_name",
            "forward_date",
        ]
        .iter()
        .any(|k| m.get(*k).is_some_and(|v| !v.is_null()));
        msg.participant = participant(m, &chat);
        let at = if edit {
            secs(m, "edit_date").or_else(|| secs(m, "date"))
        } else {
            secs(m, "date")
        };
        let kind = if service {
            EventKind::System
        } else {
            EventKind::Message
        };
        let mut e = self.event(kind, at);
        e.provider_message_id = Some(id);
        e.contact = Some(chat);
        e.message = Some(msg);
        e.raw = raw(self.ctx, m);
        finish(e, out);
    }

    fn callback(&self, q: &Value, out: &mut Normalized) {
        let Some(query_id) = s(q, "id") else {
            return unexpected("Telegram callback_query without id".into(), q, out);
        };
        let from = q.get("from").and_then(party);
        let message = q.get("message").filter(|m| m.is_object());
        let chat = message.and_then(|m| m.get("chat")).and_then(party);
        let Some(contact) = chat.clone().or_else(|| from.clone()) else {
            return unexpected(
                format!("Telegram callback_query {query_id} has neither message.chat nor from"),
                q,
                out,
            );
        };
        let participant = from.filter(|f| f.id != contact.id);
        // The button's message date is when the message was sent, not when the button was
        // pressed: the query itself has no time, so occurred_at is the receipt time.
        let mut e = self.event(EventKind::Postback, None);
        e.provider_message_id = Some(query_id);
        e.contact = Some(contact);
        let data = s(q, "data");
        // The button's label, when the message with the inline keyboard came along.
        let title = data
            .as_deref()
            .and_then(|d| message.and_then(|m| button_text(m, d)))
            .or_else(|| s(q, "game_short_name"));
        e.message = Some(Message {
            kind: "postback".into(),
            text: title.clone(),
            reply: Some(Reply {
                kind: "callback_query".into(),
                id: data,
                title,
                ..Reply::default()
            }),
            reply_to: message.and_then(message_ref).map(|id| ReplyTo {
                message_id: Some(id),
                ..ReplyTo::default()
            }),
            participant,
            ..Message::default()
        });
        e.raw = raw(self.ctx, q);
        finish(e, out);
    }

    /// `message_reaction`: a user changed their reactions to a message. The new set's first
    /// emoji is the reaction; an empty new set is a removal (`unreact`, the old emoji kept).
    fn reaction(&self, v: &Value, out: &mut Normalized) {
        let (Some(chat), Some(target)) = (v.get("chat").and_then(party), message_ref(v)) else {
            return unexpected(
                "Telegram message_reaction without chat.id or message_id".into(),
                v,
                out,
            );
        };
        let emoji_of = |key: &str| {
            v.get(key)
                .and_then(Value::as_array)
                .and_then(|list| list.iter().find_map(|r| s(r, "emoji")))
        };
        let (emoji, action) = match emoji_of("new_reaction") {
            Some(e) => (Some(e), "react"),
            None => (emoji_of("old_reaction"), "unreact"),
        };
        let mut e = self.event(EventKind::Reaction, secs(v, "date"));
        let participant = ["user", "actor_chat"]
            .iter()
            .find_map(|k| v.get(*k).and_then(party))
            .filter(|p| p.id != chat.id);
        e.contact = Some(chat);
        e.message = Some(Message {
            kind: "reaction".into(),
            reaction: Some(Reaction {
                message_id: target,
                emoji,
                action: action.into(),
            }),
            participant,
            ..Message::default()
        });
        e.raw = raw(self.ctx, v);
        finish(e, out);
    }

    fn notification(&self, field: &str, v: &Value, out: &mut Normalized) {
        let mut e = self.event(EventKind::Notification, secs(v, "date"));
        e.contact = ["chat", "from", "user", "voter_chat"]
            .iter()
            .find_map(|k| v.get(*k).and_then(party));
        e.notification = Some(Notification {
            topic: field.to_string(),
            // Membership changes say what happened in the member's new status
            // (`kicked` = the user blocked the bot, `member` = unblocked or joined...).
            event: v.get("new_chat_member").and_then(|m| s(m, "status")),
            data: v.clone(),
            standby: false,
        });
        e.raw = raw(self.ctx, v);
        finish(e, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::testing;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use time::macros::datetime;

    fn channels() -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert("telegram_test".to_string(), "acme".to_string());
        m.insert("telegram_other".to_string(), "globex".to_string());
        m
    }

    fn ctx<'a>(channels: &'a HashMap<String, String>, source: &'a str) -> Context<'a> {
        Context {
            source,
            received_at: datetime!(2026-01-01 00:00:00 UTC),
            include_raw: true,
            channels,
            default_tenant: None,
        }
    }

    fn run(body: &[u8], source: &str) -> Normalized {
        let ch = channels();
        normalize(&Verified::assume_verified(body.to_vec()), &ctx(&ch, source))
    }

    #[test]
    fn every_fixture_normalizes_as_expected() {
        let ch = channels();
        testing::check_all("telegram", &ctx(&ch, "telegram_test"), normalize);
    }

    #[test]
    fn every_fixture_yields_something_and_ids_are_stable() {
        for path in testing::bodies("telegram") {
            let body = std::fs::read(&path).unwrap();
            let a = run(&body, "telegram_test");
            let b = run(&body, "telegram_test");
            assert!(
                !a.events.is_empty() || !a.dead_letters.is_empty(),
                "{}",
                path.display()
            );
            let ids: Vec<&str> = a.events.iter().map(|e| e.event_id.as_str()).collect();
            let again: Vec<&str> = b.events.iter().map(|e| e.event_id.as_str()).collect();
            assert_eq!(ids, again, "{}", path.display());
        }
    }

    #[test]
    fn update_ids_are_per_bot_and_edits_are_new_events() {
        let msg = br#"{"update_id":10,"message":{"message_id":5,"date":1767225600,"chat":{"id":42,"type":"private","first_name":"Ann"},"from":{"id":42,"is_bot":false,"first_name":"Ann"},"text":"hi"}}"#;
        let a = run(msg, "telegram_test");
        let b = run(msg, "telegram_test");
        assert_eq!(a.events[0].event_id, b.events[0].event_id);
        assert_eq!(a.events[0].provider_message_id.as_deref(), Some("42:5"));
        // The same update_id on another bot (source) is another update.
        let other = run(msg, "telegram_other");
        assert_eq!(other.events[0].tenant, "globex");
        assert_ne!(a.events[0].event_id, other.events[0].event_id);
        // An edit of the message is its own update, hence its own event.
        let edit = br#"{"update_id":11,"edited_message":{"message_id":5,"date":1767225600,"edit_date":1767225660,"chat":{"id":42,"type":"private"},"text":"hi!"}}"#;
        let e = run(edit, "telegram_test");
        assert_ne!(e.events[0].event_id, a.events[0].event_id);
        assert_eq!(e.events[0].provider_message_id.as_deref(), Some("42:5"));
        assert_eq!(e.events[0].message.as_ref().unwrap().kind, "edit");
    }

    #[test]
    fn unmapped_bot_is_an_unknown_channel_dead_letter() {
        let body = std::fs::read(testing::dir("telegram").join("private_text.json")).unwrap();
        let n = run(&body, "telegram_unmapped");
        assert!(n.events.is_empty());
        assert_eq!(n.dead_letters.len(), 1);
        assert_eq!(n.dead_letters[0].reason.as_str(), "unknown_channel");
        assert!(n.dead_letters[0].detail.contains("telegram_unmapped"));
    }

    #[test]
    fn junk_never_panics() {
        for body in [
            &b""[..],
            b"null",
            b"{}",
            b"{\"update_id\":\"x\"}",
            b"{\"update_id\":1}",
            b"{\"update_id\":1,\"message\":{}}",
            b"{\"update_id\":1,\"message\":{\"chat\":{\"id\":1},\"message_id\":2,\"photo\":[1,null,{}]}}",
            b"{\"update_id\":1,\"callback_query\":{\"id\":\"q\"}}",
            b"{\"update_id\":1,\"message\":{\"chat\":{\"id\":1},\"message_id\":2,\"venue\":{\"location\":7}}}",
        ] {
            let n = run(body, "telegram_test");
            assert!(!n.events.is_empty() || !n.dead_letters.is_empty(), "{body:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn never_panics_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = run(&body, "telegram_test");
        }
    }
}
