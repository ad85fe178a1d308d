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
//! 2. **program**: what to run, as whom; the manager hands it to `supervise` (restarts with
//!    exponential backoff, `status` bookkeeping). A service written in Rust runs as a child
//!    `cloudy-agent <subcommand>` (`Env::agent_exe`) so it is supervised and unprivileged
//!    like any other.
//! 3. **healthy**: checked every second; only healthy services are published.
//! 4. **record**: what is published (Avahi files + Serf, see `publish`), with typed fields.
//! 5. **accept**: a community member (authenticated by the join port's handshake under the
//!    community key) asks to use this service; e.g. Syncthing adds the asker's device.
//! 6. **join**: the user side, run by `cloudy-agent join <kind> [provider]` on another node:
//!    set up this node to use `provider` (a record from the catalog), possibly asking the
//!    provider's agent (`Joining::ask`, which lands in the provider's `accept`), and leave a
//!    file in `JOINED_DIR` so the running agent starts the local side (`build`).
//!
//! Adding a kind: a module with a type implementing `Service`, a line in `build` (and in
//! `JOINABLE` if users can join it), the name in `seed::KNOWN_SERVICES` and its record fields in
//! `catalog::KNOWN_TYPES`.

pub mod join;
pub mod manager;
pub mod syncthing;
pub mod tahoe;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::catalog::Record;
use crate::members::{Member, Members};
use crate::seed::Publish;
use crate::supervise::Program;
use crate::system::System;

/// `cloudy-agent join` leaves one file per joined service here (`<service name>.json`, its
/// content the service's own); the running agent starts every service named here.
pub const JOINED_DIR: &str = "/var/lib/cloudy/joined";
/// What `cloudy-agent status` shows of each service; rewritten by the running agent.
pub const STATE_FILE: &str = "/run/cloudy/services.json";

/// Who we are, as every record of ours says it.
#[derive(Debug, Clone)]
pub struct Context {
    pub node: String,
    pub node_id: String,
    /// The node's address on its LAN.
    pub ip: IpAddr,
    /// The node's community VPN address, where community services listen.
    pub vpn: Ipv4Addr,
    pub microcloud: String,
}

impl Context {
    /// Stands in for the node when a seed is checked before the node exists.
    pub fn probe() -> Context {
        Context {
            node: "node".into(),
            node_id: "0".repeat(32),
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            vpn: Ipv4Addr::new(10, 99, 0, 1),
            microcloud: "community".into(),
        }
    }

    pub fn record(&self, kind: &str, port: u16, description: &str) -> Record {
        Record {
            kind: kind.into(),
            description: description.into(),
            node: self.node.clone(),
            node_id: self.node_id.clone(),
            host: format!("{}.local", self.node),
            ip: self.ip,
            port,
            microcloud: self.microcloud.clone(),
            fields: BTreeMap::new(),
        }
    }

    /// A record of a service that listens on the VPN address only.
    pub fn vpn_record(&self, kind: &str, port: u16, description: &str) -> Record {
        let mut r = self.record(kind, port, description);
        r.ip = IpAddr::V4(self.vpn);
        r
    }

    pub fn from_members(ms: &Members, microcloud: &str) -> Context {
        let me = ms.me();
        Context {
            node: me.name.clone(),
            node_id: me.id.clone(),
            ip: me.address,
            vpn: me.vpn,
            microcloud: microcloud.into(),
        }
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
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
    #[error("{service} does not take that request")]
    Unsupported { service: String },
    #[error("no {kind} provider in the catalog (is one published? see `cloudy-agent services --type {kind}`)")]
    NoProvider { kind: String },
}

pub fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServiceError {
    let what = what.into();
    move |source| ServiceError::Io { what, source }
}

/// Another member asks to use one of our services (over the join port, already authenticated
/// as a holder of the community key; `from` is its entry in our member list).
#[derive(Debug, Clone)]
pub struct JoinRequest {
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
    fn accept(&self, _req: &JoinRequest) -> Result<BTreeMap<String, String>, ServiceError> {
        Err(ServiceError::Unsupported {
            service: self.name().into(),
        })
    }

