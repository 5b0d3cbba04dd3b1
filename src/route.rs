//! Routing decisions: which webhooks are forwarded, to whom, and which lock a sender.
//!
//! Pure: no I/O, no clocks, no allocation on the hot path. [`classify`] reads a
//! parsed envelope into a [`Plan`]; once the sender's current lock is known,
//! [`decide`] turns the plan into a [`Decision`]. The handler does the I/O in
//! between (lock lookup, compare-and-swap) and after (forwarding).

use crate::deeplink::find_tenant_link;
use crate::delivery::dedupe::MessageKey;
use crate::sender::{parse_jid, Jid, SenderKey};
use crate::webhook::Envelope;

/// A tenant's id, as in its deep link.
pub type TenantId = u32;

/// Why a webhook is answered 200 without being forwarded. The names are the
/// `reason` in the JSON answer and the `outcome` label of the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Skip {
    /// Our own outgoing message (`fromMe`).
    FromMe,
    /// A group chat (`@g.us`).
    Group,
    /// `status@broadcast` or a broadcast list.
    Broadcast,
    /// A channel (`@newsletter`).
    Channel,
    /// No sender we can key on.
    NoSender,
    /// An event type that is never routed (`session.status`, unknown events).
    EventIgnored,
    /// An unlocked sender without a deep link.
    NoDeepLink,
    /// An unlocked sender whose deep link names a tenant that does not exist.
    UnknownTenant,
    /// A chat update (ack, reaction, ...) for a sender who is not locked.
    NotLocked,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::FromMe => "from_me",
            Skip::Group => "group",
            Skip::Broadcast => "broadcast",
            Skip::Channel => "channel",
            Skip::NoSender => "no_sender",
            Skip::EventIgnored => "event_ignored",
            Skip::NoDeepLink => "no_deep_link",
            Skip::UnknownTenant => "unknown_tenant",
            Skip::NotLocked => "not_locked",
        }
    }

    pub const ALL: [Skip; 9] = [
        Skip::FromMe,
        Skip::Group,
        Skip::Broadcast,
        Skip::Channel,
        Skip::NoSender,
        Skip::EventIgnored,
        Skip::NoDeepLink,
        Skip::UnknownTenant,
        Skip::NotLocked,
    ];
}

/// The sender of a routable event: its key and, when the payload names the same
/// person in the other key space (phone vs LID), that alias too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sender {
    pub key: SenderKey,
    pub alias: Option<SenderKey>,
}

impl Sender {
    /// The keys to lock together, primary first.
    pub fn keys(&self) -> impl Iterator<Item = SenderKey> {
        std::iter::once(self.key).chain(self.alias)
    }
}

/// What to do with a parsed webhook before looking at any lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    Skip(Skip),
    /// Look up the sender's lock, then [`decide`].
    Resolve {
        sender: Sender,
        /// The tenant named by a deep link in the body, if any.
        link: Option<u64>,
        /// Only new messages may create a lock; chat updates follow an existing one.
        may_lock: bool,
    },
}

/// The event types a router treats differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventKind {
    /// A message from a client (`message`, or `message.any` when not `fromMe`).
    Message,
    /// An update about a message in a chat (ack, reaction, edit, revoke).
    ChatUpdate,
    Other,
}

fn event_kind(event: &str) -> EventKind {
    match event {
        "message" | "message.any" => EventKind::Message,
        "message.ack" | "message.reaction" | "message.edited" | "message.revoked" => EventKind::ChatUpdate,
        _ => EventKind::Other,
    }
}

/// Reads a parsed envelope into a plan. `prefix` is the deep-link prefix.
pub fn classify(envelope: &Envelope<'_>, prefix: &str) -> Plan {
    let payload = &envelope.payload;
    let kind = event_kind(&envelope.event);
    if kind == EventKind::Other {
        return Plan::Skip(Skip::EventIgnored);
    }
    let from_me = payload.from_me.0 == Some(true);
    if kind == EventKind::Message && from_me {
        return Plan::Skip(Skip::FromMe);
    }
    // A chat update is about a chat, whoever caused it (an ack of our own message
    // is still about the client's chat). `payload.id` names the chat reliably:
    // `{fromMe}_{chatId}_{keyId}`; `from` is the fallback.
    let chat = match kind {
        EventKind::ChatUpdate => chat_of_message_id(payload.id.get()).or(payload.from.get()),
        _ => payload.from.get(),
    };
    let Some(chat) = chat else {
        return Plan::Skip(Skip::NoSender);
    };
    let key = match parse_jid(chat) {
        Jid::User(key) => key,
        Jid::Group => return Plan::Skip(Skip::Group),
        Jid::Broadcast => return Plan::Skip(Skip::Broadcast),
        Jid::Channel => return Plan::Skip(Skip::Channel),
        Jid::Invalid => return Plan::Skip(Skip::NoSender),
    };
    // Engines have mislabelled our own messages as `fromMe: false`; a message
    // whose sender is the session's own account is ours whatever the flag says.
    if kind == EventKind::Message && is_me(envelope, key) {
        return Plan::Skip(Skip::FromMe);
    }
    let alias = payload.alternative_ids().find_map(|alt| match parse_jid(alt) {
        Jid::User(other) if other != key && is_other_space(key, other) => Some(other),
        _ => None,
    });
    let may_lock = kind == EventKind::Message;
    let link = if may_lock { payload.body.get().and_then(|b| find_tenant_link(b, prefix)) } else { None };
    Plan::Resolve { sender: Sender { key, alias }, link, may_lock }
}

