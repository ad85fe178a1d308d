//! Cross-site request forgery: a state-changing request (anything but GET, HEAD, OPTIONS) that
//! comes from a page of another origin is refused 403 before it reaches a handler or the login.
//! The session cookie is `SameSite=Strict`, but a same-site page on another port (the
//! services' own UIs on `ui_port`, any other service on the node's address) still sends it.
//!
//! The browser's `Origin` header decides: it must be this listener's own origin,
//! `https://<Host header's host>:<port>`. Without one (old browsers, curl), `Sec-Fetch-Site`
//! must not be `cross-site` or `same-site`; without either the request passes (no browser
//! sends a cross-origin POST with neither). `Origin: null` (what a browser sends under our
//! `Referrer-Policy: no-referrer`, and from sandboxed frames) passes only with
//! `Sec-Fetch-Site: same-origin`.

use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::redirect::host_of;

/// `https://<host>` plus `:<port>` unless it is 443 (`host` as `redirect::host_of` gives it).
pub fn origin(host: &str, port: u16) -> String {
    if port == 443 {
        format!("https://{host}")
    } else {
        format!("https://{host}:{port}")
    }
}

/// Whether a request with these headers may change state on the listener at `port`.
pub fn allowed(method: &Method, h: &HeaderMap, port: u16) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    let fetch_site = h
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    // Our pages' `Referrer-Policy: no-referrer` makes a browser send `Origin: null` even on a
    // same-origin form post; then only `Sec-Fetch-Site: same-origin` lets it pass.
    if h.get(header::ORIGIN)
        .is_some_and(|o| o.as_bytes().trim_ascii() == b"null")
    {
        return fetch_site.as_deref() == Some("same-origin");
    }
    if let Some(o) = h.get(header::ORIGIN) {
        let Some(host) = h
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .and_then(host_of)
        else {
            return false;
        };
        let Ok(o) = o.to_str() else {
            return false;
        };
        let o = o.trim();
        return o.eq_ignore_ascii_case(&origin(host, port))
            || (port == 443 && o.eq_ignore_ascii_case(&format!("https://{host}:443")));
    }
    match fetch_site.as_deref() {
        Some(site) => !matches!(site, "cross-site" | "same-site"),
        None => true,
    }
}

/// The middleware: refuses what `allowed` refuses, for the listener at `port`.
pub async fn guard(port: u16, req: Request, next: Next) -> Response {
    if allowed(req.method(), req.headers(), port) {
        return next.run(req).await;
    }
    tracing::warn!(
        "dashboard: refused {} {} from origin {:?} (not https://<host>:{port})",
        req.method(),
        req.uri().path(),
        req.headers().get(header::ORIGIN)
    );
    (
        StatusCode::FORBIDDEN,
        "refused: this request comes from a page of another origin\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn only_the_listeners_own_origin_may_post() {
        let post = Method::POST;
        let host = ("host", "10.0.0.1:8443");
        assert!(allowed(
            &post,
            &h(&[host, ("origin", "https://10.0.0.1:8443")]),
            8443
        ));
        for bad in [
            "https://10.0.0.1:8444",
            "http://10.0.0.1:8443",
            "https://10.0.0.1",
            "https://evil.example:8443",
            "https://10.0.0.1:8443.evil.example",
            "null",
            "HTTPS://10.0.0.1:8444",
        ] {
            let mut m = h(&[host]);
            m.insert("origin", HeaderValue::from_str(bad).unwrap());
            assert!(!allowed(&post, &m, 8443), "{bad}");
            assert!(!allowed(&Method::DELETE, &m, 8443), "{bad}");
            assert!(!allowed(&Method::PUT, &m, 8443), "{bad}");
            assert!(allowed(&Method::GET, &m, 8443), "reads pass: {bad}");
        }
        // The UI listener has its own origin.
        let ui = h(&[
            ("host", "10.0.0.1:8444"),
            ("origin", "https://10.0.0.1:8444"),
        ]);
        assert!(allowed(&post, &ui, 8444));
        assert!(!allowed(&post, &ui, 8443));
        // An Origin but no usable Host: refused.
        assert!(!allowed(
            &post,
            &h(&[("origin", "https://10.0.0.1:8443")]),
            8443
        ));
        // IPv6 and the default port.
        assert!(allowed(
            &post,
            &h(&[
                ("host", "[fd00::1]:8443"),
                ("origin", "https://[fd00::1]:8443")
            ]),
            8443
        ));
        assert!(allowed(
            &post,
            &h(&[("host", "node.example"), ("origin", "https://node.example")]),
            443
        ));
    }

    #[test]
    fn origin_null_passes_only_as_same_origin() {
        let post = Method::POST;
        let host = ("host", "10.0.0.1:8443");
        let null = ("origin", "null");
        assert!(allowed(
            &post,
            &h(&[host, null, ("sec-fetch-site", "same-origin")]),
            8443
        ));
        assert!(!allowed(&post, &h(&[host, null]), 8443));
        for site in ["same-site", "cross-site", "none"] {
            let mut m = h(&[host, null]);
            m.insert("sec-fetch-site", HeaderValue::from_str(site).unwrap());
            assert!(!allowed(&post, &m, 8443), "{site}");
        }
    }

    #[test]
    fn without_origin_sec_fetch_site_decides_and_without_both_it_passes() {
        let post = Method::POST;
        let host = ("host", "10.0.0.1:8443");
        assert!(allowed(&post, &h(&[host]), 8443), "curl");
        assert!(allowed(
            &post,
            &h(&[host, ("sec-fetch-site", "same-origin")]),
            8443
        ));
        assert!(allowed(
            &post,
            &h(&[host, ("sec-fetch-site", "none")]),
            8443
        ));
        assert!(!allowed(
            &post,
            &h(&[host, ("sec-fetch-site", "same-site")]),
            8443
        ));
        assert!(!allowed(
            &post,
            &h(&[host, ("sec-fetch-site", "cross-site")]),
            8443
        ));
    }
}
