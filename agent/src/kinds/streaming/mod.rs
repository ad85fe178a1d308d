//! Live streaming, the PeerStreamer role over plain HTTP (HLS), so that any player can watch
//! and every viewer's node becomes a provider.
//!
//! - A source node runs ffmpeg (`ingest`) on a file (looped), a URL or a camera, cutting the
//!   stream into 1 s segments of a sliding HLS playlist in a tmpfs state dir.
//! - Every node serves its window of segments over HTTP (`http`):
//!   `http://<node>:<port>/stream/<id>/index.m3u8`, plus `/stream/status` as JSON.
//! - A peer (`relay`) picks a provider of the stream from the catalog, fetches its playlist and
//!   new segments, caches and re-serves them, and is itself published as a provider one hop
//!   further. Its record carries the chain of nodes it fetches through, so nobody fetches from
//!   a node downstream of itself. When its provider fails or stalls, it switches to another
//!   one and continues the segment sequence.
//!
//! Segments keep their name (`seg<N>.ts`, N the media sequence) from the source to every
//! peer, so a segment is the same bytes wherever it is fetched. N starts at the Unix time
//! ffmpeg started, so it keeps growing across ffmpeg restarts.

pub mod http;
pub mod ingest;
pub mod playlist;
pub mod relay;
pub mod service;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::catalog::Record;
pub use cloudy_model::kinds::MAX_HOPS;
pub use cloudy_model::names::{check_provider, check_stream_id};
pub use cloudy_model::seed::streaming::{parse_input, Config, Input, DEFAULT_PORT};
use crate::os::system::System;
use playlist::Playlist;

/// The `streaming` service (a source or a peer, as the seed says).
pub fn build(name: &str, sys: &System) -> Option<Arc<dyn crate::services::Service>> {
    (name == service::NAME)
        .then(|| Arc::new(service::Streaming::new(sys)) as Arc<dyn crate::services::Service>)
}

/// Segments are rewritten every second: tmpfs, never the SD card.
pub const STATE_DIR: &str = "/run/cloudy/streaming";
/// The provider a peer should prefer (node name or id), written by the agent from the seed or
/// `cloudy-agent join streaming <provider>`, read by the stream process on every choice.
pub const PROVIDER_FILE: &str = "/run/cloudy/streaming/provider";
/// Segments a node keeps and lists: ~10 s of stream for a player to start from.
pub const WINDOW: usize = 10;
/// A playlist whose newest segment is older than this is not live: unhealthy, unpublished.
pub const HEALTH_STALL: Duration = Duration::from_secs(8);

/// How a node appears in `upstream` chains: the first 8 hex digits of its id (a collision only
/// makes a peer skip a provider it could have used).
pub fn short_id(node_id: &str) -> &str {
    &node_id[..node_id.len().min(8)]
}

/// The playlist path for a stream id, as records carry it.
pub fn playlist_path(id: &str) -> String {
    format!("/stream/{id}/index.m3u8")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Source,
    Peer,
}

/// The provider a peer fetches from now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    pub node: String,
    pub node_id: String,
    pub addr: SocketAddr,
    pub hops: u32,
}

/// What this node serves, shared by the HTTP server, the ingest or relay task and the health
/// check.
#[derive(Debug)]
pub struct State {
    /// None until a peer has found a stream to relay.
    pub id: Option<String>,
    pub role: Role,
    /// The window of segments served, oldest first.
    pub playlist: Playlist,
    /// Node id of the source.
    pub origin: Option<String>,
    /// 0 on the source; the provider's + 1 on a peer.
    pub hops: u32,
    /// Short ids of the nodes our segments come through, nearest first, the source last.
    pub upstream: Vec<String>,
    pub provider: Option<Upstream>,
    pub last_error: Option<String>,
    /// When the newest segment was added.
    pub advanced: Option<Instant>,
    pub first_segment_after: Option<Duration>,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub served_bytes: AtomicU64,
    pub served_segments: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub fetched_segments: AtomicU64,
    pub switches: AtomicU32,
    pub ffmpeg_starts: AtomicU32,
    pub ffmpeg_pid: AtomicU32,
    /// Segment bytes served to each client address (the first `MAX_CLIENTS` seen).
    pub served_to: Mutex<BTreeMap<IpAddr, u64>>,
}

