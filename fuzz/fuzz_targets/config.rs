//! Config parsing and validation on arbitrary TOML: errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use whatsapp_router::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Config::from_toml(text);
});
