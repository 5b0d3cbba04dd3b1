//! The store watchdog: notices when sled has stopped taking writes for good.
//!
//! sled 0.34 keeps the first I/O error it meets (a full or failing disk) and
//! fails every later write with it until the database is reopened, even once
//! the disk has room again; some calls block instead, and the request path
//! makes short sled calls on async worker threads, so the runtime itself can
//! wedge. Without a restart the router would answer 503, or nothing, forever.
//! So a plain OS thread, outside the runtime, probes the disk (a tiny write and
//! flush, on a thread of its own with a deadline) every [`PROBE_EVERY`]; after
//! [`FAILURES_TO_STOP`] failures in a row it calls `give_up`, which in the
//! binary exits with status 1 so that the supervisor (systemd
//! `Restart=on-failure`) starts the router again with a reopened database.
//! Nothing acknowledged is lost: acknowledgements come only after a flush.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use crate::store::Store;

/// How often the disk is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// A probe that has not finished by then counts as failed.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(5);
/// Consecutive failed probes before giving up on the store.
pub const FAILURES_TO_STOP: u32 = 3;

/// Starts the watchdog thread. `give_up` gets the last failure; it runs at
/// most once, and the thread ends after it.
pub fn spawn(store: Arc<Store>, give_up: impl FnOnce(String) + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new().name("store-watchdog".into()).spawn(move || {
        let mut failures = 0;
        loop {
            std::thread::sleep(PROBE_EVERY);
            let (tx, rx) = mpsc::channel();
            let probe = Arc::clone(&store);
            // A probe stuck inside sled is left behind: the process is about to restart.
            let spawned = std::thread::Builder::new()
                .name("store-probe".into())
                .spawn(move || {
                    let _ = tx.send(probe.probe().map_err(|e| e.to_string()));
                })
                .map_err(|e| e.to_string());
            let failure = match spawned.map(|_| rx.recv_timeout(PROBE_DEADLINE)) {
                Ok(Ok(Ok(()))) => None,
                Ok(Ok(Err(e))) | Err(e) => Some(e),
                Ok(Err(_)) => Some(format!("a write and flush did not finish within {PROBE_DEADLINE:?}")),
            };
            let Some(error) = failure else {
                failures = 0;
                continue;
            };
            failures += 1;
            tracing::error!(%error, failures, "the store does not take writes");
            if failures >= FAILURES_TO_STOP {
                give_up(error);
                return;
            }
        }
    })?;
    Ok(())
}
