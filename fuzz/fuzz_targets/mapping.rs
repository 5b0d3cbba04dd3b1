//! The mapping import parser (the prototype's JSON file) on arbitrary bytes.
//! Every key it reports is then parsed as an operator's sender input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use whatsapp_router::mapping::parse_entries;
use whatsapp_router::sender::parse_user_input;

fuzz_target!(|data: &[u8]| {
    let mut entries = 0usize;
    let _ = parse_entries(data, |key, _tenant| {
        entries += 1;
        let _ = parse_user_input(key);
    });
});
