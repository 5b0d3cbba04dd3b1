//! Outbound delivery to tenant backends through one pooled hyper-util client.
//!
//! The only module that opens outbound connections: tenant forwards on the
//! request path, and [`request`], one-off calls for the command-line tools
//! (`waha setup` talking to WAHA, `backup` talking to the running router). The body is forwarded as the
//! exact bytes WAHA sent (a `Bytes` clone, no copy), so tenants can verify
//! WAHA's HMAC themselves. Keep-alive, TCP_NODELAY, a connect timeout and a total
//! timeout per request (connect + send + response + drain).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::ForwardConfig;
use crate::delivery::schedule::parse_retry_after;
use crate::delivery::sign;
use crate::route::TenantId;
use crate::sender::SenderKey;

/// Tenant answers are read (so the connection can be reused) up to this size.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

pub const HEADER_TENANT_ID: &str = "x-gateway-tenant-id";
pub const HEADER_SENDER: &str = "x-gateway-sender";
pub const HEADER_NEW_SESSION: &str = "x-gateway-new-session";
pub const HEADER_REQUEST_ID: &str = "x-webhook-request-id";

/// Tenant answers kept for dead letters are cut to this many bytes.
pub const KEPT_RESPONSE_BYTES: usize = 1024;

// The same names as `HeaderName`s: built from a `&str` at each request, a
// custom header name is parsed and copied into a new allocation every time.
const TENANT_ID_NAME: HeaderName = HeaderName::from_static(HEADER_TENANT_ID);
const SENDER_NAME: HeaderName = HeaderName::from_static(HEADER_SENDER);
const NEW_SESSION_NAME: HeaderName = HeaderName::from_static(HEADER_NEW_SESSION);
const REQUEST_ID_NAME: HeaderName = HeaderName::from_static(HEADER_REQUEST_ID);

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("tenant answered {status}")]
    Status {
        status: StatusCode,
        /// `Retry-After`, parsed.
        retry_after: Option<Duration>,
        /// The first [`KEPT_RESPONSE_BYTES`] of the answer, for dead letters.
        body: String,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Request(String),
}

impl ForwardError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ForwardError::Status { status, .. } if status.is_client_error() => "status_4xx",
            ForwardError::Status { .. } => "status_5xx",
            ForwardError::Timeout(_) => "timeout",
            ForwardError::Request(_) => "connect_error",
        }
    }

    /// A 4xx other than 408 and 429 will fail the same way every time: the
    /// message goes to the dead letters instead of being retried.
    pub fn is_permanent(&self) -> bool {
        match self {
            ForwardError::Status { status, .. } => {
                status.is_client_error()
                    && *status != StatusCode::REQUEST_TIMEOUT
                    && *status != StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ForwardError::Status { retry_after, .. } => *retry_after,
            _ => None,
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
    pub request_id: Option<&'a str>,
    /// Standard Webhooks headers: id, timestamp (s), signature list.
    pub webhook_id: &'a str,
    pub timestamp: u64,
    pub signature: &'a str,
    /// Total time allowed for this attempt.
    pub timeout: Duration,
}

#[derive(Clone)]
pub struct Forwarder {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Forwarder {
    pub fn new(config: &ForwardConfig) -> Forwarder {
        Forwarder::with_limits(config.connect_timeout, config.pool_max_idle_per_host)
    }

    fn with_limits(connect_timeout: Duration, pool_max_idle_per_host: usize) -> Forwarder {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
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
            .pool_max_idle_per_host(pool_max_idle_per_host)
            .build(https);
        Forwarder { client }
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
        req = req
            .header(sign::HEADER_ID, out.webhook_id)
            .header(sign::HEADER_TIMESTAMP, out.timestamp)
            .header(sign::HEADER_SIGNATURE, out.signature);
        let req = req.body(Full::new(out.body)).map_err(|e| ForwardError::Request(e.to_string()))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| ForwardError::Request(error_chain(&e)))?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            // Drain the answer so the connection goes back to the pool; an
            // oversized answer just costs the connection.
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES).collect().await.map(|b| b.to_bytes());
            Ok((status, retry_after, body.unwrap_or_default()))
        };
        let (status, retry_after, body) =
            tokio::time::timeout(out.timeout, exchange).await.map_err(|_| ForwardError::Timeout(out.timeout))??;
        if status.is_success() {
            return Ok(status);
        }
        let kept = &body[..body.len().min(KEPT_RESPONSE_BYTES)];
        Err(ForwardError::Status { status, retry_after, body: String::from_utf8_lossy(kept).into_owned() })
    }
}

/// One request from a command-line tool (not the request path): a fresh client,
/// `timeout` for the whole exchange, the answer read up to `max_response` bytes.
/// Any status is returned; the caller decides what it means.
pub async fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
    timeout: Duration,
    max_response: usize,
) -> Result<(StatusCode, Bytes), ForwardError> {
    let uri = crate::config::parse_forward_url(url).map_err(ForwardError::Request)?;
    let forwarder = Forwarder::with_limits(timeout, 0);
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(body.unwrap_or_default())).map_err(|e| ForwardError::Request(e.to_string()))?;
    let exchange = async {
        let resp = forwarder.client.request(req).await.map_err(|e| ForwardError::Request(error_chain(&e)))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), max_response)
            .collect()
            .await
            .map_err(|e| ForwardError::Request(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| ForwardError::Timeout(timeout))?
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