/// An alias must be the same person in the other key space; two phone numbers
/// in one payload are two people, and locking one to the other would be wrong.
fn is_other_space(a: SenderKey, b: SenderKey) -> bool {
    matches!((a, b), (SenderKey::Phone(_), SenderKey::Lid(_)) | (SenderKey::Lid(_), SenderKey::Phone(_)))
}

fn is_me(envelope: &Envelope<'_>, key: SenderKey) -> bool {
    [envelope.me.id.get(), envelope.me.lid.get()].into_iter().flatten().any(|me| parse_jid(me) == Jid::User(key))
}

/// The chat id inside a message id `{fromMe}_{chatId}_{keyId}[_{participant}]`.
fn chat_of_message_id(id: Option<&str>) -> Option<&str> {
    let rest = id?.strip_prefix("true_").or_else(|| id?.strip_prefix("false_"))?;
    let chat = rest.split('_').next()?;
    chat.contains('@').then_some(chat)
}

/// The WhatsApp message key id (third `_` segment of `payload.id`), used to spot
/// the same message delivered twice.
pub fn message_key_id(id: &str) -> Option<&str> {
    let mut parts = id.splitn(4, '_');
    let (_from_me, _chat, key) = (parts.next()?, parts.next()?, parts.next()?);
    (!key.is_empty()).then_some(key)
}

/// What makes two webhooks the same message, for dedupe and for the stable
/// `webhook-id`: for messages, the session plus the WhatsApp key id (the third
/// `_` segment of `payload.id`), which is the same in a WAHA retry, in
/// `message` + `message.any`, and in the `@lid`/`@c.us` double; for other events
/// (acks of one message differ by ack level) the event id. `None` when the body
/// carries neither; the caller then hashes the body.
pub fn message_identity(envelope: &Envelope<'_>) -> Option<MessageKey> {
    let session = envelope.session.as_deref().unwrap_or("");
    let key_id = match event_kind(&envelope.event) {
        EventKind::Message => envelope.payload.id.get().and_then(message_key_id),
        _ => None,
    };
    match (key_id, envelope.id.as_deref()) {
        (Some(key), _) => Some(identity_hash(&[b"msg", session.as_bytes(), key.as_bytes()])),
        (None, Some(event_id)) => Some(identity_hash(&[b"evt", event_id.as_bytes()])),
        (None, None) => None,
    }
}

/// 16 bytes of SHA-256 over the parts, each followed by a 0 byte.
pub fn identity_hash(parts: &[&[u8]]) -> MessageKey {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
        hasher.update([0u8]);
    }
    let digest = hasher.finalize();
    digest[..16].try_into().expect("SHA-256 has 32 bytes")
}

/// What happens to a routable event once the sender's lock is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Forward to the tenant the sender is locked to.
    Forward {
        tenant: TenantId,
        relock_refused: bool,
    },
    /// Try to lock the sender to this tenant (first contact), then forward to
    /// whoever holds the lock afterwards.
    Lock {
        tenant: TenantId,
    },
    Skip(Skip),
}

/// Decides from a plan's facts and the sender's current lock. `tenant_exists`
/// asks the registry whether a deep link's tenant is real.
pub fn decide(
    link: Option<u64>,
    may_lock: bool,
    current: Option<TenantId>,
    tenant_exists: impl Fn(TenantId) -> bool,
) -> Decision {
    if let Some(tenant) = current {
        // First contact wins: a later link to another tenant changes nothing.
        let relock_refused = link.is_some_and(|l| l != u64::from(tenant));
        return Decision::Forward { tenant, relock_refused };
    }
    if !may_lock {
        return Decision::Skip(Skip::NotLocked);
    }
    let Some(link) = link else {
        return Decision::Skip(Skip::NoDeepLink);
    };
    match TenantId::try_from(link) {
        Ok(tenant) if tenant_exists(tenant) => Decision::Lock { tenant },
        _ => Decision::Skip(Skip::UnknownTenant),
    }
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
