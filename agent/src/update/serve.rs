//! Serving the verified bundle this node holds, and its signed manifest, to members: HTTP on
//! the VPN address only (never the LAN), to connections from a member's VPN address only,
//! with Range requests (206, so a broken transfer resumes) and one bandwidth cap shared by
//! every transfer (`[update] max_rate_kib`). Only what `Held` names is served: the bundle
//! renamed into place after its hash matched, never a partial file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::mesh::members::Members;
use cloudy_model::update::Manifest;

/// The port members fetch updates from, on the VPN address.
pub const PORT: u16 = 6657;
const CHUNK: usize = 16 * 1024;

/// The verified bundle and the signed manifest's bytes as they came.
#[derive(Debug, Clone)]
pub struct Held {
    pub manifest: Manifest,
    pub signed: Vec<u8>,
    pub path: PathBuf,
}

/// One budget for all transfers: each chunk books its time after the last booked one.
pub struct Cap {
    bytes_per_s: u64,
    next: Mutex<Instant>,
}

impl Cap {
    pub fn new(kib_per_s: u32) -> Cap {
        Cap {
            bytes_per_s: u64::from(kib_per_s).max(1) * 1024,
            next: Mutex::new(Instant::now()),
        }
    }

    async fn take(&self, n: usize) {
        let at = {
            let mut next = self.next.lock().unwrap();
            // Idle time is not saved up for a burst.
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(n as f64 / self.bytes_per_s as f64);
            start
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

#[derive(Clone)]
pub struct Shared {
    pub held: Arc<Mutex<Option<Held>>>,
    pub members: Arc<Mutex<Members>>,
    pub cap: Arc<Cap>,
}

/// Serves on our VPN address until the agent stops; binds again if the address is not up yet.
pub async fn serve(shared: Shared) {
    let mut warned = false;
    loop {
        let vpn = shared.members.lock().unwrap().me().vpn;
        match tokio::net::TcpListener::bind((vpn, PORT)).await {
            Ok(l) => {
                tracing::info!("serving verified updates to members on {vpn}:{PORT}");
                let app = axum::Router::new()
                    .route("/{name}", axum::routing::get(file))
                    .with_state(shared.clone());
                let r =
                    axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>()).await;
                tracing::warn!("the update server stopped: {r:?}");
            }
            Err(e) if !warned => {
                warned = true;
                tracing::info!("update server: {vpn}:{PORT} not bound yet ({e}); trying every 5 s");
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

fn is_member(members: &Members, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    members.others().any(|m| IpAddr::V4(m.vpn) == ip)
}

async fn file(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !is_member(&s.members.lock().unwrap(), peer.ip()) {
        tracing::warn!("update server: refused {peer}: not a member's VPN address");
        return (StatusCode::FORBIDDEN, "members only\n").into_response();
    }
    let Some(held) = s.held.lock().unwrap().clone() else {
        return (StatusCode::NOT_FOUND, "no update held\n").into_response();
    };
    if name == super::fetch::manifest_name(&held.manifest.board) {
        return (
            [(header::CONTENT_TYPE, "application/json")],
            held.signed.clone(),
        )
            .into_response();
    }
    if name != held.manifest.bundle {
        return (StatusCode::NOT_FOUND, "not held here\n").into_response();
    }
    let size = held.manifest.size;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(parse_range);
    let (from, status) = match range {
        None => (0, StatusCode::OK),
        Some(Some(from)) if from < size => (from, StatusCode::PARTIAL_CONTENT),
        Some(_) => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response()
        }
    };
    let mut f = match tokio::fs::File::open(&held.path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("update server: {}: {e}", held.path.display());
            return (StatusCode::NOT_FOUND, "gone\n").into_response();
        }
    };
    if f.seek(std::io::SeekFrom::Start(from)).await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    tracing::info!(
        "update server: {} to {peer}, bytes {from}-{} of {size}",
        held.manifest.bundle,
        size - 1
    );
    let cap = s.cap.clone();
    let left = size - from;
    let stream = futures_util::stream::unfold((f, left, cap), |(mut f, left, cap)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; CHUNK.min(left as usize)];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                cap.take(n).await;
                Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::from(buf)),
                    (f, left - n as u64, cap),
                ))
            }
            Err(e) => Some((Err(e), (f, 0, cap))),
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, left.into());
    h.insert(
        header::ACCEPT_RANGES,
        header::HeaderValue::from_static("bytes"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = format!("bytes {from}-{}/{size}", size - 1).parse() {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}

/// `bytes=N-` (the only form a resuming fetch sends; N- also covers `N-M` up to the end, which
/// a client that wants less can cut off): Some(N), else None.
fn parse_range(v: &str) -> Option<u64> {
    let r = v.trim().strip_prefix("bytes=")?;
    let (a, _) = r.split_once('-')?;
    a.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("bytes=100-"), Some(100));
        assert_eq!(parse_range("bytes=0-99"), Some(0));
        assert_eq!(parse_range("bytes=-5"), None);
        assert_eq!(parse_range("items=1-"), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_cap_holds_the_rate() {
        let cap = Cap::new(64);
        let t0 = Instant::now();
        // 16 chunks of 16 KiB at 64 KiB/s: the last may go 15 x 0.25 s after the first. A
        // lower bound only (a slow machine takes longer, never shorter).
        for _ in 0..16 {
            cap.take(16 * 1024).await;
        }
        assert!(
            t0.elapsed() >= Duration::from_millis(3700),
            "{:?}",
            t0.elapsed()
        );
    }
}
