//! Getting manifests and bundles: from the seed's `[update] url` (any HTTP directory) and from
//! members that hold a verified bundle, over the VPN (`serve`). A manifest is small and
//! bounded; a bundle is streamed into a partial file through `BundleCheck`, resumed with an
//! HTTP Range request when a transfer broke off, and renamed to its final name only when its
//! size and sha256 match the signed manifest. Nothing here decides whether to install.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use cloudy_model::update::{BundleCheck, Manifest, MAX_MANIFEST_BYTES};

/// Each read must make progress within this.
const STALL: Duration = Duration::from_secs(30);
/// A connection within this: a member that is away costs a check only this long.
const CONNECT: Duration = Duration::from_secs(5);
/// A whole bundle transfer gets this much, plus a second per 4 KiB: bounded even against a
/// source that trickles a byte just inside `STALL`.
const TRANSFER_BASE: Duration = Duration::from_secs(300);

/// Where a manifest and its bundle may come from.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// For messages: `the update url http://...` or `member n1 (10.99.0.1)`.
    pub label: String,
    /// A DNS name or an address, and the port (resolved at each fetch).
    pub host: String,
    pub port: u16,
    /// The directory's path, ending in `/`.
    pub dir: String,
    /// A member's node id (None: the seed's url).
    pub member: Option<String>,
}

