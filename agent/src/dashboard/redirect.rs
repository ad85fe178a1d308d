//! The dashboard's plain-HTTP port: it serves nothing but a 308 to the same host's HTTPS port
//! (no page, no form, no API, no cookie), so a password is never typed into a page that came
//! in clear. Without a usable certificate it says why instead, and still serves nothing else.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// Everything to `https://<same host>:<https_port><same path and query>`.
pub fn router(https_port: u16) -> Router {
    Router::new().fallback(move |req: Request| async move { redirect(&req, https_port) })
}

/// Everything answered 503 with `error` (no certificate: the node says so and how to fix it).
pub fn broken(error: String) -> Router {
    Router::new().fallback(move || {
        let error = error.clone();
        async move {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "This node's dashboard is off: it has no usable HTTPS certificate.\n{error}\n"
                ),
            )
        }
    })
}

fn redirect(req: &Request, https_port: u16) -> Response {
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(host_of)
    else {
        return (StatusCode::BAD_REQUEST, "a Host header is needed\n").into_response();
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let to = format!("https://{host}{port}{path}");
    match HeaderValue::from_str(&to) {
        Ok(v) => (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, v)]).into_response(),
        Err(_) => (StatusCode::BAD_REQUEST, "bad request\n").into_response(),
    }
}

/// The host of a Host header without its port: a name or IPv4 address of plain characters, or
/// a bracketed IPv6 address. Anything else is refused (it would go into a Location).
pub(crate) fn host_of(h: &str) -> Option<&str> {
    let host = if h.starts_with('[') {
        let end = h.find(']')?;
        let rest = &h[end + 1..];
        if !(rest.is_empty() || rest.starts_with(':')) {
            return None;
        }
        let inner = &h[1..end];
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return None;
        }
        &h[..=end]
    } else {
        let host = h.split_once(':').map_or(h, |(host, _)| host);
        let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
        if host.is_empty() || host.len() > 253 || !host.bytes().all(plain) {
            return None;
        }
        host
    };
    Some(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The router served on loopback; one raw request on its own connection, the whole answer.
    async fn call(r: Router, method: &str, host: Option<&str>, path: &str, body: &str) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = l.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(l, r).await });
        let mut c = tokio::net::TcpStream::connect(at).await.unwrap();
        let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\n{host}Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        c.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        server.abort();
        out
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("10.0.0.1:8080"), Some("10.0.0.1"));
        assert_eq!(host_of("n1.local"), Some("n1.local"));
        assert_eq!(host_of("[fd00::1]:8080"), Some("[fd00::1]"));
        assert_eq!(host_of("[fd00::1]"), Some("[fd00::1]"));
        assert_eq!(host_of("evil.org/x"), None);
        assert_eq!(host_of("a@b"), None);
        assert_eq!(host_of("[fd00::1]x"), None);
        assert_eq!(host_of("[nope]"), None);
        assert_eq!(host_of(""), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn every_request_is_a_redirect_and_nothing_else() {
        for (method, path, body) in [
            ("GET", "/login", ""),
            ("POST", "/login", "user=admin&password=secret"),
            ("GET", "/api/state", ""),
            ("POST", "/api/scan", "{}"),
            ("GET", "/services?type=web", ""),
            ("GET", "/", ""),
        ] {
            let r = call(router(8443), method, Some("10.0.0.1:8080"), path, body).await;
            let (head, body) = r.split_once("\r\n\r\n").unwrap();
            let head = head.to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 308"), "{method} {path}: {r}");
            assert!(
                head.contains(&format!("\r\nlocation: https://10.0.0.1:8443{path}\r\n")),
                "{method} {path}: {r}"
            );
            assert!(!head.contains("set-cookie"), "{r}");
            assert!(
                body.is_empty(),
                "{method} {path}: no page over plain HTTP: {r}"
            );
        }
        let r = call(router(443), "GET", Some("[fd00::1]:80"), "/node", "").await;
        assert!(
            r.to_ascii_lowercase()
                .contains("location: https://[fd00::1]/node\r\n"),
            "{r}"
        );
        for host in [None, Some("x\"y"), Some("evil.org/x")] {
            let r = call(router(8443), "GET", host, "/login", "").await;
            assert!(r.starts_with("HTTP/1.1 400"), "{host:?}: {r}");
        }
        let r = call(
            broken("dashboard.key is damaged".into()),
            "POST",
            Some("h"),
            "/login",
            "",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(
            r.contains("dashboard.key is damaged") && !r.contains("<form"),
            "{r}"
        );
    }
}
