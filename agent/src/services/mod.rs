//! This node's services: the one `Service` trait every kind implements, the built-in and
//! declared ones, and the helpers wrappers share (users, credentials, templates).
//!
//! A service goes through these steps, all driven by `manager` (started by `cloudy-agent run`
//! once the mesh is up) and all idempotent:
//!
//! 1. **configure** from the seed and what the node knows (its VPN address, the catalog):
//!    render config files from templates, generate credentials (never a default password;
//!    kept 0600 under `/var/lib/cloudy/<service>/`), make its unprivileged user. Called again
//!    every tick; says `Changed` when the running program must restart to see new inputs
//!    (e.g. a Tahoe storage node's introducer moved), `Waiting` when it cannot run yet.
//! 2. **program**: what to run, as whom; the manager hands it to `os::supervisor` (restarts with
//!    exponential backoff, `status` bookkeeping). A service written in Rust runs as a child
//!    `cloudy-agent <subcommand>` (`Env::agent_exe`) so it is supervised and unprivileged
//!    like any other.
//! 3. **healthy**: checked every second; only healthy services are published.
//! 4. **record**: what is published (Avahi files + Serf, see `publish`), with typed fields.
//! 5. **accept**: a community member (authenticated by the exchange port's handshake under the
//!    community key) asks to use this service; e.g. Syncthing adds the asker's device.
//! 6. **join**: the user side, run by `cloudy-agent join <kind> [provider]` on another node:
//!    set up this node to use `provider` (a record from the catalog), possibly asking the
//!    provider's agent (`Using::ask`, which lands in the provider's `accept`), and leave a
//!    file in `JOINED_DIR` so the running agent starts the local side (`build`).
//!
//! The kinds themselves live in `crate::kinds`, one folder each; `crate::registry` builds
//! and runs them.

pub mod builtin;

use std::collections::BTreeMap;
use std::net::SocketAddr;
#[cfg(test)]
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use crate::catalog::Record;
use crate::mesh::members::{Member, Members};
use crate::os::supervisor::Program;
use crate::os::system::System;

/// `cloudy-agent join` leaves one file per joined service here (`<service name>.json`, its
/// content the service's own); the running agent starts every service named here.
pub const JOINED_DIR: &str = "/var/lib/cloudy/joined";
/// What `cloudy-agent status` shows of each service; rewritten by the running agent.
pub const STATE_FILE: &str = "/run/cloudy/services.json";

/// Who we are, as every record of ours says it.
pub use cloudy_model::record::Origin as Context;

/// Helpers every kind uses for its files, users and processes.
pub use crate::os::files::{
    alive, credential, ensure_user, exe, own_dir, port_open, read_file, read_string, remove_file,
    render, render_xml, write_file, write_if_changed, SafeDir,
};

/// A node's identity for tests of a record (a documentation address, not a real one).
#[cfg(test)]
pub(crate) fn test_context() -> Context {
    Context {
        node: "node".into(),
        node_id: "0".repeat(32),
        ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        vpn: Ipv4Addr::new(10, 99, 0, 1),
        microcloud: "community".into(),
    }
}