/// Clients counted apart in `served_to`; later ones count only in the totals.
pub const MAX_CLIENTS: usize = 64;

#[derive(Debug)]
pub struct Stream {
    pub state: Mutex<State>,
    pub counters: Counters,
    /// Where the served segments are (ffmpeg's output on a source, the cache on a peer).
    pub seg_dir: PathBuf,
    pub port: u16,
    pub node_id: String,
    pub started: Instant,
}

/// `/stream/status`: what a person or a test wants to know about this node's stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub role: Role,
    pub stream_id: Option<String>,
    pub node_id: String,
    pub origin: Option<String>,
    pub hops: u32,
    pub upstream: Vec<String>,
    pub provider: Option<Upstream>,
    pub segments: Vec<u64>,
    pub served_bytes: u64,
    pub served_segments: u64,
    /// Segment bytes served to each client address.
    pub served_to: BTreeMap<IpAddr, u64>,
    pub fetched_bytes: u64,
    pub fetched_segments: u64,
    pub switches: u32,
    pub ffmpeg_starts: u32,
    pub ffmpeg_pid: Option<u32>,
    pub last_error: Option<String>,
    pub first_segment_ms: Option<u64>,
}

impl Stream {
    pub fn new(
        role: Role,
        id: Option<String>,
        seg_dir: PathBuf,
        port: u16,
        node_id: &str,
    ) -> Arc<Stream> {
        Arc::new(Stream {
            state: Mutex::new(State {
                id,
                role,
                playlist: Playlist::default(),
                origin: (role == Role::Source).then(|| node_id.to_string()),
                hops: 0,
                upstream: Vec::new(),
                provider: None,
                last_error: None,
                advanced: None,
                first_segment_after: None,
            }),
            counters: Counters::default(),
            seg_dir,
            port,
            node_id: node_id.into(),
            started: Instant::now(),
        })
    }

    pub fn status(&self) -> Status {
        let s = self.state.lock().unwrap();
        let c = &self.counters;
        let pid = c.ffmpeg_pid.load(Ordering::Relaxed);
        Status {
            role: s.role,
            stream_id: s.id.clone(),
            node_id: self.node_id.clone(),
            origin: s.origin.clone(),
            hops: s.hops,
            upstream: s.upstream.clone(),
            provider: s.provider.clone(),
            segments: s.playlist.segments.iter().map(|g| g.seq).collect(),
            served_bytes: c.served_bytes.load(Ordering::Relaxed),
            served_segments: c.served_segments.load(Ordering::Relaxed),
            served_to: c.served_to.lock().unwrap().clone(),
            fetched_bytes: c.fetched_bytes.load(Ordering::Relaxed),
            fetched_segments: c.fetched_segments.load(Ordering::Relaxed),
            switches: c.switches.load(Ordering::Relaxed),
            ffmpeg_starts: c.ffmpeg_starts.load(Ordering::Relaxed),
            ffmpeg_pid: (pid != 0).then_some(pid),
            last_error: s.last_error.clone(),
            first_segment_ms: s.first_segment_after.map(|d| d.as_millis() as u64),
        }
    }

    pub fn served_to(&self, client: IpAddr, bytes: u64) {
        let mut m = self.counters.served_to.lock().unwrap();
        let n = m.len();
        if let Some(b) = m.get_mut(&client) {
            *b += bytes;
        } else if n < MAX_CLIENTS {
            m.insert(client, bytes);
        }
    }

    /// The service record for this node's stream, once it has one; `base` carries who we are.
    pub fn record(&self, mut base: Record) -> Option<Record> {
        let s = self.state.lock().unwrap();
        let id = s.id.clone()?;
        base.kind = "streaming".into();
        base.port = self.port;
        base.description = match s.role {
            Role::Source => format!("Live stream {id}"),
            Role::Peer => format!("Live stream {id} (relayed, {} hops)", s.hops),
        };
        let mut f = BTreeMap::new();
        f.insert("stream_id".to_string(), id.clone());
        f.insert("playlist".into(), playlist_path(&id));
        f.insert(
            "origin".into(),
            s.origin.clone().unwrap_or_else(|| self.node_id.clone()),
        );
        f.insert("hops".into(), s.hops.to_string());
        if !s.upstream.is_empty() {
            f.insert("upstream".into(), s.upstream.join(","));
        }
        base.fields = f;
        Some(base)
    }
}

