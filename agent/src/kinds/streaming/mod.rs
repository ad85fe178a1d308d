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

pub mod health;
pub mod http;
pub mod ingest;
pub mod playlist;
pub mod process;
pub mod relay;
pub mod service;
pub mod stream;

use std::sync::Arc;

use crate::os::system::System;
pub use cloudy_model::kinds::MAX_HOPS;
pub use cloudy_model::names::{check_provider, check_stream_id};
pub use cloudy_model::seed::streaming::{parse_input, Config, Input, DEFAULT_PORT};
pub use health::{Health, Watch};
pub use process::{catalog_file, ffmpeg, run_process, start, Options, Running, StartError};
pub use stream::{
    playlist_path, read_provider, short_id, Counters, Role, State, Status, Stream, Upstream,
    HEALTH_STALL, MAX_CLIENTS, PROVIDER_FILE, STATE_DIR, WINDOW,
};

/// The `streaming` service (a source or a peer, as the seed says).
pub fn build(name: &str, sys: &System) -> Option<Arc<dyn crate::services::Service>> {
    (name == service::NAME)
        .then(|| Arc::new(service::Streaming::new(sys)) as Arc<dyn crate::services::Service>)
}
