//! A node's stream while it runs: the HTTP server and the ingest (a source) or relay (a peer)
//! task, in-process or as `cloudy-agent stream`, the process the agent supervises.

use std::path::PathBuf;
use std::sync::Arc;

use super::stream::{Role, Stream, STATE_DIR};
use super::{http, ingest, relay};
use crate::os::system::System;
use cloudy_model::seed::streaming::Config;

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