/// The health check, from outside the stream's own tasks: the HTTP server answers our playlist
/// and that playlist keeps getting new segments. Blocking (run it off the async thread).
#[derive(Debug)]
pub struct Health {
    port: u16,
    last: Mutex<Option<(u64, Instant)>>,
}

impl Health {
    pub fn new(port: u16) -> Health {
        Health {
            port,
            last: Mutex::new(None),
        }
    }

    pub fn check(&self, id: &str) -> Result<(), String> {
        let body = http::get_blocking(
            SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), self.port),
            &playlist_path(id),
            playlist::MAX_PLAYLIST,
            Duration::from_secs(2),
        )?;
        let pl = Playlist::parse(&body).map_err(|e| e.to_string())?;
        let top = pl.last_seq().ok_or("no segments yet")?;
        let mut last = self.last.lock().unwrap();
        let now = Instant::now();
        match *last {
            Some((seq, at)) if seq == top => {
                if now.duration_since(at) > HEALTH_STALL {
                    return Err(format!(
                        "playlist stuck at segment {top} for {:?}",
                        now.duration_since(at)
                    ));
                }
            }
            _ => *last = Some((top, now)),
        }
        Ok(())
    }
}

/// The ffmpeg to run: `CLOUDY_FFMPEG` or Debian's.
pub fn ffmpeg() -> PathBuf {
    std::env::var_os("CLOUDY_FFMPEG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/ffmpeg"))
}

/// What starting a node's stream needs.
pub struct Options {
    pub sys: System,
    pub ffmpeg: PathBuf,
    pub node: String,
    pub node_id: String,
    pub config: Config,
    /// Where a peer finds providers.
    pub catalog: relay::Catalog,
    /// Run ffmpeg as this (uid, gid).
    pub user: Option<(u32, u32)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("streaming: listening on port {0}: {1}")]
    Listen(u16, std::io::Error),
}

/// A node's stream while it runs: the HTTP server and the ingest or relay task, stopped on drop
/// (and ffmpeg with them).
pub struct Running {
    pub stream: Arc<Stream>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds the port, then serves and ingests (a source) or relays (a peer). Call inside a tokio
/// runtime.
pub async fn start(o: Options) -> Result<Running, StartError> {
    let port = o.config.port();
    let listener =
        match tokio::net::TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, port)).await {
            Ok(l) => l,
            Err(_) => tokio::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port))
                .await
                .map_err(|e| StartError::Listen(port, e))?,
        };
    let dir = o.sys.path(STATE_DIR);
    let (stream, worker) = match o.config.input() {
        Some(input) => {
            let id = o.config.id.clone().unwrap_or_else(|| o.node.clone());
            let stream = Stream::new(Role::Source, Some(id), dir.join("source"), port, &o.node_id);
            let ingest = ingest::Ingest {
                ffmpeg: o.ffmpeg,
                input,
                stream: stream.clone(),
                user: o.user,
            };
            (stream, tokio::spawn(ingest.run()))
        }
        None => {
            let stream = Stream::new(Role::Peer, None, dir.join("relay"), port, &o.node_id);
            let relay = relay::Relay {
                stream: stream.clone(),
                sys: o.sys,
                want: o.config.id.clone(),
                prefer: o.config.provider.clone(),
                catalog: o.catalog,
            };
            (stream, tokio::spawn(relay.run()))
        }
    };
    let server = tokio::spawn(http::serve(listener, stream.clone()));
    Ok(Running {
        stream,
        tasks: vec![server, worker],
    })
}

