//! Hardening (issue 7): the router against random event sequences, races,
//! crashes, hostile clients and a failing disk. Each guarantee in README
//! ("Reliability") names the test here that checks it. Slow ones run only with
//! `RUN_SLOW_TESTS=1`, which `.ci/run` sets in a step of its own.

mod crash;
mod hostile;
mod model;
mod races;
mod storage;

use std::collections::BTreeMap;

use whatsapp_router::route::TenantId;
use whatsapp_router::store::Store;

/// True unless slow tests were asked for; says so on stderr.
pub fn skip_slow(name: &str) -> bool {
    if std::env::var_os("RUN_SLOW_TESTS").is_some() {
        return false;
    }
    eprintln!("{name}: skipped, set RUN_SLOW_TESTS=1 (.ci/run does)");
    true
}

/// Locks per tenant, counted by a full scan of the lock tree: what the
/// transactional counters (`Store::stats`) must always equal.
pub fn recount(store: &Store) -> BTreeMap<TenantId, u64> {
    let mut counts = BTreeMap::new();
    for item in store.locks() {
        let (_, tenant) = item.expect("lock tree readable");
        *counts.entry(tenant).or_default() += 1;
    }
    counts
}

/// Asserts the counters equal a recount of the locks.
#[track_caller]
pub fn assert_counts_match(store: &Store) {
    assert_eq!(store.stats().expect("stats").per_tenant, recount(store), "tenant_counts drifted from the locks");
}
