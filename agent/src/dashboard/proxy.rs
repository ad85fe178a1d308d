//! `/ui/<service>/...`: a local service's own web UI (Syncthing's GUI, Tahoe-LAFS's web port)
//! through the dashboard, behind its login, so using a joined service needs no shell.
//!
//! The agent names where each UI listens (`control::Request::Ui`); nothing in the request picks
//! a host or port. Hop-by-hop headers, the dashboard's own cookie and any credentials the
//! browser sends are dropped; Syncthing gets its API key instead, as the dashboard's login stands
//! for Syncthing's. Bodies are bounded both ways.

use axum::body::Body;
use axum::extract::{Path, Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::web::{ask, unavailable, Shared};
use crate::control::{Reply, Request as Ask, UI_SERVICES};

/// Uploads through a UI (Syncthing's settings, a Tahoe upload form) are small.
const MAX_REQUEST: usize = 4 << 20;
/// Syncthing's largest asset is a few hundred KiB; Tahoe pages are small.
const MAX_RESPONSE: usize = 32 << 20;
/// The proxied UI is another program's pages, with its own scripts: the dashboard's no-script
/// policy would stop them, so they get one that still keeps everything on this origin.
pub const UI_CSP: &str = "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; \
                          style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                          font-src 'self' data:; connect-src 'self'; form-action 'self'; \
                          frame-ancestors 'none'; base-uri 'self'";

/// Tahoe-LAFS's web UI has no script of its own, but it serves the grid's files on this origin:
/// an HTML file a stranger put into the grid would otherwise run here, beside Syncthing's GUI,
/// to which the proxy adds Syncthing's API key. Its pages run no script at all.
pub const TAHOE_CSP: &str = "default-src 'none'; style-src 'self' 'unsafe-inline'; \
                             img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; \
                             base-uri 'none'";

/// The policy for a path on the UI origin.
pub fn csp_for(path: &str) -> &'static str {
    if path == "/ui/tahoe" || path.starts_with("/ui/tahoe/") {
        TAHOE_CSP
    } else {
        UI_CSP
    }
}

/// Headers meaningful for one connection only (RFC 9110 7.6.1), never passed on.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Those, plus what `Connection` names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    for n in HOP_BY_HOP.iter().map(|s| s.to_string()).chain(named) {
        if let Ok(name) = HeaderName::from_bytes(n.as_bytes()) {
            h.remove(name);
        }
    }
}

/// The browser's cookies minus the dashboard's session: the service must never see it.
fn cookies_without_session(h: &HeaderMap) -> Option<HeaderValue> {
    let kept: Vec<&str> = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split('=').next() != Some(super::auth::COOKIE))
        .collect();
    (!kept.is_empty())
        .then(|| HeaderValue::from_str(&kept.join("; ")).ok())
        .flatten()
}

