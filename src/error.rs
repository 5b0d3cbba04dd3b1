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

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
