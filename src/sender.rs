//! Sender identity: turns WhatsApp JIDs into compact, comparable keys.
//!
//! A phone sender (`971509876543@c.us`, `...@s.whatsapp.net`, with or without a
//! device suffix such as `:31`) is keyed by its digits. An `@lid` sender (WhatsApp's
//! "hidden user id") lives in its own key space: the same digits under `@lid` and
//! `@c.us` are two different keys. Keys are a tag plus a `u64`, so ten million of
//! them fit in a few hundred MB of cache instead of a `String` each.

use std::fmt;

/// The most digits a key may have: 18 digits always fit in 63 bits, which leaves
/// the top bit of [`SenderKey::cache_key`] for the key space.
const MAX_DIGITS: usize = 18;
const LID_BIT: u64 = 1 << 63;

/// Who sent a message, in a form the lock table can key on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SenderKey {
    /// A phone number (E.164 digits, no `+`).
    Phone(u64),
    /// A WhatsApp LID (`...@lid`), which hides the phone number.
    Lid(u64),
}

/// What a JID names, as far as routing cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jid {
    User(SenderKey),
    Group,
    Broadcast,
    Channel,
    /// Anything we cannot key on: unknown server, non-digit user part, empty.
    Invalid,
}

/// Classifies a JID as sent by the gateway (`user[:device]@server`).
pub fn parse_jid(jid: &str) -> Jid {
    let Some((user, server)) = jid.rsplit_once('@') else {
        return Jid::Invalid;
    };
    match server {
        "c.us" | "s.whatsapp.net" => user_digits(user).map_or(Jid::Invalid, |d| Jid::User(SenderKey::Phone(d))),
        "lid" => user_digits(user).map_or(Jid::Invalid, |d| Jid::User(SenderKey::Lid(d))),
        "g.us" => Jid::Group,
        "broadcast" => Jid::Broadcast,
        "newsletter" => Jid::Channel,
        _ => Jid::Invalid,
    }
}

/// Parses a sender as an operator types it: `971509876543`, `+971509876543`,
/// `971509876543@c.us`, `lid:4639135154355` or `4639135154355@lid`.
pub fn parse_user_input(input: &str) -> Option<SenderKey> {
    if let Some(lid) = input.strip_prefix("lid:") {
        return digits(lid).map(SenderKey::Lid);
    }
    if input.contains('@') {
        return match parse_jid(input) {
            Jid::User(key) => Some(key),
            _ => None,
        };
    }
    digits(input.strip_prefix('+').unwrap_or(input)).map(SenderKey::Phone)
}

/// Strips a device (`:31`) or agent (`_1`) suffix, then reads the digits.
fn user_digits(user: &str) -> Option<u64> {
    let end = user.find([':', '_']).unwrap_or(user.len());
    digits(&user[..end])
}

/// 1 to 18 ASCII digits without a leading zero (a leading zero would not survive
/// the round trip through `u64`, and no E.164 number or LID has one).
fn digits(s: &str) -> Option<u64> {
    let bytes = s.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_DIGITS || bytes[0] == b'0' {
        return None;
    }
    let mut value: u64 = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u64::from(b - b'0');
    }
    Some(value)
}

impl SenderKey {
    /// One `u64` per sender for the in-memory cache: the digits, with the top bit
    /// set for the LID key space.
    pub fn cache_key(self) -> u64 {
        match self {
            SenderKey::Phone(d) => d,
            SenderKey::Lid(d) => d | LID_BIT,
        }
    }

    /// Inverse of [`SenderKey::cache_key`].
    pub fn from_cache_key(k: u64) -> SenderKey {
        if k & LID_BIT != 0 {
            SenderKey::Lid(k & !LID_BIT)
        } else {
            SenderKey::Phone(k)
        }
    }