/// The providers a separate stream process sees: the catalog file the agent rewrites every
/// few seconds (its records were checked when they entered the catalog).
pub fn catalog_file(sys: &System) -> relay::Catalog {
    let path = sys.path(crate::catalog::CATALOG_FILE);
    Arc::new(move || {
        let Ok(bytes) = std::fs::read(&path) else {
            return Vec::new();
        };
        if bytes.len() > 16 << 20 {
            return Vec::new();
        }
        serde_json::from_slice::<crate::catalog::Catalog>(&bytes)
            .map(|c| {
                c.entries
                    .into_iter()
                    .map(|e| e.record)
                    .filter(|r| r.kind == "streaming" && r.validate().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// `cloudy-agent stream`: the stream as a process of its own (what the agent supervises, as an
/// unprivileged user), until SIGTERM.
pub fn run_process(o: Options) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting tokio: {e}"))?;
    rt.block_on(async {
        let running = start(o).await.map_err(|e| e.to_string())?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|e| e.to_string())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        drop(running);
        Ok(())
    })
}

/// The agent's view of a stream process it supervises: health from outside (HTTP answers, the
/// playlist advances) and the record from the process's own status.
#[derive(Debug)]
pub struct Watch {
    pub port: u16,
    health: Health,
    last: Mutex<Option<Status>>,
}

impl Watch {
    pub fn new(port: u16) -> Watch {
        Watch {
            port,
            health: Health::new(port),
            last: Mutex::new(None),
        }
    }

    /// Blocking: two local HTTP requests.
    pub fn healthy(&self) -> Result<(), String> {
        let body = http::get_blocking(
            SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), self.port),
            "/stream/status",
            64 * 1024,
            Duration::from_secs(2),
        );
        let status: Option<Status> = body.ok().and_then(|b| serde_json::from_slice(&b).ok());
        *self.last.lock().unwrap() = status.clone();
        let status = status.ok_or("the stream process does not answer")?;
        let id = status.stream_id.ok_or_else(|| {
            status
                .last_error
                .unwrap_or_else(|| "no stream yet".to_string())
        })?;
        self.health.check(&id)
    }

    /// The record for what the last health check saw.
    pub fn record(&self, base: Record) -> Option<Record> {
        let st = self.last.lock().unwrap().clone()?;
        let s = Stream::new(
            st.role,
            st.stream_id.clone(),
            PathBuf::new(),
            self.port,
            &st.node_id,
        );
        {
            let mut x = s.state.lock().unwrap();
            x.origin = st.origin;
            x.hops = st.hops;
            x.upstream = st.upstream;
        }
        s.record(base)
    }

    pub fn status(&self) -> Option<Status> {
        self.last.lock().unwrap().clone()
    }
}

/// The provider named in `PROVIDER_FILE`, if any (and well-formed).
pub fn read_provider(sys: &System) -> Option<String> {
    let text = std::fs::read_to_string(sys.path(PROVIDER_FILE)).ok()?;
    let p = text.trim();
    check_provider(p).is_ok().then(|| p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_the_chain() {
        let s = Stream::new(
            Role::Peer,
            Some("film".into()),
            "/x".into(),
            8090,
            &"b".repeat(32),
        );
        {
            let mut st = s.state.lock().unwrap();
            st.origin = Some("a".repeat(32));
            st.hops = 2;
            st.upstream = vec!["cccccccc".into(), "aaaaaaaa".into()];
        }
        let base = crate::catalog::tests::record('b', "x", 1);
        let r = s.record(base).unwrap();
        r.validate().unwrap();
        assert_eq!(r.port, 8090);
        assert_eq!(r.fields["upstream"], "cccccccc,aaaaaaaa");
        assert_eq!(r.fields["playlist"], "/stream/film/index.m3u8");
        assert_eq!(r.fields["hops"], "2");
        let none = Stream::new(Role::Peer, None, "/x".into(), 8090, &"b".repeat(32));
        assert!(none
            .record(crate::catalog::tests::record('b', "x", 1))
            .is_none());
    }

    #[test]
    fn provider_file_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        assert_eq!(read_provider(&sys), None);
        sys.write_atomic(PROVIDER_FILE, b"n2\n", 0o644).unwrap();
        assert_eq!(read_provider(&sys).as_deref(), Some("n2"));
        sys.write_atomic(PROVIDER_FILE, b"../n2", 0o644).unwrap();
        assert_eq!(read_provider(&sys), None);
    }
}
