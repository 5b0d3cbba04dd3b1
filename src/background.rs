//! The router's background work, the same for both runtime models: the
//! delivery queue's scheduler (with its attempts) and the metrics listener.
//!
//! Started on the caller's runtime before serving, stopped after the HTTP side
//! has drained, in this order: stop scheduling, save the dedupe keys, give
//! attempts in flight the drain deadline (what is not delivered stays in the
//! outbox for the next start), stop the metrics listener, let auto-replies
//! finish. Every task is tracked; nothing is detached.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::forward::Forwarder;
use crate::{delivery, server, App};

pub struct Background {
    app: Arc<App>,
    stop_queue: CancellationToken,
    queue: JoinHandle<()>,
    attempts: TaskTracker,
    stop_metrics: CancellationToken,
    metrics: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts the queue (resuming what a previous run left parked) and, given a
    /// listener, the metrics endpoint. Must be called inside a tokio runtime.
    pub fn start(app: &Arc<App>, metrics: Option<TcpListener>) -> Background {
        let stop_metrics = CancellationToken::new();
        let metrics = metrics
            .map(|l| tokio::spawn(server::serve_metrics(Arc::clone(app), l, stop_metrics.clone().cancelled_owned())));
        let stop_queue = CancellationToken::new();
        let attempts = TaskTracker::new();
        let queue = tokio::spawn(delivery::run(
            Arc::clone(&app.delivery),
            Arc::clone(&app.registry) as Arc<dyn delivery::Targets>,
            Forwarder::new(&app.config.forward),
            stop_queue.clone(),
            attempts.clone(),
        ));
        Background { app: Arc::clone(app), stop_queue, queue, attempts, stop_metrics, metrics }
    }

    /// Stops everything, in order (see the module comment).
    pub async fn stop(self) {
        let app = &self.app;
        self.stop_queue.cancel();
        let _ = self.queue.await;
        if let Err(e) = app.delivery.save_dedupe(false) {
            tracing::warn!(error = %e, "could not save dedupe keys at shutdown");
        }
        self.attempts.close();
        if tokio::time::timeout(app.config.drain_timeout, self.attempts.wait()).await.is_err() {
            tracing::warn!("queue attempts still running at the drain deadline; they resume on the next start");
        }
        self.stop_metrics.cancel();
        if let Some(task) = self.metrics {
            let _ = task.await;
        }
        if let Some(auto_reply) = &app.auto_reply {
            auto_reply.close(Duration::from_secs(5)).await;
        }
    }
}
