//! Configuration: the TOML schema, environment overrides, and validation.
//!
//! Loaded and validated completely before any port is bound: a bad value exits
//! the process with a message naming the key. The embedded default
//! (`config.default.toml`) is used when no file is given; environment variables
//! `WHATSAPP_ROUTER_<KEY>` (sections joined with `__`) override either.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use http::Uri;
use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::delivery::schedule::RetryPolicy;
use crate::delivery::sign::SigningKey;
use crate::route::TenantId;

/// The configuration used when no file is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config.default.toml");
/// Prefix of the environment variables that override keys.
pub const ENV_PREFIX: &str = "WHATSAPP_ROUTER_";
/// Environment variable naming the config file (same as `--config`); not a key.
pub const ENV_CONFIG_PATH: &str = "WHATSAPP_ROUTER_CONFIG";
/// A secret set to this value is generated on first start and kept in the data dir.
pub const GENERATE: &str = "generate";
/// Webhook bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A configuration problem, naming the key it is about.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl fmt::Display) -> ConfigError {
        ConfigError { key: key.into(), message: message.to_string() }
    }
}

/// The validated configuration. Build it with [`Config::load`] or [`Config::from_toml`].
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where `GET /metrics` is served; `None` turns the listener off.
    pub metrics_listen: Option<SocketAddr>,
    /// Whether a few counters carry a `tenant_id` label (off for huge tenant counts).
    pub metrics_tenant_labels: bool,
    pub log_format: LogFormat,
    pub data_dir: PathBuf,
    pub gateway_phone: String,
    pub deep_link_prefix: String,
    /// How long a graceful shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// How the server uses the cores (see [`RuntimeModel`]).
    pub runtime: RuntimeModel,
    /// Worker threads: one accept loop each (thread-per-core) or the size of the
    /// shared pool (multi-thread). Never 0: `workers = 0` is resolved to the CPU count.
    pub workers: usize,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers; also how long a
    /// keep-alive connection may sit idle between requests.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a whole request body.
    pub body_read_timeout: Duration,
    pub waha: WahaConfig,
    pub admin: AdminConfig,
    pub forward: ForwardConfig,
    pub delivery: DeliveryConfig,
    pub tenants: Vec<TenantConfig>,
}

/// The durable delivery queue (`[delivery]`).
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    pub retry: RetryPolicy,
    /// How long WAHA's request may wait for the tenant before the message is parked.
    pub inline_timeout: Duration,
    /// Consecutive failures that open a tenant's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before letting one trial through.
    pub breaker_open: Duration,
    /// Deliveries in flight to one tenant at once (inline and from the queue).
    pub max_in_flight_per_tenant: usize,
    pub dedupe_window: Duration,
    pub dedupe_max_entries: usize,
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event (the default).
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        }
    }
}

/// How the server spreads work over the cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeModel {
    /// One `current_thread` runtime per worker thread, each with its own
    /// SO_REUSEPORT listener and outbound pool: no cross-core hand-offs on the
    /// request path, which are what costs most on small VMs (README, "Performance").
    ThreadPerCore,
    /// One work-stealing tokio runtime and one listener.
    MultiThread,
}

impl RuntimeModel {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeModel::ThreadPerCore => "thread-per-core",
            RuntimeModel::MultiThread => "multi-thread",
        }
    }
}

#[derive(Clone, Debug)]
pub struct WahaConfig {
    pub api_key: Option<SecretSetting>,
    pub hmac_key: Option<SecretSetting>,
    pub allow_unauthenticated: bool,
    /// Set when `waha.base_url` and `waha.unlinked_reply_text` are.
    pub auto_reply: Option<AutoReplyConfig>,
}

/// The optional reply to senders who wrote without a deep link (`crate::autoreply`).
#[derive(Clone, Debug)]
pub struct AutoReplyConfig {
    /// WAHA's API, e.g. `http://127.0.0.1:3000`.
    pub base_url: String,
    pub session: String,
    pub text: String,
    /// WAHA's own API key (`X-Api-Key` on calls to WAHA), not ours.
    pub waha_api_key: Option<String>,
}

#[derive(Clone, Debug)]
pub struct AdminConfig {
    pub jwt_secret: SecretSetting,
}