    /// Makes this node a user of `provider` (run by the CLI, not the daemon).
    fn join(&self, _j: &Joining, _provider: &Record) -> Result<Joined, ServiceError> {
        Err(ServiceError::Unsupported {
            service: self.name().into(),
        })
    }
}

/// What users can join: (the `join` argument, the record type of providers, the local
/// service that does the joining).
pub const JOINABLE: &[(&str, &str, &str)] = &[
    ("tahoe-lafs", "tahoe-introducer", "tahoe-client"),
    ("syncthing", "syncthing", "syncthing"),
    ("streaming", "streaming", "streaming"),
];

/// The service named `name` (from the seed's `enable` or a file in `JOINED_DIR`); None for a
/// name this agent does not know.
pub fn build(name: &str, sys: &System) -> Option<Arc<dyn Service>> {
    Some(match name {
        "tahoe-introducer" => Arc::new(tahoe::Tahoe::new(sys, tahoe::Role::Introducer)),
        "tahoe-storage" => Arc::new(tahoe::Tahoe::new(sys, tahoe::Role::Storage)),
        "tahoe-client" => Arc::new(tahoe::Tahoe::new(sys, tahoe::Role::Client)),
        "syncthing" => Arc::new(syncthing::Syncthing::new(sys)),
        "streaming" => Arc::new(crate::streaming::service::Streaming::new(sys)),
        _ => return None,
    })
}

/// The provider of `kind` this node uses when the user names none: the best one for this node
/// by the probe's scores (`select::choose`: highest score, reached, not this node). Before any
/// scan of that type: a provider on another node before one on this node, then the lowest node
/// id, so every node picks the same one.
pub fn choose_provider(
    kind: &str,
    catalog: &[Record],
    me: &str,
    scores: &crate::probe::Scores,
) -> Option<Record> {
    if let Some(best) = crate::select::choose(kind, catalog, scores, me) {
        return Some(best.record);
    }
    catalog
        .iter()
        .filter(|r| r.kind == kind)
        .min_by_key(|r| (r.node_id == me, r.node_id.clone(), r.port))
        .cloned()
}

/// A provider the user named: by node name, node id (or a prefix of 8+ digits), or IP.
pub fn find_provider(kind: &str, catalog: &[Record], name: &str) -> Option<Record> {
    catalog
        .iter()
        .filter(|r| r.kind == kind)
        .find(|r| {
            r.node == name
                || r.host == name
                || r.ip.to_string() == name
                || (name.len() >= 8 && r.node_id.starts_with(name))
        })
        .cloned()
}

/// Everything `Service::join` needs on the joining node.
pub struct Joining {
    pub sys: System,
    pub ctx: Context,
    pub members: Members,
    pub key: crate::join::JoinKey,
    /// Where the user wants shared data (e.g. Syncthing's folder); None: the service's default.
    pub folder: Option<PathBuf>,
}

impl Joining {
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
        let addr = SocketAddr::new(m.address, m.join_port);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err("starting tokio"))?;
        let req = crate::join::ServiceAsk {
            service: provider.kind.clone(),
            node_id: self.ctx.node_id.clone(),
            fields,
        };
        rt.block_on(crate::join::ask_service(addr, &self.key, &req))
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

/// Fills `{{name}}` placeholders; a placeholder left without a value is an error (a template
/// and its caller out of step), not an empty string in a config file.
pub fn render(template: &str, vars: &[(&str, &str)]) -> Result<String, ServiceError> {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    if let Some(i) = out.find("{{") {
        let name: String = out[i..].chars().take_while(|&c| c != '}').collect();
        return Err(ServiceError::Failed(format!(
            "template placeholder {name}}}}} has no value"
        )));
    }
    Ok(out)
}

/// Writes `path` only if its content differs; true if it did.
pub fn write_if_changed(
    path: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<bool, ServiceError> {
    if std::fs::read(path).ok().as_deref() == Some(content) {
        return Ok(false);
    }
    crate::system::write_atomic(path, content, mode)
        .map_err(io_err(format!("writing {}", path.display())))?;
    if let Some((u, g)) = owner {
        std::os::unix::fs::chown(path, Some(u), Some(g))
            .map_err(io_err(format!("chown {}", path.display())))?;
    }
    Ok(true)
}

/// A secret of `len` random bytes (hex) kept in `path` (0600, root's): made once, then reused.
pub fn credential(path: &Path, len: usize) -> Result<String, ServiceError> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim();
        if s.len() == len * 2 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(s.to_string());
        }
    }
    let mut bytes = Vec::new();
    while bytes.len() < len {
        bytes.extend_from_slice(&crate::identity::random_bytes::<16>());
    }
    let s = crate::identity::hex(&bytes[..len]);
    crate::system::write_atomic(path, format!("{s}\n").as_bytes(), 0o600)
        .map_err(io_err(format!("writing {}", path.display())))?;
    Ok(s)
}