impl Source {
    /// The seed's `[update] url` (already checked by the seed: `http://host[:port][/path]`).
    pub fn url(url: &str) -> Option<Source> {
        let rest = url.strip_prefix("http://")?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (h, p.parse().ok()?),
            _ => (hostport, 80),
        };
        let mut dir = path.to_string();
        if !dir.ends_with('/') {
            dir.push('/');
        }
        Some(Source {
            label: format!("the update url {url}"),
            host: host.trim_matches(['[', ']']).to_string(),
            port,
            dir,
            member: None,
        })
    }

    pub fn member(id: &str, name: &str, vpn: std::net::Ipv4Addr, port: u16) -> Source {
        Source {
            label: format!("member {name} ({vpn})"),
            host: vpn.to_string(),
            port,
            dir: "/".into(),
            member: Some(id.to_string()),
        }
    }

    async fn addr(&self) -> Result<SocketAddr, FetchError> {
        tokio::time::timeout(
            STALL,
            tokio::net::lookup_host((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| self.err("resolving its name timed out"))?
        .map_err(|e| self.err(format!("resolving {}: {e}", self.host)))?
        .next()
        .ok_or_else(|| self.err(format!("{} has no address", self.host)))
    }

    fn err(&self, problem: impl Into<String>) -> FetchError {
        FetchError {
            from: self.label.clone(),
            problem: problem.into(),
        }
    }

    /// GET `name` in the directory, from byte `from` on (a Range request when > 0).
    async fn get(
        &self,
        name: &str,
        from: u64,
    ) -> Result<hyper::Response<hyper::body::Incoming>, FetchError> {
        let addr = self.addr().await?;
        let stream = tokio::time::timeout(CONNECT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| self.err("connecting timed out"))?
            .map_err(|e| self.err(format!("connecting to {addr}: {e}")))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| self.err(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::get(format!("{}{name}", self.dir))
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(hyper::header::USER_AGENT, "cloudy-agent");
        if from > 0 {
            req = req.header(hyper::header::RANGE, format!("bytes={from}-"));
        }
        let req = req
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| self.err(e.to_string()))?;
        tokio::time::timeout(STALL, send.send_request(req))
            .await
            .map_err(|_| self.err("no answer in 30 s"))?
            .map_err(|e| self.err(e.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{from}: {problem}")]
pub struct FetchError {
    pub from: String,
    pub problem: String,
}

/// The manifest file's name for a board.
pub fn manifest_name(board: &str) -> String {
    format!("{board}.manifest.json")
}

/// The signed manifest's bytes for `board` from `src` (None: it has none, 404), at most
/// `MAX_MANIFEST_BYTES`.
pub async fn manifest(src: &Source, board: &str) -> Result<Option<Vec<u8>>, FetchError> {
    let resp = src.get(&manifest_name(board), 0).await?;
    match resp.status().as_u16() {
        200 => {}
        404 => return Ok(None),
        s => return Err(src.err(format!("answered HTTP {s} for the manifest"))),
    }
    let body = http_body_util::Limited::new(resp.into_body(), MAX_MANIFEST_BYTES);
    let bytes = tokio::time::timeout(STALL, body.collect())
        .await
        .map_err(|_| src.err("the manifest stalled"))?
        .map_err(|e| src.err(format!("the manifest: {e}")))?
        .to_bytes();
    Ok(Some(bytes.to_vec()))
}

/// Progress of a bundle download, for the log and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// Bytes already in the partial file when this transfer began (resumed from there).
    pub resumed_from: u64,
    pub done: u64,
    pub total: u64,
}

/// Downloads the bundle `m` names from `src` into `dir/<bundle>`, through `partial_dir` (where
/// an interrupted transfer's bytes wait, named by the bundle's sha256 so only the same bundle
/// resumes them). Returns the final path only when size and hash match; a mismatch removes the
/// partial file. `progress` is told along the way.
pub async fn bundle(
    src: &Source,
    m: &Manifest,
    partial_dir: &Path,
    dir: &Path,
    mut progress: impl FnMut(Progress),
) -> Result<PathBuf, FetchError> {
    let io = |what: &str, e: std::io::Error| src.err(format!("{what}: {e}"));
    std::fs::create_dir_all(partial_dir).map_err(|e| io("making the download directory", e))?;
    std::fs::create_dir_all(dir).map_err(|e| io("making the bundle directory", e))?;
    let part = partial_dir.join(format!("{}.part", m.sha256.to_ascii_lowercase()));
    let mut check = BundleCheck::new(m);
    // What an earlier transfer left: hashed again (the check needs every byte), then resumed.
    let mut have = 0u64;
    if let Ok(mut f) = tokio::fs::File::open(&part).await {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f
                .read(&mut buf)
                .await
                .map_err(|e| io("reading the partial file", e))?;
            if n == 0 {
                break;
            }
            if check.update(&buf[..n]).is_err() {
                // Longer than the bundle: not ours to resume.
                check = BundleCheck::new(m);
                have = 0;
                break;
            }
            have += n as u64;
        }
        if have == 0 {
            let _ = std::fs::remove_file(&part);
        }
    }
    let mut p = Progress {
        resumed_from: have,
        done: have,
        total: m.size,
    };
    if have < m.size {
        let resp = src.get(&m.bundle, have).await?;
        let status = resp.status().as_u16();
        let mut file = match status {
            206 if have > 0 => {
                let from = resp
                    .headers()
                    .get(hyper::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if from != Some(have) {
                    return Err(src.err(format!(
                        "asked for bytes from {have}, got a range from {from:?}"
                    )));
                }
                tracing::info!("resuming the bundle from {} at byte {have}", src.label);
                tokio::fs::OpenOptions::new()
                    .append(true)
                    .open(&part)
                    .await
                    .map_err(|e| io("opening the partial file", e))?
            }
            200 => {
                // A server that ignores Range sends it all: start again.
                check = BundleCheck::new(m);
                p.resumed_from = 0;
                p.done = 0;
                new_part(&part)
                    .await
                    .map_err(|e| io("creating the partial file", e))?
            }
            s => return Err(src.err(format!("answered HTTP {s} for {}", m.bundle))),
        };
        let mut body = resp.into_body();
        let mut last_told = 0u64;
        let deadline =
            tokio::time::Instant::now() + TRANSFER_BASE + Duration::from_secs(m.size / 4096);
        loop {
            if tokio::time::Instant::now() > deadline {
                return Err(src.err(format!(
                    "the transfer is too slow (byte {} of {} after the time allowed); it resumes from there next time",
                    p.done, m.size
                )));
            }
            let frame = tokio::time::timeout(STALL, body.frame())
                .await
                .map_err(|_| src.err(format!("the transfer stalled at byte {}", p.done)))?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| src.err(format!("at byte {}: {e}", p.done)))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if let Err(e) = check.update(&data) {
                drop(file);
                let _ = std::fs::remove_file(&part);
                return Err(src.err(e.to_string()));
            }
            file.write_all(&data)
                .await
                .map_err(|e| io("writing the partial file", e))?;
            p.done += data.len() as u64;
            if p.done - last_told >= 1 << 20 {
                last_told = p.done;
                progress(p);
            }
        }
        file.sync_all()
            .await
            .map_err(|e| io("syncing the partial file", e))?;
    }
    progress(p);
    if p.done < m.size {
        return Err(src.err(format!(
            "the transfer ended at byte {} of {}; it resumes from there next time",
            p.done, m.size
        )));
    }
    if let Err(e) = check.finish() {
        let _ = std::fs::remove_file(&part);
        return Err(src.err(e.to_string()));
    }
    let done = dir.join(&m.bundle);
    std::fs::rename(&part, &done).map_err(|e| io("renaming the verified bundle", e))?;
    // Partial files of other bundles (an older version never finished) are of no more use.
    if let Ok(rd) = std::fs::read_dir(partial_dir) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(done)
}

async fn new_part(path: &Path) -> std::io::Result<tokio::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let std = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    Ok(tokio::fs::File::from_std(std))
}

/// Hashes a file already on disk against its manifest (before it goes to `rauc install`).
pub fn recheck(path: &Path, m: &Manifest) -> Result<(), String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut check = BundleCheck::new(m);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        check.update(&buf[..n]).map_err(|e| e.to_string())?;
    }
    check.finish().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_sources() {
        let s = Source::url("http://updates.example.org/cloudy").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.dir.as_str()),
            ("updates.example.org", 80, "/cloudy/")
        );
        let s = Source::url("http://10.0.0.1:8000/").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.dir.as_str()),
            ("10.0.0.1", 8000, "/")
        );
        let s = Source::url("http://[fd00::1]:81").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.dir.as_str()),
            ("fd00::1", 81, "/")
        );
        assert!(Source::url("https://x/").is_none());
    }
}
