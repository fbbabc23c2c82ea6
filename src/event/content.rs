//! Typed bodies of the unified event: message, status, notification, provider errors.
//!
//! Types that providers extend without notice (message types, status states, notification
//! fields) are open strings, documented with the values we produce; a value we do not know is
//! carried through, never dropped.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Party;

/// A message's content. `type` is one of: text, image, audio, video, document, sticker,
/// location, contacts, interactive, button, reaction, order, system, edit, revoke,
/// request_welcome, postback, unsupported (and any new provider type, verbatim).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Message {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Media>,
    /// Further attachments when one message carries several (Messenger/Instagram, MMS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Media>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// Shared contact cards, in the provider's shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contacts: Option<Value>,
    /// A reply chosen from buttons, lists, flows, quick replies or postbacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaction: Option<Reaction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Value>,
    /// For `type = system`: the provider's system object (WhatsApp `system`, with a top-level
    /// `identity` copied in for `customer_identity_changed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<Value>,
    /// The type of the content behind a wrapper type: for `edit`, the type of the new content
    /// (text, image...); for `unsupported`, the provider's name for what it could not deliver
    /// (WhatsApp `unsupported.type`: poll_creation, edit...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Group conversations (WhatsApp groups): the member who sent the message; `contact` is
    /// then the group itself (`contact.id` = group id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<Party>,
    /// The message this one replies to, or (edit/revoke) the one it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyTo>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forwarded: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub frequently_forwarded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referred_product: Option<Value>,
    /// Ad or link that brought the contact (click-to-WhatsApp, Messenger/Instagram referral).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referral: Option<Value>,
    /// Meta Handover Protocol: the item came on the `standby` channel, i.e. another app owns
    /// the thread. Informational: this app should not answer as the thread owner.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
}

impl Message {
    /// Sets the message's media from every item it carries, in order: the first is `media`,
    /// the others `attachments` (the contract: `attachments` never repeats `media`).
    pub fn set_media(&mut self, items: impl IntoIterator<Item = Media>) {
        let mut items = items.into_iter();
        self.media = items.next();
        self.attachments = items.collect();
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Media {
    /// image, audio, video, document, sticker, file, share, story_mention, ephemeral, ...
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub animated: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Reply {
    /// button_reply, list_reply, nfm_reply, button, quick_reply, postback, ...
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Structured answer (a WhatsApp Flow's `response_json`, parsed when it is JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Reaction {
    /// The message reacted to.
    pub message_id: String,
    /// Absent when the reaction was removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// react | unreact
    pub action: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReplyTo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Instagram story replies carry the story instead of a message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub story: Option<Value>,
}

/// Delivery state of a message the business sent (or, for Messenger/Instagram watermarks,
/// of every message up to a time).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Status {
    /// The state in switchboard's vocabulary, the same for every provider: accepted, queued,
    /// sending, sent, delivered, read, played, failed, undelivered, rejected, expired,
    /// deleted, unknown.
    pub state: String,
    /// The provider's own word for the state when it differs from `state` (e.g. Telnyx
    /// `delivery_failed`, Vonage SMS `buffered`, Sinch `QUEUED_ON_CHANNEL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_state: Option<String>,
    /// The provider id of the message this status is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Several messages at once (Messenger delivery `mids`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub message_ids: Vec<String>,
    /// Every message before this time has this state (Messenger read/delivery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Value>,
    /// Opaque data the business attached when sending (`biz_opaque_callback_data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_data: Option<String>,
    /// Group sends (WhatsApp groups): the member this status is about; `contact` is then the
    /// group (`contact.id` = group id). A message to a group has one status per member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<Party>,
    /// Came on Meta's `standby` channel: another app owns the thread (see `message.standby`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
}

/// A provider notification that is neither a message nor a status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Notification {
    /// The provider's topic, e.g. Meta's `field` (`message_template_status_update`).
    pub topic: String,
    /// The provider's event name within the topic when it has one (`APPROVED`, `FLAGGED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The notification's payload as the provider sent it.
    pub data: Value,
    /// Came on Meta's `standby` channel: another app owns the thread (see `message.standby`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProviderError {
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub href: Option<String>,
}
