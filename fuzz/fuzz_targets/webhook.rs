//! The webhook parser and the routing decision on arbitrary bytes: what any
//! caller with the API key can send. Must never panic; a routable plan must name
//! a sender whose keys survive the store's encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use whatsapp_router::route::{self, Plan};
use whatsapp_router::sender::SenderKey;
use whatsapp_router::webhook;

fuzz_target!(|data: &[u8]| {
    let Ok((plan, _identity)) =
        webhook::with_envelope(data, |e| (route::classify(e, "start_realty_"), route::message_identity(e)))
    else {
        return;
    };
    if let Plan::Resolve { sender, .. } = plan {
        for key in sender.keys() {
            assert_eq!(SenderKey::from_bytes(&key.to_bytes()), Some(key));
            assert_eq!(SenderKey::from_cache_key(key.cache_key()), key);
        }
    }
    // The body hash used when a message has no identity must not panic either.
    let _ = route::identity_hash(&[b"body", data]);
});
