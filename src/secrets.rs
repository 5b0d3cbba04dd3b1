//! Secrets kept in the data dir: generated once, read on every later start.
//!
//! A secret configured as `"generate"` lives in `<data_dir>/secrets/<name>`
//! (mode 0600). It is made from 32 random bytes on first start, and the router
//! prints where it is so the operator can hand it to WAHA.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::config::{Config, SecretSetting};
use crate::delivery::sign::SigningKey;

/// A secret value. Never printed by `Debug`; compared in constant time.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with a presented value (the length may leak, the
    /// content does not).
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The secrets the router runs with, after generated ones are loaded.
#[derive(Clone, Debug)]
pub struct Secrets {
    pub waha_api_key: Option<Secret>,
    pub waha_hmac_key: Option<Secret>,
    pub admin_jwt_secret: Secret,
    /// The global forward signing secret (`whsec_...`).
    pub signing_secret: Secret,
    /// Secrets created by this start, for the operator to be told about.
    pub generated: Vec<PathBuf>,
}

/// Resolves every secret of `config`, creating missing generated ones.
pub fn resolve(config: &Config) -> io::Result<Secrets> {
    let dir = config.data_dir.join("secrets");
    let mut generated = Vec::new();
    let mut get_with = |name: &str, setting: &SecretSetting, make: fn() -> String| -> io::Result<Secret> {
        match setting {
            SecretSetting::Value(v) => Ok(Secret(v.clone())),
            SecretSetting::Generate => {
                let (secret, created) = load_or_create(&dir.join(name), make)?;
                if created {
                    generated.push(dir.join(name));
                }
                Ok(secret)
            }
        }
    };
    let waha_api_key = config.waha.api_key.as_ref().map(|s| get_with("waha_api_key", s, random_hex)).transpose()?;
    let waha_hmac_key = config.waha.hmac_key.as_ref().map(|s| get_with("waha_hmac_key", s, random_hex)).transpose()?;
    let admin_jwt_secret = get_with("admin_jwt_secret", &config.admin.jwt_secret, random_hex)?;
    let signing_secret = get_with("forward_signing_secret", &config.forward.signing_secret, SigningKey::generate)?;
    Ok(Secrets { waha_api_key, waha_hmac_key, admin_jwt_secret, signing_secret, generated })
}

/// 32 random bytes, hex encoded.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn load_or_create(path: &Path, make: fn() -> String) -> io::Result<(Secret, bool)> {
    match fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok((Secret(text.trim().to_owned()), false)),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let dir = path.parent().expect("secret paths have a parent");
    fs::create_dir_all(dir)?;
    let value = make();
    // Write to a temporary file and rename, so a crash never leaves half a secret.
    let tmp = path.with_extension("tmp");
    {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(value.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    Ok((Secret(value), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::load(None, Vec::new()).unwrap();
        config.data_dir = dir.path().to_path_buf();
        let first = resolve(&config).unwrap();
        assert_eq!(first.generated.len(), 3);
        assert!(first.signing_secret.expose().starts_with("whsec_"));
        let key = first.waha_api_key.clone().unwrap();
        assert_eq!(key.expose().len(), 64);
        let second = resolve(&config).unwrap();
        assert!(second.generated.is_empty());
        assert_eq!(second.waha_api_key.unwrap().expose(), key.expose());
        assert_ne!(second.admin_jwt_secret.expose(), key.expose());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&first.generated[0]).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn matches_is_exact() {
        let s = Secret::new("abc");
        assert!(s.matches(b"abc"));
        assert!(!s.matches(b"abd"));
        assert!(!s.matches(b"ab"));
        assert!(!s.matches(b"abcd"));
        assert!(!s.matches(b""));
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }
}
