//! Admin API tokens: HS256 JWTs signed with `admin.jwt_secret`.
//!
//! Claims are `sub` (who, written to the audit log), `exp` (Unix seconds),
//! `role` (`admin`: everything; `tenant`: only its own tenant's link, QR, stats
//! entry and senders) and `tenant_id` (required for `tenant`). Only HS256 is
//! accepted, so `alg: none` and algorithm-confusion tokens fail; jsonwebtoken
//! checks the signature in constant time (ring's HMAC verify).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::route::TenantId;
use crate::secrets::Secret;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Tenant,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<TenantId>,
}

/// What a verified token may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Admin,
    Tenant(TenantId),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("a tenant token needs a tenant id greater than 0")]
    NoTenant,
    #[error("cannot sign: {0}")]
    Sign(String),
    #[error("`{0}` is not a duration (examples: 3600s, 90m, 24h, 30d)")]
    BadTtl(String),
}

impl Claims {
    /// Claims for a token valid for `ttl` from now.
    pub fn new(sub: &str, role: Role, tenant_id: Option<TenantId>, ttl: Duration) -> Claims {
        let exp = now_secs().saturating_add(ttl.as_secs());
        Claims { sub: sub.to_owned(), exp, role, tenant_id }
    }

    pub fn scope(&self) -> Result<Scope, TokenError> {
        match (self.role, self.tenant_id) {
            (Role::Admin, _) => Ok(Scope::Admin),
            (Role::Tenant, Some(t)) if t > 0 => Ok(Scope::Tenant(t)),
            (Role::Tenant, _) => Err(TokenError::NoTenant),
        }
    }
}

/// Signs `claims` with HS256.
pub fn issue(secret: &Secret, claims: &Claims) -> Result<String, TokenError> {
    claims.scope()?;
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.expose().as_bytes()))
        .map_err(|e| TokenError::Sign(e.to_string()))
}

/// Verifies signature, algorithm and expiry (no leeway: tokens are minted on
/// the router's own clock) and that a tenant token names its tenant.
pub fn verify(secret: &Secret, token: &str) -> Result<(Claims, Scope), TokenError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let data = decode::<Claims>(token, &DecodingKey::from_secret(secret.expose().as_bytes()), &validation)
        .map_err(|e| TokenError::Invalid(e.to_string()))?;
    let scope = data.claims.scope()?;
    Ok((data.claims, scope))
}

/// Parses `3600`, `3600s`, `90m`, `24h`, `30d`.
pub fn parse_ttl(text: &str) -> Result<Duration, TokenError> {
    let bad = || TokenError::BadTtl(text.to_owned());
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let total = n.checked_mul(secs).filter(|s| *s > 0).ok_or_else(bad)?;
    Ok(Duration::from_secs(total))
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn verify_accepts_only_good_hs256_tokens() {
        let secret = Secret::new("admin-secret-0123456789");
        let good = Claims::new("ops", Role::Tenant, Some(2), Duration::from_secs(60));
        let token = issue(&secret, &good).unwrap();
        assert_eq!(verify(&secret, &token).unwrap(), (good.clone(), Scope::Tenant(2)));

        let forged = issue(&Secret::new("another-secret-0123456"), &good).unwrap();
        let expired = issue(&secret, &Claims { exp: now_secs() - 1, ..good.clone() }).unwrap();
        let payload = b64(&serde_json::to_string(&good).unwrap());
        let none = format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
        let hs512 =
            encode(&Header::new(Algorithm::HS512), &good, &EncodingKey::from_secret(b"admin-secret-0123456789"))
                .unwrap();
        let no_tenant = format!(
            "{}.{}",
            token.rsplit_once('.').unwrap().0.split_once('.').unwrap().0,
            b64(r#"{"sub":"x","exp":99999999999,"role":"tenant"}"#)
        );
        for bad in [&forged, &expired, &none, &hs512, &no_tenant, "", "a.b.c", "...."] {
            assert!(verify(&secret, bad).is_err(), "{bad}");
        }
        assert_eq!(issue(&secret, &Claims { tenant_id: None, ..good }), Err(TokenError::NoTenant));
    }

    #[test]
    fn ttls() {
        let cases: &[(&str, Option<u64>)] = &[
            ("24h", Some(86_400)),
            ("90m", Some(5_400)),
            ("30d", Some(2_592_000)),
            ("15", Some(15)),
            ("15s", Some(15)),
            ("0h", None),
            ("h", None),
            ("1w", None),
            ("-1h", None),
            ("99999999999999999999d", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_ttl(text).ok().map(|d| d.as_secs()), *expected, "{text}");
        }
    }
}