    /// The on-disk key: the cache key in big-endian, so a tree scan lists phones
    /// first, then LIDs, each in numeric order.
    pub fn to_bytes(self) -> [u8; 8] {
        self.cache_key().to_be_bytes()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<SenderKey> {
        let array: [u8; 8] = bytes.try_into().ok()?;
        Some(SenderKey::from_cache_key(u64::from_be_bytes(array)))
    }

    /// The sender with most of its digits hidden, for logs: `9715****6543`.
    pub fn masked(self) -> Masked {
        Masked(self)
    }
}

/// Prints the canonical form: digits for a phone, `digits@lid` for a LID.
/// This is what `X-Gateway-Sender` carries and what `mapping export` writes.
impl fmt::Display for SenderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SenderKey::Phone(d) => write!(f, "{d}"),
            SenderKey::Lid(d) => write!(f, "{d}@lid"),
        }
    }
}

/// A sender as it may appear in logs. Phone numbers are personal data.
pub struct Masked(SenderKey);

impl fmt::Display for Masked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (digits, suffix) = match self.0 {
            SenderKey::Phone(d) => (d.to_string(), ""),
            SenderKey::Lid(d) => (d.to_string(), "@lid"),
        };
        if digits.len() > 8 {
            write!(f, "{}****{}{suffix}", &digits[..4], &digits[digits.len() - 4..])
        } else {
            write!(f, "****{}{suffix}", &digits[digits.len().saturating_sub(2)..])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(jid: &str, expected: Jid) {
        assert_eq!(parse_jid(jid), expected, "parse_jid({jid:?})");
    }

    #[test]
    fn jids() {
        use SenderKey::*;
        check("971509876543@c.us", Jid::User(Phone(971509876543)));
        check("971509876543@s.whatsapp.net", Jid::User(Phone(971509876543)));
        check("971509876543:31@c.us", Jid::User(Phone(971509876543)));
        check("971509876543:12@s.whatsapp.net", Jid::User(Phone(971509876543)));
        check("971509876543_1:3@s.whatsapp.net", Jid::User(Phone(971509876543)));
        check("4639135154355@lid", Jid::User(Lid(4639135154355)));
        check("4555685237123:31@lid", Jid::User(Lid(4555685237123)));
        check("120363420500389503@g.us", Jid::Group);
        check("status@broadcast", Jid::Broadcast);
        check("1234567@broadcast", Jid::Broadcast);
        check("111111111111111111@newsletter", Jid::Channel);
        check("xxx@c.us", Jid::Invalid);
        check("@c.us", Jid::Invalid);
        check("0123@c.us", Jid::Invalid);
        check("1234567890123456789@c.us", Jid::Invalid);
        check("971509876543", Jid::Invalid);
        check("971509876543@example.com", Jid::Invalid);
        check("", Jid::Invalid);
        check("９７１@c.us", Jid::Invalid);
    }

    #[test]
    fn user_input() {
        use SenderKey::*;
        let cases: &[(&str, Option<SenderKey>)] = &[
            ("971509876543", Some(Phone(971509876543))),
            ("+971509876543", Some(Phone(971509876543))),
            ("971509876543@c.us", Some(Phone(971509876543))),
            ("lid:4639135154355", Some(Lid(4639135154355))),
            ("4639135154355@lid", Some(Lid(4639135154355))),
            ("../etc", None),
            ("12a4", None),
            ("", None),
            ("++1", None),
            ("lid:", None),
            ("1@g.us", None),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_user_input(input), *expected, "{input:?}");
        }
    }

    #[test]
    fn key_spaces_do_not_collide_and_round_trip() {
        let phone = SenderKey::Phone(4639135154355);
        let lid = SenderKey::Lid(4639135154355);
        assert_ne!(phone.cache_key(), lid.cache_key());
        for key in [phone, lid, SenderKey::Phone(999_999_999_999_999_999)] {
            assert_eq!(SenderKey::from_cache_key(key.cache_key()), key);
            assert_eq!(SenderKey::from_bytes(&key.to_bytes()), Some(key));
            assert_eq!(parse_user_input(&key.to_string()), Some(key));
        }
    }

    #[test]
    fn masking() {
        assert_eq!(SenderKey::Phone(971509876543).masked().to_string(), "9715****6543");
        assert_eq!(SenderKey::Lid(4639135154355).masked().to_string(), "4639****4355@lid");
        assert_eq!(SenderKey::Phone(12345).masked().to_string(), "****45");
    }
}
