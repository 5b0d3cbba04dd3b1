//! HTTP-facing errors, and the one place they become status codes.
//!
//! Internal modules keep their own small error enums (`StoreError`,
//! `ForwardError`, `ParseError`); handlers convert them into [`ApiError`], and
//! [`ApiError::into_response`] decides the status. Bodies are JSON with a
//! message that says what to fix; storage details go to the log, not the caller.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::delivery::DeliveryError;
use crate::route::{Skip, TenantId};
use crate::store::StoreError;
use crate::webhook::ParseError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong credentials")]
    Unauthorized,
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    BadRequest(String),
    /// A valid token without the right to this resource.
    #[error("this token may not access that resource")]
    Forbidden,
    #[error("no such endpoint")]
    NotFound,
    /// A resource that does not exist, with what is missing ("tenant 9 not found").
    #[error("{0}")]
    Missing(String),
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// Storage failed: WAHA should retry later.
    #[error("storage unavailable, retry later")]
    Store(#[from] StoreError),
    /// The same message is being delivered by another request; WAHA retries.
    #[error("the same message is being delivered right now; retry shortly")]
    InProgress,
    /// The client did not send its whole body within `body_read_timeout_ms`.
    #[error("request body not received in time")]
    Timeout,
}

impl From<DeliveryError> for ApiError {
    fn from(e: DeliveryError) -> ApiError {
        match e {
            DeliveryError::InProgress => ApiError::InProgress,
            DeliveryError::Store(e) => ApiError::Store(e),
        }
    }
}

impl From<ParseError> for ApiError {
    fn from(e: ParseError) -> ApiError {
        ApiError::BadRequest(e.to_string())
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound | ApiError::Missing(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InProgress => StatusCode::CONFLICT,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.status();
        if let ApiError::Store(e) = &self {
            tracing::error!(error = %e, "storage error");
        }
        let body = json!({"status": "error", "error": self.to_string()});
        let mut resp = json_response(status, &body);
        if let ApiError::MethodNotAllowed(allow) = self {
            resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still be on its way: do not wait for it.
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// A JSON response from an already encoded body. The hot path's answers are
/// fixed strings, or one number in a fixed string, so they skip building a
/// `serde_json::Value` (a map and four strings per answer).
pub fn json_bytes(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `200 {"status":"routed","tenant_id":N}`, byte for byte what `json!` renders.
pub fn routed(tenant: TenantId) -> Response<Full<Bytes>> {
    json_bytes(StatusCode::OK, Bytes::from(format!(r#"{{"status":"routed","tenant_id":{tenant}}}"#)))
}

/// `200 {"reason":..,"status":..}` for a webhook that is not forwarded: senders
/// without a lock are `unrouted`, everything else `ignored`.
pub fn skipped(skip: Skip) -> Response<Full<Bytes>> {
    json_bytes(StatusCode::OK, Bytes::from_static(skip_body(skip).as_bytes()))
}

fn skip_body(skip: Skip) -> &'static str {
    match skip {
        Skip::FromMe => r#"{"reason":"from_me","status":"ignored"}"#,
        Skip::Group => r#"{"reason":"group","status":"ignored"}"#,
        Skip::Broadcast => r#"{"reason":"broadcast","status":"ignored"}"#,
        Skip::Channel => r#"{"reason":"channel","status":"ignored"}"#,
        Skip::NoSender => r#"{"reason":"no_sender","status":"ignored"}"#,
        Skip::EventIgnored => r#"{"reason":"event_ignored","status":"ignored"}"#,
        Skip::NoDeepLink => r#"{"reason":"no_deep_link","status":"unrouted"}"#,
        Skip::UnknownTenant => r#"{"reason":"unknown_tenant","status":"unrouted"}"#,
        Skip::NotLocked => r#"{"reason":"not_locked","status":"unrouted"}"#,
    }
}

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn body(resp: Response<Full<Bytes>>) -> String {
        let Ok(collected) = poll_once(resp.into_body().collect());
        let bytes = collected.to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// The bodies are ready at once; no runtime needed.
    fn poll_once<F: std::future::Future>(f: F) -> F::Output {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("body not ready"),
        }
    }

    #[test]
    fn fixed_bodies_match_what_json_renders() {
        assert_eq!(body(routed(1234)), json!({"status": "routed", "tenant_id": 1234}).to_string());
        for skip in Skip::ALL {
            let status = match skip {
                Skip::NoDeepLink | Skip::UnknownTenant | Skip::NotLocked => "unrouted",
                _ => "ignored",
            };
            assert_eq!(body(skipped(skip)), json!({"status": status, "reason": skip.as_str()}).to_string());
        }
    }
}
