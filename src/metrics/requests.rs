//! `whatsapp_router_http_request_duration_seconds{route,method,status_class}`:
//! how long the webhook listener takes to answer, by route *template*.
//!
//! Every label comes from a closed set, so the raw path (which a scanner can
//! make anything) never becomes a series. The 4 x 4 x 5 = 80 possible label sets
//! each get a slot; a slot's histogram is registered the first time it is used,
//! so the scrape holds only the combinations that happened.

use http::{Method, StatusCode};
use metrics::{Key, Label, Recorder};

use super::{metadata, Metrics};

pub const HTTP_REQUEST_DURATION: &str = "whatsapp_router_http_request_duration_seconds";

/// The routes of the webhook listener; every other path is `other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Webhook,
    Healthz,
    Readyz,
    Other,
}

impl Route {
    const ALL: [Route; 4] = [Route::Webhook, Route::Healthz, Route::Readyz, Route::Other];

    /// The route template a request path matches.
    pub fn of(path: &str) -> Route {
        match path {
            "/api/gateway/waha" => Route::Webhook,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            _ => Route::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Route::Webhook => "/api/gateway/waha",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Other => "other",
        }
    }
}

const METHODS: [&str; 4] = ["GET", "HEAD", "POST", "other"];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub(super) const SLOTS: usize = Route::ALL.len() * METHODS.len() * STATUS_CLASSES.len();

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        _ => 3,
    }
}

fn status_index(status: StatusCode) -> usize {
    // StatusCode is always 100..=999; 6xx and above are folded into 5xx.
    (usize::from(status.as_u16() / 100)).clamp(1, 5) - 1
}

impl Metrics {
    /// Records one answered request on the webhook listener.
    pub fn http_request(&self, route: Route, method: &Method, status: StatusCode, seconds: f64) {
        let (r, m, s) = (route as usize, method_index(method), status_index(status));
        let slot = (r * METHODS.len() + m) * STATUS_CLASSES.len() + s;
        let histogram = self.http[slot].get_or_init(|| {
            let labels = vec![
                Label::new("route", route.as_str()),
                Label::new("method", METHODS[m]),
                Label::new("status_class", STATUS_CLASSES[s]),
            ];
            self.recorder.register_histogram(&Key::from_parts(HTTP_REQUEST_DURATION, labels), &metadata())
        });
        histogram.record(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_closed_sets() {
        assert_eq!(Route::of("/api/gateway/waha"), Route::Webhook);
        assert_eq!(Route::of("/api/gateway/waha/../x"), Route::Other);
        assert_eq!(Route::of("/readyz"), Route::Readyz);
        assert_eq!(status_index(StatusCode::OK), 1);
        assert_eq!(status_index(StatusCode::from_u16(999).unwrap()), 4);
        assert_eq!(method_index(&Method::DELETE), 3);
        let m = Metrics::new();
        m.http_request(Route::of("/wp-login.php"), &Method::PATCH, StatusCode::NOT_FOUND, 0.002);
        m.http_request(Route::Webhook, &Method::POST, StatusCode::BAD_GATEWAY, 0.2);
        m.upkeep();
        let text = m.render();
        let count = |labels: &str| format!("{HTTP_REQUEST_DURATION}_count{{{labels}}} 1");
        assert!(text.contains(&count("route=\"other\",method=\"other\",status_class=\"4xx\"")), "{text}");
        assert!(text.contains(&count("route=\"/api/gateway/waha\",method=\"POST\",status_class=\"5xx\"")), "{text}");
        assert!(!text.contains("wp-login"), "{text}");
    }
}