/// Uid and gid of a user in an /etc/passwd text.
fn passwd_lookup(passwd: &str, user: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// The unprivileged system user a service runs as, created (with its own group) if missing.
/// Users live in the running system's /etc/passwd even under `--root`: the processes run on
/// this kernel.
pub fn ensure_user(user: &str, home: &Path) -> Result<(u32, u32), ServiceError> {
    let read = || std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    if let Some(ids) = passwd_lookup(&read(), user) {
        return Ok(ids);
    }
    let useradd = ["/usr/sbin/useradd", "/sbin/useradd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("useradd");
    let mut why = String::new();
    // Agents side by side (test nodes) may race for the passwd lock: try a few times, and look
    // again each time, since the other one may have made the user meanwhile.
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        let out = std::process::Command::new(useradd)
            .args(["--system", "--user-group", "--no-create-home", "--shell"])
            .arg("/usr/sbin/nologin")
            .arg("--home-dir")
            .arg(home)
            .arg(user)
            .output()
            .map_err(io_err(format!("running {useradd}")))?;
        if let Some(ids) = passwd_lookup(&read(), user) {
            if out.status.success() {
                tracing::info!("made system user {user} ({}:{})", ids.0, ids.1);
            }
            return Ok(ids);
        }
        why = String::from_utf8_lossy(&out.stderr).trim().to_string();
    }
    Err(ServiceError::Failed(format!("useradd {user}: {why}")))
}

/// Creates `dir` (and parents) owned by the service user, with `mode`.
pub fn own_dir(dir: &Path, ids: (u32, u32), mode: u32) -> Result<(), ServiceError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    std::os::unix::fs::chown(dir, Some(ids.0), Some(ids.1))
        .map_err(io_err(format!("chown {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", dir.display())))
}

/// True if something accepts TCP at `addr` within 300 ms.
pub fn port_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// True if `pid` names a live process (not a zombie).
pub fn alive(pid: u32) -> bool {
    pid > 0
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let state = s.rsplit(')').next()?.split_whitespace().next()?.to_string();
                Some(state != "Z" && state != "X")
            })
            .unwrap_or(false)
}

/// The executable of a service: an environment override (tests, unusual installs) or the
/// packaged path.
pub fn exe(env_var: &str, default: &str) -> PathBuf {
    std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// A service declared in the seed; healthy while something accepts TCP on its port.
pub struct Declared(pub Publish);

pub fn declared_record(p: &Publish, ctx: &Context) -> Record {
    let mut r = ctx.record(&p.kind, p.port, &p.description);
    r.fields = p.fields.clone();
    r
}

impl Service for Declared {
    fn name(&self) -> &str {
        &self.0.kind
    }

    fn record(&self, ctx: &Context) -> Option<Record> {
        Some(declared_record(&self.0, ctx))
    }

    fn healthy(&self) -> bool {
        port_open(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), self.0.port))
            || port_open(SocketAddr::new(
                std::net::Ipv6Addr::LOCALHOST.into(),
                self.0.port,
            ))
    }
}

/// The community VPN itself: healthy while our tincd runs.
pub struct TincVpn {
    pub port: u16,
    /// Our VPN address may move (a collision): read it when the record is made.
    pub members: Arc<Mutex<Members>>,
    pub pidfile: PathBuf,
}

impl Service for TincVpn {
    fn name(&self) -> &str {
        "tincvpn"
    }

    fn record(&self, ctx: &Context) -> Option<Record> {
        let mut r = ctx.record("tincvpn", self.port, "Community VPN (tinc)");
        let vpn = self.members.lock().unwrap().me().vpn;
        r.fields.insert("vpn".into(), vpn.to_string());
        Some(r)
    }

    fn healthy(&self) -> bool {
        std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
    }
}

