//! The tenant registry: which tenants exist and where their messages go.
//!
//! Lives in sled (through `store`); this module keeps an in-memory copy for the
//! request path. Tenants from the config file are upserted at start; the admin
//! API adds, updates and removes tenants at runtime (sled first, then here).

use std::sync::Arc;

use dashmap::DashMap;
use http::Uri;

use crate::config::{parse_forward_url, tenant_url, Config};
use crate::delivery::sign::SigningKey;
use crate::route::TenantId;
use crate::store::{Store, StoreError, TenantRecord};

/// A tenant ready for forwarding.
#[derive(Debug)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    /// Where its messages are POSTed.
    pub uri: Uri,
    /// Keys that sign its forwards, newest first (its own, else the global ones).
    pub signing_keys: Vec<SigningKey>,
}

pub struct Registry {
    tenants: DashMap<TenantId, Arc<Tenant>>,
    url_template: String,
    global_keys: Vec<SigningKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("tenant {id}: {message}")]
    BadUrl { id: TenantId, message: String },
    #[error("{0}")]
    BadSecret(String),
}

impl Registry {
    /// Upserts the configured tenants into the store, then loads every stored
    /// tenant. `global_secret` signs forwards of tenants without their own.
    pub fn load(store: &Store, config: &Config, global_secret: &str) -> Result<Registry, RegistryError> {
        for t in &config.tenants {
            // Secrets set through the admin API survive restarts unless the
            // config names its own.
            let signing_secrets = if t.signing_secrets.is_empty() {
                store.get_tenant(t.id)?.map(|r| r.signing_secrets).unwrap_or_default()
            } else {
                t.signing_secrets.clone()
            };
            store.put_tenant(&TenantRecord { id: t.id, name: t.name.clone(), url: t.url.clone(), signing_secrets })?;
        }
        let mut global_keys = vec![SigningKey::parse(global_secret)
            .map_err(|e| RegistryError::BadSecret(format!("forward.signing_secret: {e}")))?];
        if let Some(previous) = &config.forward.previous_signing_secret {
            global_keys.push(
                SigningKey::parse(previous)
                    .map_err(|e| RegistryError::BadSecret(format!("forward.previous_signing_secret: {e}")))?,
            );
        }
        let registry =
            Registry { tenants: DashMap::new(), url_template: config.forward.url_template.clone(), global_keys };
        for record in store.tenants()? {
            registry.upsert(record)?;
        }
        Ok(registry)
    }

    /// Adds or replaces a tenant (already written to the store by the caller).
    pub fn upsert(&self, record: TenantRecord) -> Result<(), RegistryError> {
        let url = tenant_url(&self.url_template, record.id, record.url.as_deref());
        let uri = parse_forward_url(&url).map_err(|message| RegistryError::BadUrl { id: record.id, message })?;
        let signing_keys = if record.signing_secrets.is_empty() {
            self.global_keys.clone()
        } else {
            record
                .signing_secrets
                .iter()
                .map(|s| {
                    SigningKey::parse(s).map_err(|e| RegistryError::BadSecret(format!("tenant {}: {e}", record.id)))
                })
                .collect::<Result<_, _>>()?
        };
        self.tenants.insert(record.id, Arc::new(Tenant { id: record.id, name: record.name, uri, signing_keys }));
        Ok(())
    }

    pub fn get(&self, id: TenantId) -> Option<Arc<Tenant>> {
        self.tenants.get(&id).map(|t| Arc::clone(&t))
    }

    /// Forgets a tenant: its senders stay locked but are no longer forwarded.
    pub fn remove(&self, id: TenantId) -> bool {
        self.tenants.remove(&id).is_some()
    }

    pub fn contains(&self, id: TenantId) -> bool {
        self.tenants.contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}
