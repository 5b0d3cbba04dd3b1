//! Standard Webhooks signatures on every forward.
//!
//! `webhook-id` is derived from the WhatsApp message key, so it is the same on
//! every retry and on every duplicate WAHA sends; tenants dedupe on it.
//! `webhook-signature` is `v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>`,
//! one per secret, space separated, so a secret can be rotated without a gap.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";
pub const SECRET_PREFIX: &str = "whsec_";

/// A signing key, parsed from its `whsec_<base64>` form.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// Parses `whsec_<base64>`; the key must decode to at least 24 bytes.
    pub fn parse(secret: &str) -> Result<SigningKey, String> {
        let encoded = secret.strip_prefix(SECRET_PREFIX).ok_or("signing secrets start with `whsec_`")?;
        let key = BASE64.decode(encoded).map_err(|e| format!("not base64 after `whsec_`: {e}"))?;
        if key.len() < 24 {
            return Err(format!("the key is {} bytes; at least 24 are needed", key.len()));
        }
        Ok(SigningKey(key))
    }

    /// A fresh random secret in `whsec_` form.
    pub fn generate() -> String {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        format!("{SECRET_PREFIX}{}", BASE64.encode(key))
    }

    /// `v1,<base64 signature>` of `{id}.{timestamp}.{body}`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` value for all current keys (newest first).
pub fn signature_header(keys: &[SigningKey], id: &str, timestamp: u64, body: &[u8]) -> String {
    keys.iter().map(|k| k.sign(id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector from the Standard Webhooks reference library.
    #[test]
    fn standard_webhooks_vector() {
        let key = SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        assert_eq!(
            key.sign("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn rotation_gives_one_signature_per_key() {
        let a = SigningKey::parse(&SigningKey::generate()).unwrap();
        let b = SigningKey::parse(&SigningKey::generate()).unwrap();
        let header = signature_header(&[a.clone(), b.clone()], "msg_x", 1, b"{}");
        assert_eq!(header, format!("{} {}", a.sign("msg_x", 1, b"{}"), b.sign("msg_x", 1, b"{}")));
    }

    #[test]
    fn bad_secrets() {
        assert!(SigningKey::parse("C2FVsBQIhrscChlQIMV+b5sSYspob7oD").is_err());
        assert!(SigningKey::parse("whsec_!!!").is_err());
        assert!(SigningKey::parse("whsec_c2hvcnQ=").is_err());
    }
}