#[derive(Clone, Debug)]
pub struct ForwardConfig {
    pub url_template: String,
    /// The global Standard Webhooks secret (`whsec_...`), for tenants without their own.
    pub signing_secret: SecretSetting,
    /// The secret being rotated out: forwards carry a signature for both.
    pub previous_signing_secret: Option<String>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

#[derive(Clone, Debug)]
pub struct TenantConfig {
    pub id: TenantId,
    pub name: String,
    /// Overrides `forward.url_template` for this tenant.
    pub url: Option<String>,
    /// The tenant's own signing secret(s), newest first; empty uses the global one.
    pub signing_secrets: Vec<String>,
}

/// A secret as configured: a value, or "make one and keep it in the data dir".
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSetting {
    Value(String),
    Generate,
}

impl fmt::Debug for SecretSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSetting::Value(_) => f.write_str("Value(<redacted>)"),
            SecretSetting::Generate => f.write_str("Generate"),
        }
    }
}

impl Config {
    /// Loads `path` (or the embedded default), applies `env` overrides and validates.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new("--config", format!("cannot read {}: {e}", path.display())))?,
            None => EMBEDDED_DEFAULT.to_owned(),
        };
        let mut table: toml::Table =
            text.parse().map_err(|e: toml::de::Error| ConfigError::new(error_key(&e), e.message()))?;
        apply_env(&mut table, env)?;
        Config::from_table(table)
    }

    /// Parses and validates a TOML document, without environment overrides.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table =
            text.parse().map_err(|e: toml::de::Error| ConfigError::new(error_key(&e), e.message()))?;
        Config::from_table(table)
    }

    fn from_table(table: toml::Table) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            // serde reports a missing field at its parent's path; name the field.
            let missing = message.strip_prefix("missing field `").and_then(|m| m.split('`').next());
            let key = match (path.as_str(), missing) {
                (".", Some(field)) => field.to_owned(),
                (_, Some(field)) => format!("{path}.{field}"),
                _ => path,
            };
            ConfigError::new(key, message)
        })?;
        raw.validate()
    }

    /// The URL a tenant's messages are forwarded to.
    pub fn tenant_url(&self, tenant: &TenantConfig) -> String {
        tenant_url(&self.forward.url_template, tenant.id, tenant.url.as_deref())
    }
}

/// A tenant's forward URL: its own, or the template with `{tenant_id}` filled in.
pub fn tenant_url(template: &str, id: TenantId, own: Option<&str>) -> String {
    match own {
        Some(url) => url.to_owned(),
        None => template.replace("{tenant_id}", &id.to_string()),
    }
}

