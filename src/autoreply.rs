//! The optional auto-reply to senders who wrote without a deep link: WAHA's
//! `POST /api/sendText` with `waha.unlinked_reply_text`, at most once per sender
//! per 24 hours.
//!
//! Off the request path: the webhook is answered at once and the send runs in a
//! tracked task (closed and awaited at shutdown). A failed send is logged and
//! counted, never retried: a retry loop against a WhatsApp number is how numbers
//! get banned. The once-a-day memory is in RAM only; a restart may send one more.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use http::Method;
use metrics::{Counter, Key, Label, Metadata, Recorder};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::config::AutoReplyConfig;
use crate::forward;
use crate::metrics::Metrics;
use crate::sender::SenderKey;

pub const AUTO_REPLIES_TOTAL: &str = "whatsapp_router_auto_replies_total";
const EVERY: Duration = Duration::from_secs(24 * 3600);
const TIMEOUT: Duration = Duration::from_secs(10);
/// Sends in flight at once; beyond that a reply is dropped (and counted), not queued.
const MAX_IN_FLIGHT: usize = 32;
/// The reply memory is pruned of expired entries when it grows past this.
const PRUNE_AT: usize = 100_000;

pub struct AutoReply {
    config: Arc<AutoReplyConfig>,
    last: DashMap<u64, Instant>,
    tasks: TaskTracker,
    permits: Arc<Semaphore>,
    sent: Counter,
    failed: Counter,
    dropped: Counter,
}

impl AutoReply {
    pub fn new(config: AutoReplyConfig, metrics: &Metrics) -> AutoReply {
        let recorder = metrics.recorder();
        let meta = Metadata::new(module_path!(), metrics::Level::INFO, None);
        recorder.describe_counter(
            AUTO_REPLIES_TOTAL.into(),
            None,
            "Auto-replies to senders without a deep link, by outcome (sent, failed, dropped).".into(),
        );
        let counter = |outcome: &'static str| {
            recorder.register_counter(&Key::from_parts(AUTO_REPLIES_TOTAL, vec![Label::new("outcome", outcome)]), &meta)
        };
        AutoReply {
            config: Arc::new(config),
            last: DashMap::new(),
            tasks: TaskTracker::new(),
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            sent: counter("sent"),
            failed: counter("failed"),
            dropped: counter("dropped"),
        }
    }

    /// A sender with no lock wrote without a deep link: reply unless replied to
    /// in the last 24 hours. Returns at once.
    pub fn notice(&self, sender: SenderKey) {
        let now = Instant::now();
        let due = match self.last.entry(sender.cache_key()) {
            dashmap::Entry::Occupied(e) if now.duration_since(*e.get()) < EVERY => false,
            dashmap::Entry::Occupied(mut e) => {
                e.insert(now);
                true
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(now);
                true
            }
        };
        if !due {
            return;
        }
        if self.last.len() > PRUNE_AT {
            self.last.retain(|_, at| now.duration_since(*at) < EVERY);
        }
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            self.dropped.increment(1);
            return;
        };
        let (config, sent, failed) = (Arc::clone(&self.config), self.sent.clone(), self.failed.clone());
        self.tasks.spawn(async move {
            let _permit = permit;
            match send(&config, sender).await {
                Ok(()) => sent.increment(1),
                Err(e) => {
                    failed.increment(1);
                    tracing::warn!(sender = %sender.masked(), error = %e, "auto-reply failed (not retried)");
                }
            }
        });
    }

    /// Stops taking new sends and waits up to `deadline` for those in flight.
    pub async fn close(&self, deadline: Duration) {
        self.tasks.close();
        if tokio::time::timeout(deadline, self.tasks.wait()).await.is_err() {
            tracing::warn!(left = self.tasks.len(), "auto-replies still in flight at shutdown");
        }
    }
}

/// WAHA's chat id for a sender.
pub fn chat_id(sender: SenderKey) -> String {
    match sender {
        SenderKey::Phone(d) => format!("{d}@c.us"),
        SenderKey::Lid(d) => format!("{d}@lid"),
    }
}

async fn send(config: &AutoReplyConfig, sender: SenderKey) -> Result<(), String> {
    let body = json!({"session": config.session, "chatId": chat_id(sender), "text": config.text});
    let url = format!("{}/api/sendText", config.base_url);
    let headers: Vec<(&str, &str)> = config.waha_api_key.iter().map(|k| ("x-api-key", k.as_str())).collect();
    let (status, answer) =
        forward::request(Method::POST, &url, &headers, Some(Bytes::from(body.to_string())), TIMEOUT, 64 * 1024)
            .await
            .map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("WAHA answered {status}: {}", String::from_utf8_lossy(&answer[..answer.len().min(200)])))
    }
}
