//! JID and operator-input parsing. A parsed sender prints to a form that parses
//! back to the same key, and its byte and cache encodings round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use whatsapp_router::sender::{parse_jid, parse_user_input, Jid, SenderKey};

fn round_trips(key: SenderKey) {
    assert_eq!(parse_user_input(&key.to_string()), Some(key), "{key}");
    assert_eq!(SenderKey::from_bytes(&key.to_bytes()), Some(key));
    assert_eq!(SenderKey::from_cache_key(key.cache_key()), key);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Jid::User(key) = parse_jid(text) {
        round_trips(key);
    }
    if let Some(key) = parse_user_input(text) {
        round_trips(key);
    }
    let _ = SenderKey::from_bytes(data);
});
