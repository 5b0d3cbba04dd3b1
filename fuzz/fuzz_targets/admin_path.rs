//! The admin API's path parser on arbitrary paths: a route, a 404 or a 400.
#![no_main]

use libfuzzer_sys::fuzz_target;
use whatsapp_router::admin::Route;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let _ = Route::parse(path);
});
