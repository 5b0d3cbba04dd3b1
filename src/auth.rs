//! Webhook authentication: WAHA's `X-Api-Key` and `X-Webhook-Hmac`.
//!
//! Both comparisons are constant time. The HMAC is HMAC-SHA512 over the raw body
//! bytes, hex encoded, as WAHA computes it.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha512;

use crate::secrets::Secret;

pub const HEADER_API_KEY: &str = "x-api-key";
pub const HEADER_HMAC: &str = "x-webhook-hmac";
pub const HEADER_HMAC_ALGORITHM: &str = "x-webhook-hmac-algorithm";
pub const HEADER_HMAC_VERSION: &str = "x-webhook-hmac-version";

/// Checks `X-Api-Key` when a key is configured. Runs before the body is read.
pub fn api_key_ok(headers: &HeaderMap, key: Option<&Secret>) -> bool {
    let Some(key) = key else { return true };
    headers.get(HEADER_API_KEY).is_some_and(|v| key.matches(v.as_bytes()))
}

/// Checks `X-Webhook-Hmac` when a key is configured. Fails closed on an
/// algorithm other than sha512 and on a signature version we do not know (a fork
/// of WAHA signs `{timestamp}.{body}` and says so with a version header).
pub fn hmac_ok(headers: &HeaderMap, body: &[u8], key: Option<&Secret>) -> bool {
    let Some(key) = key else { return true };
    if headers.get(HEADER_HMAC_ALGORITHM).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"sha512")) {
        return false;
    }
    if headers.get(HEADER_HMAC_VERSION).is_some() {
        return false;
    }
    let Some(presented) = headers.get(HEADER_HMAC).and_then(|v| hex::decode(v.as_bytes()).ok()) else {
        return false;
    };
    let mut mac =
        <Hmac<Sha512> as Mac>::new_from_slice(key.expose().as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    // `verify_slice` is constant time and checks the length too.
    mac.verify_slice(&presented).is_ok()
}

/// Hex HMAC-SHA512 of `body`, as WAHA sends it (tests and tools use this).
pub fn sign_hmac(key: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn waha_docs_vector() {
        let body = br#"{"event":"message","session":"default","engine":"WEBJS"}"#;
        let expected = "208f8a55dde9e05519e898b10b89bf0d0b3b0fdf11fdbf09b6b90476301b98d8097c462b2b17a6ce93b6b47a136cf2e78a33a63f6752c2c1631777076153fa89";
        assert_eq!(sign_hmac("my-secret-key", body), expected);
        let key = Secret::new("my-secret-key");
        assert!(hmac_ok(&headers(&[(HEADER_HMAC, expected)]), body, Some(&key)));
        assert!(hmac_ok(&headers(&[(HEADER_HMAC, &expected.to_uppercase())]), body, Some(&key)));
        assert!(hmac_ok(&headers(&[(HEADER_HMAC, expected), (HEADER_HMAC_ALGORITHM, "sha512")]), body, Some(&key)));
        assert!(!hmac_ok(&headers(&[(HEADER_HMAC, expected), (HEADER_HMAC_ALGORITHM, "sha256")]), body, Some(&key)));
        assert!(!hmac_ok(&headers(&[(HEADER_HMAC, expected), (HEADER_HMAC_VERSION, "2")]), body, Some(&key)));
        assert!(!hmac_ok(&headers(&[(HEADER_HMAC, &expected[..64])]), body, Some(&key)));
        assert!(!hmac_ok(&headers(&[(HEADER_HMAC, "zz")]), body, Some(&key)));
        assert!(!hmac_ok(&headers(&[]), body, Some(&key)));
        assert!(!hmac_ok(&headers(&[(HEADER_HMAC, expected)]), b"{}", Some(&key)));
        assert!(hmac_ok(&headers(&[]), body, None));
    }

    #[test]
    fn fixture_vectors() {
        let cases: &[(&str, &str)] = &[
            (include_str!("../data/fixtures/waha/message.ack.json"), "dd012ff735ed733ffceeabd45c3ea4e600cff8d737fd09fba8042557ad7da241e324842a45df0b27393cdad8e668bd8fa235f804555d8d7089689f3394e21df7"),
            (include_str!("../data/fixtures/waha/derived/deeplink_first_message.cus.json"), "c1de3ad7f267cec4990c543d5a10ea0f9c055b7a64faf3cb938a4f80301478737f6ec42471ede42930875f376c6857eb1bf03eb45e256e53422e3cc8ba97439b"),
        ];
        for (body, expected) in cases {
            assert_eq!(sign_hmac("test_hmac_key", body.as_bytes()), *expected);
        }
    }

    #[test]
    fn api_key() {
        let key = Secret::new("0123456789abcdef");
        assert!(api_key_ok(&headers(&[(HEADER_API_KEY, "0123456789abcdef")]), Some(&key)));
        assert!(!api_key_ok(&headers(&[(HEADER_API_KEY, "0123456789abcdeF")]), Some(&key)));
        assert!(!api_key_ok(&headers(&[]), Some(&key)));
        assert!(api_key_ok(&headers(&[]), None));
    }
}
