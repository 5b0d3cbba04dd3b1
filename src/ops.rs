//! The operations commands behind the CLI: tenants, single mappings, tokens,
//! backup and restore, `waha setup`.
//!
//! Tenant and mapping commands open the data dir directly, like import/export
//! (sled allows one process per database: stop the router first, or use the
//! admin API). `backup` prefers the running router (`GET /api/gateway/backup`
//! with a token it mints itself) so it can run while the router serves.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;

use crate::admin::token::{self, Claims, Role};
use crate::cli::{open_store, BoxError};
use crate::config::{parse_forward_url, tenant_url, Config};
use crate::registry::Registry;
use crate::sender::{parse_user_input, SenderKey};
use crate::store::{Store, TenantRecord, BACKUP_MAGIC};
use crate::{forward, secrets, waha_setup};

/// Admin changes made from the command line are audited under this actor.
const CLI_ACTOR: &str = "cli";
/// A backup through the router is as large as the database; no bound here.
const MAX_BACKUP: usize = usize::MAX;

fn store(config: &Config) -> Result<(Store, Registry), BoxError> {
    open_store(config)
        .map_err(|e| format!("{e} (is the router running? stop it, or use the admin API: README \"Admin API\")").into())
}

fn sender(phone: &str) -> Result<SenderKey, BoxError> {
    parse_user_input(phone)
        .ok_or_else(|| format!("`{phone}` is not digits, +digits, digits@c.us, lid:digits or digits@lid").into())
}

pub fn mapping_get(config: &Config, phone: &str) -> Result<(), BoxError> {
    let key = sender(phone)?;
    let (store, _) = store(config)?;
    match store.get_lock(key)? {
        Some(t) => println!("{}", json!({"status": "found", "phone_number": key.to_string(), "tenant_id": t})),
        None => return Err(format!("{key} is not locked to any tenant").into()),
    }
    Ok(())
}

pub fn mapping_delete(config: &Config, phone: &str) -> Result<(), BoxError> {
    let key = sender(phone)?;
    let (store, _) = store(config)?;
    let previous = store.delete_lock(key, CLI_ACTOR)?;
    store.flush()?;
    match previous {
        Some(t) => println!("{}", json!({"status": "deleted", "previous_tenant_id": t})),
        None => return Err(format!("{key} is not locked to any tenant").into()),
    }
    Ok(())
}

pub fn mapping_set(config: &Config, phone: &str, tenant: u32) -> Result<(), BoxError> {
    let key = sender(phone)?;
    let (store, registry) = store(config)?;
    if !registry.contains(tenant) {
        return Err(format!("tenant {tenant} not found").into());
    }
    let previous = store.set_lock(key, tenant, CLI_ACTOR)?;
    store.flush()?;
    println!(
        "{}",
        json!({"status": "reassigned", "phone_number": key.to_string(), "previous_tenant_id": previous, "tenant_id": tenant})
    );
    Ok(())
}

pub fn tenant_add(config: &Config, id: u32, name: String, url: Option<String>) -> Result<(), BoxError> {
    if id == 0 || name.trim().is_empty() {
        return Err("--id must be greater than 0 and --name not empty".into());
    }
    parse_forward_url(&tenant_url(&config.forward.url_template, id, url.as_deref()))?;
    let (store, _) = store(config)?;
    let existing = store.get_tenant(id)?;
    let signing_secrets = existing.as_ref().map(|r| r.signing_secrets.clone()).unwrap_or_default();
    store.put_tenant(&TenantRecord { id, name, url, signing_secrets })?;
    store.flush()?;
    println!("tenant {id} {}", if existing.is_some() { "updated" } else { "created" });
    Ok(())
}

pub fn tenant_list(config: &Config) -> Result<(), BoxError> {
    let (store, _) = store(config)?;
    let mut out = std::io::stdout().lock();
    for t in store.tenants()? {
        let line = json!({"tenant_id": t.id, "name": t.name, "url": t.url, "users": store.count(t.id)?});
        writeln!(out, "{line}")?;
    }
    Ok(())
}