/// Records of the healthy ones, each valid (an invalid one is logged and left out).
pub fn healthy_records(services: &[Arc<dyn Service>], ctx: &Context) -> Vec<Record> {
    services
        .iter()
        .filter(|s| s.healthy())
        .filter_map(|s| s.record(ctx))
        .filter(|r| match r.validate() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("not publishing {} port {}: {e}", r.kind, r.port);
                false
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_service_is_healthy_while_its_port_listens() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let s: Vec<Arc<dyn Service>> = vec![Arc::new(Declared(Publish {
            kind: "web".into(),
            port,
            description: "<i>hi</i>".into(),
            fields: BTreeMap::new(),
        }))];
        let ctx = Context::probe();
        let rs = healthy_records(&s, &ctx);
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].description, "<i>hi</i>");
        drop(l);
        assert!(
            healthy_records(&s, &ctx).is_empty(),
            "withdrawn once closed"
        );
    }

    #[test]
    fn templates_fill_every_placeholder_or_fail() {
        assert_eq!(
            render("a={{a}} b={{b}} a={{a}}", &[("a", "1"), ("b", "2")]).unwrap(),
            "a=1 b=2 a=1"
        );
        let e = render("x={{missing}}", &[("a", "1")]).unwrap_err();
        assert!(e.to_string().contains("{{missing}}"), "{e}");
    }

    #[test]
    fn credentials_are_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s/api-key");
        let a = credential(&p, 16).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(credential(&p, 16).unwrap(), a, "reused");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let other = credential(&d.path().join("t"), 16).unwrap();
        assert_ne!(a, other, "random, not a default");
    }

    #[test]
    fn passwd_lines_give_ids() {
        let p = "root:x:0:0:root:/root:/bin/bash\ncloudy-tahoe:x:998:997::/var/lib/cloudy:/usr/sbin/nologin\n";
        assert_eq!(passwd_lookup(p, "cloudy-tahoe"), Some((998, 997)));
        assert_eq!(passwd_lookup(p, "cloudy"), None);
    }

    #[test]
    fn provider_choice_prefers_others_then_lowest_id() {
        let mut ctx = Context::probe();
        let mk = |c: char, ctx: &mut Context| {
            ctx.node_id = c.to_string().repeat(32);
            ctx.node = format!("n{c}");
            ctx.record("syncthing", 22000, "")
        };
        let cat = vec![mk('c', &mut ctx), mk('a', &mut ctx), mk('b', &mut ctx)];
        let me = "a".repeat(32);
        let none = crate::probe::Scores::default();
        assert_eq!(
            choose_provider("syncthing", &cat, &me, &none).unwrap().node,
            "nb"
        );
        assert_eq!(
            choose_provider("syncthing", &cat[1..2], &me, &none)
                .unwrap()
                .node,
            "na",
            "ourselves if nobody else"
        );
        assert!(choose_provider("tahoe-introducer", &cat, &me, &none).is_none());
        // Once probed, the best score wins over the lowest id.
        let mut scored = crate::probe::Scores::default();
        let probe = |r: &Record, score: u8| crate::probe::Probe {
            record: r.clone(),
            at: 1,
            reachable: true,
            rtt_ms: Some(1.0),
            connected: 5,
            samples: 5,
            check: crate::probe::Check::default(),
            availability: 1.0,
            history: 1,
            score,
        };
        scored.merge(None, vec![probe(&cat[0], 90), probe(&cat[2], 40)], 1);
        assert_eq!(
            choose_provider("syncthing", &cat, &me, &scored)
                .unwrap()
                .node,
            "nc"
        );
        assert_eq!(find_provider("syncthing", &cat, "nc").unwrap().node, "nc");
        assert_eq!(
            find_provider("syncthing", &cat, "bbbbbbbb").unwrap().node,
            "nb"
        );
    }

    /// The seed's `[services] enable` and `build` agree: every name a seed may enable (and
    /// every local side of a join) is a service of that name.
    #[test]
    fn every_service_a_seed_may_enable_is_built() {
        let d = tempfile::tempdir().unwrap();
        let seed = d.path().join("cloudy.toml");
        let names: Vec<String> = crate::seed::KNOWN_SERVICES
            .iter()
            .map(|n| format!("{n:?}"))
            .collect();
        std::fs::write(
            &seed,
            format!("version = 1\n[services]\nenable = [{}]\n", names.join(", ")),
        )
        .unwrap();
        let enabled = crate::seed::read_file(&seed)
            .unwrap()
            .services
            .unwrap()
            .enable;
        assert_eq!(enabled.len(), crate::seed::KNOWN_SERVICES.len());
        let sys = System::new(d.path());
        for n in enabled
            .iter()
            .map(String::as_str)
            .chain(JOINABLE.iter().map(|j| j.2))
        {
            let svc = build(n, &sys).unwrap_or_else(|| panic!("{n} is not built"));
            assert_eq!(svc.name(), n);
        }
        assert!(build("ftp", &sys).is_none());
    }
}