/// What `configure` and `program` see.
#[derive(Debug, Clone)]
pub struct Env {
    pub sys: System,
    pub ctx: Context,
    /// Every record the node knows (its own and other nodes'), from the live catalog.
    pub catalog: Vec<Record>,
    /// This agent's executable, for services that run a `cloudy-agent` subcommand.
    pub agent_exe: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Configured {
    /// Files are as they were: nothing to do.
    Unchanged,
    /// Files changed: the program (if running) must restart to read them.
    Changed,
    /// Cannot run yet (the reason is shown in `status`); configure is tried again next tick.
    Waiting(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    File(#[from] crate::os::files::FileError),
    #[error("{service} does not take that request")]
    Unsupported { service: String },
}

/// An I/O error with what was being done, as the file helpers report theirs.
pub fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServiceError {
    let to_file = crate::os::files::io_err(what);
    move |source| ServiceError::File(to_file(source))
}

/// Another member asks to use one of our services (over the exchange port, already authenticated
/// as a holder of the community key; `from` is its entry in our member list).
#[derive(Debug, Clone)]
pub struct UseRequest {
    pub from: Member,
    pub fields: BTreeMap<String, String>,
}

/// What `cloudy-agent join` did, for the user.
#[derive(Debug, Clone, Default)]
pub struct Joined {
    /// Lines telling the user how to use what was joined.
    pub usage: Vec<String>,
    /// The local service the running agent starts for it, if any (waited for by the CLI).
    pub local_service: Option<String>,
}

/// One service on this node. Every method may block briefly (file writes, a connect): the
/// manager calls them off the async thread.
pub trait Service: Send + Sync {
    /// Its name in the seed's `[services] enable` and in `status` (e.g. `tahoe-storage`).
    fn name(&self) -> &str;

    /// Brings config files, credentials and the service user in line with `env`. See the
    /// module docs; the default has nothing to configure.
    fn configure(&self, _env: &Env) -> Result<Configured, ServiceError> {
        Ok(Configured::Unchanged)
    }

    /// The process the agent runs for this service, once configured. None: the agent runs
    /// nothing (a service run by someone else, only published).
    fn program(&self, _env: &Env) -> Option<Program> {
        None
    }

    /// True while the service works (its process answers on its port, ...).
    fn healthy(&self) -> bool;

    /// The record published while healthy; None for services nobody else uses (a client).
    fn record(&self, ctx: &Context) -> Option<Record>;

    /// A member asks to use this service; the answer's fields go back to it.
    fn accept(&self, _req: &UseRequest) -> Result<BTreeMap<String, String>, ServiceError> {
        Err(ServiceError::Unsupported {
            service: self.name().into(),
        })
    }

    /// Makes this node a user of `provider` (run by the CLI, not the daemon).
    fn use_provider(&self, _u: &Using, _provider: &Record) -> Result<Joined, ServiceError> {
        Err(ServiceError::Unsupported {
            service: self.name().into(),
        })
    }
}

/// Everything `Service::join` needs on the joining node.
pub struct Using {
    pub sys: System,
    pub ctx: Context,
    pub members: Members,
    pub key: crate::mesh::exchange::CommunityKey,
    /// Signs our requests to providers (see `exchange::ask_service`).
    pub node_key: crate::os::identity::NodeKey,
    /// Where the user wants shared data (e.g. Syncthing's folder); None: the service's default.
    pub folder: Option<PathBuf>,
}

impl Using {
    /// Asks the agent of `provider`'s node to let us use it (lands in its `accept`).
    pub fn ask(
        &self,
        provider: &Record,
        fields: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, ServiceError> {
        let m = self.members.members.get(&provider.node_id).ok_or_else(|| {
            ServiceError::Failed(format!(
                "{} is not in our member list yet; try again in a few seconds",
                provider.node
            ))
        })?;
        let addr = SocketAddr::new(m.address, m.exchange_port);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err("starting tokio"))?;
        let req = crate::mesh::exchange::ServiceAsk {
            service: provider.kind.clone(),
            node_id: self.ctx.node_id.clone(),
            fields,
        };
        rt.block_on(crate::mesh::exchange::ask_service(
            addr,
            &self.key,
            &self.node_key,
            m,
            &req,
        ))
        .map_err(|e| ServiceError::Failed(format!("asking {} ({addr}): {e}", provider.node)))
    }

    /// Records that `service` is joined, with its own content; the running agent starts it.
    pub fn mark_joined(
        &self,
        service: &str,
        content: &serde_json::Value,
    ) -> Result<(), ServiceError> {
        let path = format!("{JOINED_DIR}/{service}.json");
        self.sys
            .write_atomic(
                &path,
                &serde_json::to_vec_pretty(content).expect("json serialises"),
                0o644,
            )
            .map_err(io_err(format!("writing {path}")))
    }
}

/// Names of the services `cloudy-agent join` left for the agent to run.
pub fn joined(sys: &System) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(sys.path(JOINED_DIR))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".json")
                        .map(str::to_string)
                })
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn read_joined(sys: &System, service: &str) -> Option<serde_json::Value> {
    let text = std::fs::read(sys.path(&format!("{JOINED_DIR}/{service}.json"))).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The state directory of a service, `/var/lib/cloudy/<service>` under the system's root.
pub fn state_dir(sys: &System, service: &str) -> PathBuf {
    sys.state_dir().join(service)
}
