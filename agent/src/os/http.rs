//! The agent's one HTTP client: a plain HTTP/1.1 GET (hyper's client connection, one request a
//! connection), the body bounded, optionally read under a bandwidth budget. The probe times
//! providers with it, stream relays fetch playlists and segments, health checks ask their
//! local server (from a blocking thread, through `get_blocking`).

use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bandwidth budget shared by every read of one job (a probe scan): reads wait while the job
/// is ahead of it, so a scan never floods a community link.
pub struct Rate {
    bytes_per_s: u64,
    start: Instant,
    used: Mutex<u64>,
}

impl Rate {
    pub fn new(bytes_per_s: u64) -> Rate {
        Rate {
            bytes_per_s: bytes_per_s.max(1),
            start: Instant::now(),
            used: Mutex::new(0),
        }
    }

    /// Accounts `n` bytes just read; waits while the job is ahead of its budget.
    pub async fn take(&self, n: usize) {
        let used = {
            let mut u = self.used.lock().unwrap();
            *u += n as u64;
            *u
        };
        let due = Duration::from_secs_f64(used as f64 / self.bytes_per_s as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// A reply from `get`.
pub struct Got {
    pub status: u16,
    /// Content-Length, when the answer gave one.
    pub len: Option<u64>,
    /// Time to the answer's header, and to read the body, in milliseconds.
    pub first_ms: f64,
    pub body_ms: f64,
    /// At most `limit` bytes of the body.
    pub body: Vec<u8>,
}

impl Got {
    /// Bytes per second while reading the body; None for a body too small to time (a rate
    /// from a few hundred bytes says nothing).
    pub fn rate(&self) -> Option<f64> {
        (self.body.len() >= 4096 && self.body_ms > 0.0)
            .then(|| self.body.len() as f64 / (self.body_ms / 1000.0))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("not HTTP: {0}")]
    NotHttp(String),
    #[error("reading the body: {0}")]
    Body(String),
    #[error("timed out")]
    Timeout,
}

/// GET `path` from `addr`; reads at most `limit` bytes of the body, under `rate` if given.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    limit: usize,
    rate: Option<&Rate>,
) -> Result<Got, HttpError> {
    let t0 = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(HttpError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| HttpError::NotHttp(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::USER_AGENT, "cloudy-agent")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| HttpError::NotHttp(e.to_string()))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| HttpError::NotHttp(e.to_string()))?;
    let first_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let status = resp.status().as_u16();
    let len = resp
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let mut body = resp.into_body();
    let mut out = Vec::new();
    let t1 = Instant::now();
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => {
                driver.abort();
                return Err(HttpError::Body(e.to_string()));
            }
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    let take = d.len().min(limit - out.len());
                    out.extend_from_slice(&d[..take]);
                    if let Some(rate) = rate {
                        rate.take(take).await;
                    }
                }
            }
        }
        if out.len() >= limit {
            break;
        }
    }
    let body_ms = t1.elapsed().as_secs_f64() * 1000.0;
    driver.abort();
    Ok(Got {
        status,
        len,
        first_ms,
        body_ms,
        body: out,
    })
}

/// `get` within `timeout`, for a blocking thread without a runtime of its own (health checks).
pub fn get_blocking(
    addr: SocketAddr,
    path: &str,
    limit: usize,
    timeout: Duration,
) -> Result<Got, HttpError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(HttpError::Connect)?;
    rt.block_on(async {
        tokio::time::timeout(timeout, get(addr, path, limit, None))
            .await
            .map_err(|_| HttpError::Timeout)?
    })
}

/// Sends one request of any method to `addr` (the dashboard's proxy to a local service's UI)
/// and reads the answer; a body over `limit` bytes is an error, not a cut-off page.
pub async fn send(
    addr: SocketAddr,
    req: hyper::Request<http_body_util::Full<bytes::Bytes>>,
    limit: usize,
) -> Result<(hyper::http::response::Parts, bytes::Bytes), HttpError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(HttpError::Connect)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| HttpError::NotHttp(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| HttpError::NotHttp(e.to_string()));
    let out = match resp {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            http_body_util::Limited::new(body, limit)
                .collect()
                .await
                .map(|b| (parts, b.to_bytes()))
                .map_err(|e| HttpError::Body(e.to_string()))
        }
        Err(e) => Err(e),
    };
    driver.abort();
    out
}
