//! The stream over HTTP: the server every node runs (axum), and how a peer fetches its
//! provider (through the agent's one HTTP client, every body bounded).
//!
//! The server answers only `/stream/<id>/index.m3u8`, `/stream/<id>/seg<N>.ts` for a segment
//! in the window it lists, and `/stream/status`; it reads nothing but its segment directory.

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::body::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::playlist::segment_seq;
use super::stream::Stream;
use crate::os::http;

/// A segment larger than this is refused (1 s of even a 50 Mbit/s stream is ~6 MiB).
pub const MAX_SEGMENT: usize = 16 * 1024 * 1024;

pub fn router(stream: Arc<Stream>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/stream/status", get(status))
        .route("/stream/{id}/{name}", get(file))
        .with_state(stream)
}

/// Serves until the listener fails; the caller binds it (so a port in use is its error).
pub async fn serve(listener: tokio::net::TcpListener, stream: Arc<Stream>) {
    let app = router(stream).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("streaming HTTP server stopped: {e}");
    }
}

fn plain(code: StatusCode, text: &'static str) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain")], text).into_response()
}

async fn index(State(s): State<Arc<Stream>>) -> Response {
    let id = s.state.lock().unwrap().id.clone();
    let body = match id {
        // Escaped by construction: stream ids are [A-Za-z0-9_-].
        Some(id) => format!(
            "<!doctype html><title>{id}</title><p>Live stream <b>{id}</b>: open \
             <a href=\"/stream/{id}/index.m3u8\">/stream/{id}/index.m3u8</a> in a player \
             (VLC, mpv, ffplay).</p><video controls autoplay muted src=\"/stream/{id}/index.m3u8\"></video>"
        ),
        None => "<!doctype html><p>No stream yet.</p>".to_string(),
    };
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

async fn status(State(s): State<Arc<Stream>>) -> Response {
    let body = serde_json::to_vec(&s.status()).expect("status serialises");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn file(
    State(s): State<Arc<Stream>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((id, name)): Path<(String, String)>,
) -> Response {
    let (listed, text) = {
        let st = s.state.lock().unwrap();
        if st.id.as_deref() != Some(id.as_str()) {
            return plain(StatusCode::NOT_FOUND, "no such stream\n");
        }
        if name == "index.m3u8" {
            if st.playlist.segments.is_empty() {
                return plain(StatusCode::SERVICE_UNAVAILABLE, "no segments yet\n");
            }
            (false, Some(st.playlist.render()))
        } else {
            let listed = segment_seq(&name)
                .is_some_and(|seq| st.playlist.segments.iter().any(|g| g.seq == seq));
            (listed, None)
        }
    };
    if let Some(text) = text {
        let mut r = (
            [(header::CONTENT_TYPE, "application/vnd.apple.mpegurl")],
            text,
        )
            .into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return r;
    }
    if !listed {
        return plain(StatusCode::NOT_FOUND, "no such segment\n");
    }
    // The name matched seg<N>.ts, so it is a plain file name in our directory. Segments are
    // small and on tmpfs: a plain read does not hold the thread for long.
    match std::fs::read(s.seg_dir.join(&name)) {
        Ok(bytes) => {
            s.counters
                .served_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            s.counters.served_segments.fetch_add(1, Ordering::Relaxed);
            s.served_to(peer.ip().to_canonical(), bytes.len() as u64);
            ([(header::CONTENT_TYPE, "video/mp2t")], bytes).into_response()
        }
        // Rotated out between listing and reading.
        Err(_) => plain(StatusCode::NOT_FOUND, "segment gone\n"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("{0}: timed out")]
    Timeout(SocketAddr),
    #[error("{0}: HTTP: {1}")]
    Http(SocketAddr, String),
    #[error("{0}{1}: answered {2}")]
    Status(SocketAddr, String, u16),
    #[error("{0}{1}: body larger than {2} bytes")]
    TooLarge(SocketAddr, String, usize),
}

/// GET `path` from `addr` (the agent's one HTTP client), at most `max` bytes of body, all
/// within `timeout`; anything but 200 is an error.
pub async fn fetch(
    addr: SocketAddr,
    path: &str,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, FetchError> {
    let got = tokio::time::timeout(timeout, http::get(addr, path, max + 1, None))
        .await
        .map_err(|_| FetchError::Timeout(addr))?
        .map_err(|e| match e {
            http::HttpError::Connect(e) => FetchError::Connect(addr, e),
            e => FetchError::Http(addr, e.to_string()),
        })?;
    if got.status != 200 {
        return Err(FetchError::Status(addr, path.into(), got.status));
    }
    if got.body.len() > max {
        return Err(FetchError::TooLarge(addr, path.into(), max));
    }
    Ok(Bytes::from(got.body))
}

/// The health check's GET of a local stream server, from a blocking thread.
pub fn get_blocking(
    addr: SocketAddr,
    path: &str,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let got =
        http::get_blocking(addr, path, max, timeout).map_err(|e| format!("{addr}{path}: {e}"))?;
    if got.status != 200 {
        return Err(format!("{path} answered {}", got.status));
    }
    Ok(got.body)
}