/// Checks that `url` can be forwarded to: absolute http(s) with a host.
pub fn parse_forward_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{url}` must start with http:// or https://")),
    }
    if uri.authority().is_none() {
        return Err(format!("`{url}` has no host"));
    }
    Ok(uri)
}

fn error_key(e: &toml::de::Error) -> String {
    e.span().map_or_else(|| "<file>".to_owned(), |s| format!("<file> at byte {}", s.start))
}

/// Applies `WHATSAPP_ROUTER_*` variables: `WHATSAPP_ROUTER_FORWARD__TIMEOUT_MS=2000`
/// sets `forward.timeout_ms`. A value that starts with `[` or `{` is read as TOML
/// (so `WHATSAPP_ROUTER_TENANTS='[{id=2,name="A"}]'` works); anything else is a
/// string, which numeric and boolean keys parse.
fn apply_env(table: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> =
        env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != ENV_CONFIG_PATH).collect();
    vars.sort();
    for (name, raw) in vars {
        let path: Vec<String> = name[ENV_PREFIX.len()..].to_ascii_lowercase().split("__").map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::new(&name, "malformed variable name"));
        }
        let value = if raw.trim_start().starts_with(['[', '{']) {
            let doc: toml::Table =
                format!("v = {raw}").parse().map_err(|e: toml::de::Error| ConfigError::new(&name, e.message()))?;
            doc.get("v").cloned().unwrap_or(toml::Value::String(raw))
        } else {
            toml::Value::String(raw)
        };
        let (last, sections) = path.split_last().expect("split yields at least one part");
        let mut node = &mut *table;
        for section in sections {
            let entry = node.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node =
                entry.as_table_mut().ok_or_else(|| ConfigError::new(&name, format!("`{section}` is not a section")))?;
        }
        node.insert(last.clone(), value);
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_listen", deserialize_with = "flex_string")]
    listen: String,
    #[serde(default = "default_metrics_listen", deserialize_with = "flex_string")]
    metrics_listen: String,
    #[serde(default = "default_true", deserialize_with = "flex_bool")]
    metrics_tenant_labels: bool,
    #[serde(default = "default_log_format", deserialize_with = "flex_string")]
    log_format: String,
    #[serde(default = "default_data_dir", deserialize_with = "flex_string")]
    data_dir: String,
    #[serde(deserialize_with = "flex_string")]
    gateway_phone: String,
    #[serde(default = "default_prefix", deserialize_with = "flex_string")]
    deep_link_prefix: String,
    #[serde(default = "default_drain_ms", deserialize_with = "flex_num")]
    drain_timeout_ms: u64,
    #[serde(default = "default_runtime", deserialize_with = "flex_string")]
    runtime: String,
    #[serde(default, deserialize_with = "flex_num")]
    workers: usize,
    #[serde(default = "default_max_connections", deserialize_with = "flex_num")]
    max_connections: usize,
    #[serde(default = "default_read_timeout_ms", deserialize_with = "flex_num")]
    header_read_timeout_ms: u64,
    #[serde(default = "default_read_timeout_ms", deserialize_with = "flex_num")]
    body_read_timeout_ms: u64,
    #[serde(default)]
    waha: RawWaha,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    forward: RawForward,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    tenants: Vec<RawTenant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDelivery {
    #[serde(deserialize_with = "flex_num_list")]
    retry_schedule_s: Vec<u64>,
    #[serde(deserialize_with = "flex_num")]
    max_age_s: u64,
    #[serde(deserialize_with = "flex_num")]
    jitter_percent: u64,
    #[serde(deserialize_with = "flex_num")]
    inline_timeout_ms: u64,
    #[serde(deserialize_with = "flex_num")]
    breaker_failures: u32,
    #[serde(deserialize_with = "flex_num")]
    breaker_open_ms: u64,
    #[serde(deserialize_with = "flex_num")]
    max_in_flight_per_tenant: usize,
    #[serde(deserialize_with = "flex_num")]
    dedupe_window_s: u64,
    #[serde(deserialize_with = "flex_num")]
    dedupe_max_entries: usize,
}

impl Default for RawDelivery {
    fn default() -> Self {
        let standard = RetryPolicy::standard();
        RawDelivery {
            retry_schedule_s: standard.schedule.iter().map(Duration::as_secs).collect(),
            max_age_s: standard.max_age.as_secs(),
            jitter_percent: 20,
            inline_timeout_ms: 2_000,
            breaker_failures: 5,
            breaker_open_ms: 30_000,
            max_in_flight_per_tenant: 32,
            dedupe_window_s: 24 * 3600,
            dedupe_max_entries: 1_000_000,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWaha {
    #[serde(default, deserialize_with = "flex_opt_string")]
    api_key: Option<String>,
    #[serde(default, deserialize_with = "flex_opt_string")]
    hmac_key: Option<String>,
    #[serde(default, deserialize_with = "flex_bool")]
    allow_unauthenticated: bool,
    #[serde(default, deserialize_with = "flex_opt_string")]
    base_url: Option<String>,
    #[serde(default, deserialize_with = "flex_opt_string")]
    session: Option<String>,
    #[serde(default, deserialize_with = "flex_opt_string")]
    unlinked_reply_text: Option<String>,
    #[serde(default, deserialize_with = "flex_opt_string")]
    base_api_key: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default, deserialize_with = "flex_opt_string")]
    jwt_secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    #[serde(default = "default_template", deserialize_with = "flex_string")]
    url_template: String,
    #[serde(default = "default_timeout_ms", deserialize_with = "flex_num")]
    timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms", deserialize_with = "flex_num")]
    connect_timeout_ms: u64,
    #[serde(default = "default_pool_idle", deserialize_with = "flex_num")]
    pool_max_idle_per_host: usize,
    #[serde(default, deserialize_with = "flex_opt_string")]
    signing_secret: Option<String>,
    #[serde(default, deserialize_with = "flex_opt_string")]
    previous_signing_secret: Option<String>,
}

impl Default for RawForward {
    fn default() -> Self {
        RawForward {
            url_template: default_template(),
            timeout_ms: default_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            pool_max_idle_per_host: default_pool_idle(),
            signing_secret: None,
            previous_signing_secret: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    #[serde(deserialize_with = "flex_num")]
    id: TenantId,
    #[serde(deserialize_with = "flex_string")]
    name: String,
    #[serde(default, deserialize_with = "flex_opt_string")]
    url: Option<String>,
    #[serde(default, deserialize_with = "flex_opt_string")]
    signing_secret: Option<String>,
    #[serde(default, deserialize_with = "flex_opt_string")]
    previous_signing_secret: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8000".into()
}
fn default_metrics_listen() -> String {
    "127.0.0.1:9464".into()
}
fn default_true() -> bool {
    true
}
fn default_log_format() -> String {
    "human".into()
}
fn default_data_dir() -> String {
    "data".into()
}
fn default_prefix() -> String {
    "start_realty_".into()
}
fn default_drain_ms() -> u64 {
    10_000
}
fn default_runtime() -> String {
    RuntimeModel::ThreadPerCore.as_str().into()
}
/// Upper bound on `workers`: far above any core count this runs on, low enough
/// that a typo cannot start thousands of threads.
const MAX_WORKERS: usize = 256;
fn default_max_connections() -> usize {
    4096
}
fn default_read_timeout_ms() -> u64 {
    10_000
}
fn default_template() -> String {
    "http://127.0.0.1:9000/tenants/{tenant_id}/whatsapp".into()
}
fn default_timeout_ms() -> u64 {
    5_000
}
fn default_connect_timeout_ms() -> u64 {
    1_000
}
fn default_pool_idle() -> usize {
    256
}

fn secret(key: &str, value: Option<String>) -> Result<Option<SecretSetting>, ConfigError> {
    match value {
        None => Ok(None),
        Some(v) if v == GENERATE => Ok(Some(SecretSetting::Generate)),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if v.len() < 12 => Err(ConfigError::new(key, "secrets must be at least 12 characters")),
        Some(v) => Ok(Some(SecretSetting::Value(v))),
    }
}

/// `waha.base_url` + `waha.unlinked_reply_text` turn the auto-reply on; one without the other is an error.
fn auto_reply(raw: &RawWaha) -> Result<Option<AutoReplyConfig>, ConfigError> {
    let base_url = raw.base_url.clone().filter(|s| !s.is_empty());
    let text = raw.unlinked_reply_text.clone().filter(|s| !s.trim().is_empty());
    let (base_url, text) = match (base_url, text) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(ConfigError::new("waha.unlinked_reply_text", "needed when waha.base_url is set"))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new("waha.base_url", "needed when waha.unlinked_reply_text is set"))
        }
        (Some(b), Some(t)) => (b, t),
    };
    parse_forward_url(&base_url).map_err(|e| ConfigError::new("waha.base_url", e))?;
    if text.len() > 4096 {
        return Err(ConfigError::new("waha.unlinked_reply_text", "must be at most 4096 bytes"));
    }
    let session = raw.session.clone().unwrap_or_else(|| "default".into());
    if session.is_empty() || !session.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(ConfigError::new("waha.session", "must be letters, digits, `_` or `-`"));
    }
    Ok(Some(AutoReplyConfig {
        base_url: base_url.trim_end_matches('/').to_owned(),
        session,
        text,
        waha_api_key: raw.base_api_key.clone().filter(|s| !s.is_empty()),
    }))
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let listen: SocketAddr = self
            .listen
            .parse()
            .map_err(|_| ConfigError::new("listen", format!("`{}` is not an address:port", self.listen)))?;
        let metrics_listen = match self.metrics_listen.as_str() {
            "" | "off" => None,
            addr => Some(addr.parse().map_err(|_| {
                ConfigError::new("metrics_listen", format!("`{addr}` is not an address:port (or \"off\")"))
            })?),
        };
        let log_format = match self.log_format.as_str() {
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::new("log_format", format!("`{other}` is not \"human\" or \"json\"")));
            }
        };
        if self.data_dir.is_empty() {
            return Err(ConfigError::new("data_dir", "must not be empty"));
        }
        let phone = &self.gateway_phone;
        if phone.is_empty() || phone.len() > 15 || !phone.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConfigError::new("gateway_phone", format!("`{phone}` must be 1 to 15 digits, no `+`")));
        }
        let prefix = &self.deep_link_prefix;
        if prefix.is_empty()
            || !prefix.is_ascii()
            || prefix.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(ConfigError::new("deep_link_prefix", "must be non-empty ASCII without spaces"));
        }
        if prefix.ends_with(|c: char| c.is_ascii_digit()) {
            return Err(ConfigError::new("deep_link_prefix", "must not end with a digit (the tenant id follows it)"));
        }
        let runtime = match self.runtime.as_str() {
            "thread-per-core" => RuntimeModel::ThreadPerCore,
            "multi-thread" => RuntimeModel::MultiThread,
            other => {
                return Err(ConfigError::new(
                    "runtime",
                    format!("`{other}` is not \"thread-per-core\" or \"multi-thread\""),
                ))
            }
        };
        if self.workers > MAX_WORKERS {
            return Err(ConfigError::new("workers", format!("must be at most {MAX_WORKERS} (0 = one per CPU)")));
        }
        let workers = match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        for (key, value) in [
            ("max_connections", self.max_connections as u64),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be greater than 0"));
            }
        }
        let auto_reply = auto_reply(&self.waha)?;
        let waha = WahaConfig {
            api_key: secret("waha.api_key", self.waha.api_key)?,
            hmac_key: secret("waha.hmac_key", self.waha.hmac_key)?,
            allow_unauthenticated: self.waha.allow_unauthenticated,
            auto_reply,
        };
        if waha.api_key.is_none() && waha.hmac_key.is_none() && !waha.allow_unauthenticated {
            return Err(ConfigError::new(
                "waha.api_key",
                "webhooks would be unauthenticated: set waha.api_key or waha.hmac_key \
                 (\"generate\" makes one), or waha.allow_unauthenticated = true",
            ));
        }
        let admin = AdminConfig {
            jwt_secret: secret("admin.jwt_secret", self.admin.jwt_secret)?.unwrap_or(SecretSetting::Generate),
        };
        let f = self.forward;
        if !f.url_template.contains("{tenant_id}") {
            return Err(ConfigError::new("forward.url_template", "must contain `{tenant_id}`"));
        }
        parse_forward_url(&tenant_url(&f.url_template, 1, None))
            .map_err(|e| ConfigError::new("forward.url_template", e))?;
        if f.timeout_ms == 0 {
            return Err(ConfigError::new("forward.timeout_ms", "must be greater than 0"));
        }
        if f.connect_timeout_ms == 0 {
            return Err(ConfigError::new("forward.connect_timeout_ms", "must be greater than 0"));
        }
        let signing_secret = match f.signing_secret.as_deref() {
            None | Some(GENERATE) => SecretSetting::Generate,
            Some(v) => {
                SigningKey::parse(v).map_err(|e| ConfigError::new("forward.signing_secret", e))?;
                SecretSetting::Value(v.to_owned())
            }
        };
        if let Some(v) = &f.previous_signing_secret {
            SigningKey::parse(v).map_err(|e| ConfigError::new("forward.previous_signing_secret", e))?;
        }
        let forward = ForwardConfig {
            url_template: f.url_template,
            signing_secret,
            previous_signing_secret: f.previous_signing_secret,
            timeout: Duration::from_millis(f.timeout_ms),
            connect_timeout: Duration::from_millis(f.connect_timeout_ms),
            pool_max_idle_per_host: f.pool_max_idle_per_host,
        };
        let mut seen = HashSet::new();
        let mut tenants = Vec::with_capacity(self.tenants.len());
        for (i, t) in self.tenants.into_iter().enumerate() {
            if t.id == 0 {
                return Err(ConfigError::new(format!("tenants[{i}].id"), "must be greater than 0"));
            }
            if !seen.insert(t.id) {
                return Err(ConfigError::new(format!("tenants[{i}].id"), format!("tenant {} is listed twice", t.id)));
            }
            if let Some(url) = &t.url {
                parse_forward_url(url).map_err(|e| ConfigError::new(format!("tenants[{i}].url"), e))?;
            }
            let mut signing_secrets = Vec::new();
            for (field, value) in
                [("signing_secret", t.signing_secret), ("previous_signing_secret", t.previous_signing_secret)]
            {
                if let Some(v) = value {
                    SigningKey::parse(&v).map_err(|e| ConfigError::new(format!("tenants[{i}].{field}"), e))?;
                    signing_secrets.push(v);
                }
            }
            tenants.push(TenantConfig { id: t.id, name: t.name, url: t.url, signing_secrets });
        }
        let delivery = self.delivery.validate()?;
        Ok(Config {
            listen,
            metrics_listen,
            metrics_tenant_labels: self.metrics_tenant_labels,
            log_format,
            data_dir: PathBuf::from(self.data_dir),
            gateway_phone: self.gateway_phone,
            deep_link_prefix: self.deep_link_prefix,
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
            runtime,
            workers,
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms),
            waha,
            admin,
            forward,
            delivery,
            tenants,
        })
    }
}

impl RawDelivery {
    fn validate(self) -> Result<DeliveryConfig, ConfigError> {
        if self.retry_schedule_s.is_empty() || self.retry_schedule_s.contains(&0) {
            return Err(ConfigError::new("delivery.retry_schedule_s", "must list at least one delay, each > 0 s"));
        }
        if self.jitter_percent > 100 {
            return Err(ConfigError::new("delivery.jitter_percent", "must be 0 to 100"));
        }
        for (key, value) in [
            ("delivery.max_age_s", self.max_age_s),
            ("delivery.inline_timeout_ms", self.inline_timeout_ms),
            ("delivery.breaker_failures", u64::from(self.breaker_failures)),
            ("delivery.breaker_open_ms", self.breaker_open_ms),
            ("delivery.max_in_flight_per_tenant", self.max_in_flight_per_tenant as u64),
            ("delivery.dedupe_window_s", self.dedupe_window_s),
            ("delivery.dedupe_max_entries", self.dedupe_max_entries as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be greater than 0"));
            }
        }
        Ok(DeliveryConfig {
            retry: RetryPolicy {
                schedule: self.retry_schedule_s.into_iter().map(Duration::from_secs).collect(),
                max_age: Duration::from_secs(self.max_age_s),
                jitter: self.jitter_percent as f64 / 100.0,
            },
            inline_timeout: Duration::from_millis(self.inline_timeout_ms),
            breaker_failures: self.breaker_failures,
            breaker_open: Duration::from_millis(self.breaker_open_ms),
            max_in_flight_per_tenant: self.max_in_flight_per_tenant,
            dedupe_window: Duration::from_secs(self.dedupe_window_s),
            dedupe_max_entries: self.dedupe_max_entries,
        })
    }
}

/// A list of numbers; also accepts `"5, 30, 120"` (environment variables are strings).
fn flex_num_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                toml::Value::Integer(i) if i >= 0 => Ok(i as u64),
                other => Err(de::Error::custom(format!("expected a non-negative number, found `{other}`"))),
            })
            .collect(),
        toml::Value::String(s) => s
            .split(',')
            .map(|part| part.trim().parse().map_err(|_| de::Error::custom(format!("`{part}` is not a number"))))
            .collect(),
        other => Err(de::Error::custom(format!("expected a list of numbers, found {}", other.type_str()))),
    }
}

/// A string key; also accepts a TOML number or boolean (written without quotes).
fn flex_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::String(s) => Ok(s),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(de::Error::custom(format!("expected a string, found {}", other.type_str()))),
    }
}

fn flex_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    flex_string(d).map(Some)
}

/// A numeric key; also accepts a string of digits (environment variables are strings).
fn flex_num<'de, D: Deserializer<'de>, T>(d: D) -> Result<T, D::Error>
where
    T: FromStr + TryFrom<i64>,
{
    match toml::Value::deserialize(d)? {
        toml::Value::Integer(i) => T::try_from(i).map_err(|_| de::Error::custom(format!("{i} is out of range"))),
        toml::Value::String(s) => {
            s.trim().parse().map_err(|_| de::Error::custom(format!("`{s}` is not a valid number")))
        }
        other => Err(de::Error::custom(format!("expected a number, found {}", other.type_str()))),
    }
}

/// A boolean key; also accepts the strings `true` and `false`.
fn flex_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::Boolean(b) => Ok(b),
        toml::Value::String(s) if s == "true" => Ok(true),
        toml::Value::String(s) if s == "false" => Ok(false),
        other => Err(de::Error::custom(format!("expected true or false, found `{other}`"))),
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