pub fn tenant_remove(config: &Config, id: u32) -> Result<(), BoxError> {
    let (store, _) = store(config)?;
    if !store.remove_tenant(id)? {
        return Err(format!("tenant {id} not found").into());
    }
    store.flush()?;
    let locked = store.count(id)?;
    println!("tenant {id} removed; {locked} senders stay locked to it and are not forwarded");
    if config.tenants.iter().any(|t| t.id == id) {
        eprintln!("note: tenant {id} is in the config file and comes back on the next start unless removed there");
    }
    Ok(())
}

pub fn token(config: &Config, role: Role, tenant_id: Option<u32>, ttl: &str, sub: &str) -> Result<(), BoxError> {
    let ttl = token::parse_ttl(ttl)?;
    let secrets = secrets::resolve(config)?;
    let claims = Claims::new(sub, role, tenant_id, ttl);
    println!("{}", token::issue(&secrets.admin_jwt_secret, &claims)?);
    Ok(())
}

/// Where this machine reaches the router's `listen` address.
fn local_addr(listen: SocketAddr) -> SocketAddr {
    let ip: std::net::IpAddr = match listen {
        SocketAddr::V4(a) if a.ip().is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        SocketAddr::V6(a) if a.ip().is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        other => other.ip(),
    };
    SocketAddr::new(ip, listen.port())
}

pub fn backup(config: &Config, file: &Path) -> Result<(), BoxError> {
    let addr = local_addr(config.listen);
    let tmp = file.with_extension("partial");
    let online = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok();
    if online {
        let secrets = secrets::resolve(config)?;
        let claims = Claims::new("backup-cli", Role::Admin, None, Duration::from_secs(300));
        let bearer = format!("Bearer {}", token::issue(&secrets.admin_jwt_secret, &claims)?);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let url = format!("http://{addr}/api/gateway/backup");
        let (status, body) = runtime.block_on(forward::request(
            Method::GET,
            &url,
            &[("authorization", &bearer)],
            None,
            Duration::from_secs(3600),
            MAX_BACKUP,
        ))?;
        if status != StatusCode::OK || !body.starts_with(BACKUP_MAGIC) {
            return Err(format!("the router at {addr} answered {status} to GET /api/gateway/backup").into());
        }
        std::fs::write(&tmp, &body)?;
        eprintln!("backup of {} bytes taken through the running router at {addr}", body.len());
    } else {
        // Store only: loading the registry would upsert the config's tenants,
        // and a backup must not change what it copies.
        let store = Store::open(&config.data_dir.join("db"))
            .map_err(|e| format!("{e} (is the router running on another address?)"))?;
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        let records = store.backup(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        eprintln!("backup of {records} records taken from {}", config.data_dir.display());
    }
    std::fs::rename(&tmp, file)?;
    Ok(())
}

pub fn restore(config: &Config, file: &Path) -> Result<(), BoxError> {
    let input = BufReader::with_capacity(1 << 20, File::open(file).map_err(|e| format!("{}: {e}", file.display()))?);
    std::fs::create_dir_all(&config.data_dir)?;
    let store = Store::open(&config.data_dir.join("db"))
        .map_err(|e| format!("{e} (is the router running? restore needs it stopped)"))?;
    let records = store.restore(input)?;
    println!("restored {records} records into {}", config.data_dir.display());
    Ok(())
}

pub fn waha_setup(
    config: &Config,
    waha_url: String,
    waha_api_key: String,
    session: String,
    public_url: Option<String>,
) -> Result<(), BoxError> {
    let secrets = secrets::resolve(config)?;
    let options = waha_setup::SetupOptions {
        waha_url,
        waha_api_key,
        session,
        public_url: public_url.unwrap_or_else(|| format!("http://{}", local_addr(config.listen))),
        webhook_api_key: secrets.waha_api_key.map(|s| s.expose().to_owned()),
        hmac_key: secrets.waha_hmac_key.map(|s| s.expose().to_owned()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let outcome = runtime.block_on(waha_setup::run(&options))?;
    let what = match outcome {
        waha_setup::SetupOutcome::Created => "created and started",
        waha_setup::SetupOutcome::Updated => "webhook updated (WAHA restarts the session)",
        waha_setup::SetupOutcome::Unchanged => "already set up; nothing changed",
    };
    println!("session {}: {what}", options.session);
    Ok(())
}