pub async fn ui_root(Path(service): Path<String>) -> Response {
    if !UI_SERVICES.contains(&service.as_str()) {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    // Relative links in the UI resolve below the prefix only with the trailing slash.
    Redirect::to(&format!("/ui/{service}/")).into_response()
}

pub async fn ui_index(
    state: AxState<Shared>,
    Path(service): Path<String>,
    req: Request,
) -> Response {
    forward(state, service, String::new(), req).await
}

pub async fn ui_path(
    state: AxState<Shared>,
    Path((service, rest)): Path<(String, String)>,
    req: Request,
) -> Response {
    forward(state, service, rest, req).await
}

async fn forward(
    AxState(web): AxState<Shared>,
    service: String,
    rest: String,
    req: Request,
) -> Response {
    if !UI_SERVICES.contains(&service.as_str()) {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let target = match ask(
        &web,
        Ask::Ui {
            service: service.clone(),
        },
    )
    .await
    {
        Ok(Reply::Ui { target: Some(t) }) => t,
        Ok(Reply::Ui { target: None }) => {
            return (
                StatusCode::NOT_FOUND,
                format!("{service} does not run on this node: enable or join it first"),
            )
                .into_response()
        }
        Ok(other) => return unavailable(&format!("unexpected reply {other:?}")),
        Err(r) => return r,
    };
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_REQUEST).await {
        Ok(b) => b,
        Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response(),
    };
    let mut path = format!("/{rest}");
    if let Some(q) = parts.uri.query() {
        path.push('?');
        path.push_str(q);
    }
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::COOKIE);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::HOST);
    headers.remove(header::ORIGIN);
    headers.remove(header::REFERER);
    if let Some(c) = cookies_without_session(&parts.headers) {
        headers.insert(header::COOKIE, c);
    }
    // The address the service listens on, which is what its own host check expects.
    if let Ok(h) = HeaderValue::from_str(&target.addr.to_string()) {
        headers.insert(header::HOST, h);
    }
    if let Some(k) = target
        .api_key
        .as_deref()
        .and_then(|k| HeaderValue::from_str(k).ok())
    {
        headers.insert(HeaderName::from_static("x-api-key"), k);
    }
    let mut out = hyper::Request::builder().method(parts.method).uri(path);
    if let Some(h) = out.headers_mut() {
        *h = headers;
    }
    let Ok(out) = out.body(http_body_util::Full::new(body)) else {
        return (StatusCode::BAD_REQUEST, "bad request").into_response();
    };
    let (rparts, rbody) = match tokio::time::timeout(
        std::time::Duration::from_secs(60),
        crate::os::http::send(target.addr, out, MAX_RESPONSE),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!("dashboard: /ui/{service}/: {e}");
            return (StatusCode::BAD_GATEWAY, format!("{service}: {e}")).into_response();
        }
        Err(_) => {
            return (StatusCode::GATEWAY_TIMEOUT, format!("{service}: timed out")).into_response()
        }
    };
    let mut resp = Response::new(Body::from(rbody));
    *resp.status_mut() = rparts.status;
    let mut h = rparts.headers;
    strip_hop_by_hop(&mut h);
    h.remove(header::CONTENT_LENGTH);
    // A redirect to the service's own address would leave the dashboard: keep it below the
    // prefix.
    if let Some(loc) = h.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
        let base = format!("http://{}", target.addr);
        let local = loc.strip_prefix(&base).unwrap_or(loc);
        let fixed = if local.starts_with('/') && !local.starts_with("//") {
            format!("/ui/{service}{local}")
        } else if local.contains("://") || local.starts_with("//") {
            format!("/ui/{service}/")
        } else {
            local.to_string()
        };
        if let Ok(v) = HeaderValue::from_str(&fixed) {
            h.insert(header::LOCATION, v);
        }
    }
    // A cookie the service sets stays below its prefix.
    let cookies: Vec<HeaderValue> = h
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|c| c.split('=').next().map(str::trim) != Some(super::auth::COOKIE))
        .filter_map(|c| {
            let kept: Vec<&str> = c
                .split(';')
                .map(str::trim)
                .filter(|a| !a.to_ascii_lowercase().starts_with("path="))
                .collect();
            HeaderValue::from_str(&format!("{}; Path=/ui/{service}/", kept.join("; "))).ok()
        })
        .collect();
    h.remove(header::SET_COOKIE);
    for c in cookies {
        h.append(header::SET_COOKIE, c);
    }
    *resp.headers_mut() = h;
    resp
}

/// Links to the UIs (on their own origin, `https://<host>:<ui_port>/ui/<service>/`) of the services that run here (pid known), each with the agent's note on
/// where its files are, for the services page.
pub async fn links(
    web: &super::web::Web,
    managed: &std::collections::BTreeMap<String, crate::os::supervisor::Status>,
    host: &str,
) -> super::html::Html {
    let origin = super::csrf::origin(host, web.ui_port);
    let mut h = super::html::Html::default();
    for (s, label) in [
        ("syncthing", "Open Syncthing's own page"),
        ("tahoe", "Open Tahoe-LAFS's own page"),
    ] {
        let runs = managed
            .iter()
            .any(|(name, st)| name.starts_with(s) && st.pid != 0);
        if !runs {
            continue;
        }
        let note = match ask(web, Ask::Ui { service: s.into() }).await {
            Ok(Reply::Ui { target: Some(t) }) => t.note,
            _ => continue,
        };
        h.push("<p class=\"ui\"><a href=\"")
            .text_in(&origin)
            .push("/ui/")
            .text_in(s)
            .push("/\">")
            .push(label)
            .push("</a> ")
            .text_in(&note)
            .push("</p>");
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tahoe_pages_get_no_script_and_syncthing_keeps_its_own() {
        for p in ["/ui/tahoe", "/ui/tahoe/", "/ui/tahoe/uri/URI:LIT:x"] {
            assert_eq!(csp_for(p), TAHOE_CSP, "{p}");
        }
        assert!(!TAHOE_CSP.contains("script-src"));
        assert!(TAHOE_CSP.starts_with("default-src 'none'"));
        assert_eq!(csp_for("/ui/syncthing/"), UI_CSP);
        assert_eq!(csp_for("/ui/tahoex/"), UI_CSP);
    }

    #[test]
    fn hop_by_hop_and_what_connection_names_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("text/html"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn the_dashboard_session_never_reaches_the_service() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!(
                "a=1; {}=secret; CSRF-Token-X=2",
                super::super::auth::COOKIE
            ))
            .unwrap(),
        );
        let c = cookies_without_session(&h).unwrap();
        assert_eq!(c.to_str().unwrap(), "a=1; CSRF-Token-X=2");
    }
}
