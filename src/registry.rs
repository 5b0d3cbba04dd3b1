//! The tenant registry: which tenants exist and where their messages go.
//!
//! Lives in sled (through `store`); this module keeps an in-memory copy for the
//! request path. Tenants from the config file are upserted at start; the admin
//! API adds, updates and removes tenants at runtime (sled first, then here).

use std::sync::Arc;

use dashmap::DashMap;
use http::Uri;

use crate::config::{parse_forward_url, tenant_url, Config};
use crate::route::TenantId;
use crate::secrets::Secret;
use crate::store::{Store, StoreError, TenantRecord};

/// A tenant ready for forwarding.
#[derive(Debug)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    /// Where its messages are POSTed.
    pub uri: Uri,
    /// When set, forwards carry `X-Gateway-Signature` (see `forward`).
    pub signing_secret: Option<Secret>,
}

pub struct Registry {
    tenants: DashMap<TenantId, Arc<Tenant>>,
    url_template: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("tenant {id}: {message}")]
    BadUrl { id: TenantId, message: String },
}

impl Registry {
    /// Upserts the configured tenants into the store, then loads every stored tenant.
    pub fn load(store: &Store, config: &Config) -> Result<Registry, RegistryError> {
        for t in &config.tenants {
            // A signing secret set through the admin API survives restarts.
            let signing_secret = store.get_tenant(t.id)?.and_then(|r| r.signing_secret);
            store.put_tenant(&TenantRecord { id: t.id, name: t.name.clone(), url: t.url.clone(), signing_secret })?;
        }
        let registry = Registry { tenants: DashMap::new(), url_template: config.forward.url_template.clone() };
        for record in store.tenants()? {
            registry.upsert(record)?;
        }
        Ok(registry)
    }

    /// Adds or replaces a tenant (already written to the store by the caller).
    pub fn upsert(&self, record: TenantRecord) -> Result<(), RegistryError> {
        let url = tenant_url(&self.url_template, record.id, record.url.as_deref());
        let uri = parse_forward_url(&url).map_err(|message| RegistryError::BadUrl { id: record.id, message })?;
        self.tenants.insert(
            record.id,
            Arc::new(Tenant {
                id: record.id,
                name: record.name,
                uri,
                signing_secret: record.signing_secret.map(Secret::new),
            }),
        );
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
