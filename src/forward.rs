//! Outbound delivery to tenant backends through one pooled hyper-util client.
//!
//! The only module that opens outbound connections. The body is forwarded as the
//! exact bytes WAHA sent (a `Bytes` clone, no copy), so tenants can verify
//! WAHA's HMAC themselves. Keep-alive, TCP_NODELAY, a connect timeout and a total
//! timeout per request (connect + send + response + drain).

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::ForwardConfig;
use crate::route::TenantId;
use crate::sender::SenderKey;

/// Tenant answers are read (so the connection can be reused) up to this size.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

pub const HEADER_TENANT_ID: &str = "x-gateway-tenant-id";
pub const HEADER_SENDER: &str = "x-gateway-sender";
pub const HEADER_NEW_SESSION: &str = "x-gateway-new-session";
pub const HEADER_REQUEST_ID: &str = "x-webhook-request-id";

// The same names as `HeaderName`s: built from a `&str` at each request, a
// custom header name is parsed and copied into a new allocation every time.
const TENANT_ID_NAME: HeaderName = HeaderName::from_static(HEADER_TENANT_ID);
const SENDER_NAME: HeaderName = HeaderName::from_static(HEADER_SENDER);
const NEW_SESSION_NAME: HeaderName = HeaderName::from_static(HEADER_NEW_SESSION);
const REQUEST_ID_NAME: HeaderName = HeaderName::from_static(HEADER_REQUEST_ID);

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("tenant answered {0}")]
    Status(StatusCode),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Request(String),
}

impl ForwardError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ForwardError::Status(s) if s.is_client_error() => "status_4xx",
            ForwardError::Status(_) => "status_5xx",
            ForwardError::Timeout(_) => "timeout",
            ForwardError::Request(_) => "connect_error",
        }
    }
}

/// One message on its way to a tenant.
pub struct Outbound<'a> {
    pub uri: &'a Uri,
    pub body: Bytes,
    pub tenant: TenantId,
    pub sender: SenderKey,
    /// True on the message that created the sender's lock.
    pub new_session: bool,
    /// WAHA's `X-Webhook-Request-Id`, passed through.
    pub request_id: Option<&'a HeaderValue>,
}

#[derive(Clone)]
pub struct Forwarder {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl Forwarder {
    pub fn new(config: &ForwardConfig) -> Forwarder {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .build(https);
        Forwarder { client, timeout: config.timeout }
    }

    /// POSTs the message; a 2xx is success, anything else an error.
    pub async fn send(&self, out: Outbound<'_>) -> Result<StatusCode, ForwardError> {
        let mut req = Request::post(out.uri.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(TENANT_ID_NAME, out.tenant)
            .header(SENDER_NAME, out.sender.to_string());
        if out.new_session {
            req = req.header(NEW_SESSION_NAME, HeaderValue::from_static("true"));
        }
        if let Some(id) = out.request_id {
            req = req.header(REQUEST_ID_NAME, id);
        }
        let req = req.body(Full::new(out.body)).map_err(|e| ForwardError::Request(e.to_string()))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| ForwardError::Request(error_chain(&e)))?;
            let status = resp.status();
            // Drain the answer so the connection goes back to the pool; an
            // oversized answer just costs the connection.
            let _ = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES).collect().await;
            Ok(status)
        };
        let status =
            tokio::time::timeout(self.timeout, exchange).await.map_err(|_| ForwardError::Timeout(self.timeout))??;
        if status.is_success() {
            Ok(status)
        } else {
            Err(ForwardError::Status(status))
        }
    }
}

/// "a: b: c" from an error and its sources; hyper-util's top-level message alone
/// ("client error (Connect)") does not say what went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
