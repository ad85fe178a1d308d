//! A node's stream: what it serves (the playlist window, its place in the relay chain, who
//! fetched what), shared by the HTTP server, the ingest or relay task and the health check.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::playlist::Playlist;
use crate::catalog::Record;
use crate::os::system::System;
use cloudy_model::names::check_provider;

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
