//! Deep-link extraction on arbitrary text, with the default prefix and with a
//! prefix taken from the input. A found id must really follow the prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use whatsapp_router::deeplink::find_tenant_link;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(id) = find_tenant_link(text, "start_realty_") {
        let lower = text.to_ascii_lowercase();
        let found = lower.match_indices("start_realty_").any(|(at, p)| {
            let digits: String = lower[at + p.len()..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok() == Some(id)
        });
        assert!(found, "id {id} is not after the prefix in {text:?}");
    }
    // A prefix chosen by the input (config allows any ASCII without spaces).
    if let Some((prefix, body)) = text.split_once('\n') {
        let _ = find_tenant_link(body, prefix);
    }
});
