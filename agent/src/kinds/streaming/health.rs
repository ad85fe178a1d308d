//! The stream's health, from outside its own tasks: the HTTP server answers our playlist and
//! that playlist keeps getting new segments; and the agent's view of a stream process it
//! supervises.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::http;
use super::playlist::{self, Playlist};
use super::stream::{playlist_path, Status, Stream, HEALTH_STALL};
use crate::catalog::Record;

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
