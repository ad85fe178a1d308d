//! Debian's real `serf` agent, for community-wide membership beyond the LAN: one child process,
//! its gossip encrypted with a key derived from the community key (a node without the key
//! cannot join or read it), joined through known members and the seed's bootstrap hosts.
//!
//! Serf tags carry only pointers, never the records: `id` (node id), `s` (a hash of the node's
//! published records) and `j` (its exchange port). When a member's `s` changes, the agent fetches
//! its records over the exchange port with the community-key handshake (`exchange::fetch_services`),
//! so records have no 512-byte limit and come only from key holders.
//!
//! We talk to serf over its msgpack RPC on loopback (auth token derived from the key), from
//! one plain thread: nothing here is on the async runtime's hot path.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::os::system::System;

pub const SERF_PORT: u16 = 7946;
pub const RPC_ADDR: &str = "127.0.0.1:7373";
pub const CONFIG_FILE: &str = "/var/lib/cloudy/serf/serf.json";
/// How often members are read from serf: bounds how late a change is noticed.
pub const POLL: Duration = Duration::from_millis(500);
/// While alone, try to join this often; once in a cluster, look for missing members less often.
const JOIN_ALONE: Duration = Duration::from_secs(2);
const JOIN_MISSING: Duration = Duration::from_secs(10);
/// Addresses per join attempt: Serf's gossip brings the rest once one answers.
const JOIN_AT_ONCE: usize = 4;
const MAX_MEMBERS: usize = crate::mesh::members::MAX_MEMBERS;
/// Before restarting a serf that ran: doubles up to the maximum, back to the minimum once its
/// RPC answers.
const RESTART_MIN: Duration = Duration::from_millis(200);
const RESTART_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SerfError {
    #[error("serf RPC: {0}")]
    Io(#[from] std::io::Error),
    #[error("serf RPC: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("serf RPC: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("serf RPC refused {command}: {error}")]
    Refused { command: String, error: String },
    #[error("serf RPC: {0} members (at most {MAX_MEMBERS})")]
    TooMany(usize),
}

/// What the agent wants serf to be; the thread reconciles serf to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub node_name: String,
    /// Our primary address; serf waits until there is one.
    pub address: Option<IpAddr>,
    pub tags: BTreeMap<String, String>,
    /// Serf addresses of every community member we know (and literal bootstrap peers): the
    /// ones Serf does not list as alive are joined, which also heals a split cluster.
    pub join: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SerfMember {
    pub name: String,
    pub addr: IpAddr,
    pub status: String,
    pub tags: BTreeMap<String, String>,
}

pub struct Serf {
    pub exe: PathBuf,
    pub sys: System,
    /// The community's key ring: a serf (re)started after a rekey gossips under the key in
    /// use then, not the one the agent started with.
    pub key: crate::mesh::exchange::CommunityKey,
    pub rpc_auth: String,
    pub desired: Arc<Mutex<Desired>>,
}

impl Serf {
    /// Runs serf and reports its member list after every poll, until the receiver goes.
    pub fn start(self) -> std::io::Result<mpsc::UnboundedReceiver<Vec<SerfMember>>> {
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("serf".into())
            .spawn(move || self.run(tx))?;
        Ok(rx)
    }

    fn config(&self, d: &Desired, addr: IpAddr) -> serde_json::Value {
        serde_json::json!({
            "node_name": d.node_name,
            "bind": SocketAddr::new(addr, SERF_PORT).to_string(),
            "advertise": SocketAddr::new(addr, SERF_PORT).to_string(),
            "rpc_addr": RPC_ADDR,
            "rpc_auth": self.rpc_auth,
            "encrypt_key": self.key.serf_key(),
            "tags": d.tags,
            "log_level": "warn",
            "profile": "lan",
            "leave_on_terminate": true,
        })
    }

    fn spawn(&self, d: &Desired, addr: IpAddr) -> std::io::Result<Child> {
        // The key stays out of the command line (readable by every local user): 0600 file.
        let text = serde_json::to_vec_pretty(&self.config(d, addr)).expect("json");
        self.sys.write_atomic(CONFIG_FILE, &text, 0o600)?;
        let mut c = Command::new(&self.exe);
        c.arg("agent")
            .arg(format!(
                "-config-file={}",
                self.sys.path(CONFIG_FILE).display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let parent = nix::unistd::getpid();
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl, getppid and _exit are async-signal-safe and touch only the child.
        // nix does not wrap _exit(2): libc's, through nix's re-export.
        unsafe {
            c.pre_exec(move || {
                // Dies with the agent (this thread lives as long as the agent does).
                let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
                if nix::unistd::getppid() != parent {
                    nix::libc::_exit(1);
                }
                Ok(())
            });
        }
        c.spawn()
    }

    fn run(self, tx: mpsc::UnboundedSender<Vec<SerfMember>>) {
        let mut serf = Running::default();
        let mut joiner = Joiner::default();
        while !tx.is_closed() {
            let d = self.desired.lock().unwrap().clone();
            let Some(addr) = d.address else {
                std::thread::sleep(POLL);
                continue;
            };
            if let Err(e) = self.keep_running(&mut serf, &d, addr) {
                tracing::warn!("cannot start serf ({}): {e}", self.exe.display());
                std::thread::sleep(Duration::from_secs(5));
                continue;
            }
            if !serf.connect(&self.rpc_auth) {
                // Serf takes a moment to open its RPC port.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            match serf.poll(&d.tags) {
                Ok(ms) => {
                    joiner.join_missing(&self.rpc_auth, &d.join, &ms);
                    let _ = tx.send(ms);
                }
                Err(e) => {
                    tracing::debug!("{e}");
                    serf.rpc = None;
                }
            }
            std::thread::sleep(POLL);
        }
        if let Some((mut c, _)) = serf.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts serf when it died or `d` needs a new one (a new address or name; tags change
    /// over RPC), waiting out the backoff after a serf that ran.
    fn keep_running(&self, serf: &mut Running, d: &Desired, addr: IpAddr) -> std::io::Result<()> {
        let restart = match &mut serf.child {
            Some((c, was)) => {
                let exited = match c.try_wait() {
                    Ok(None) => false,
                    Ok(Some(status)) => {
                        // Said once per restart: a serf that keeps dying (its port held by
                        // another Serf, a bad key) must show in the journal.
                        tracing::warn!(
                            "serf (pid {}) exited ({status}); starting it again in {:?}",
                            c.id(),
                            serf.backoff
                        );
                        true
                    }
                    Err(_) => true,
                };
                exited || was.address != d.address || was.node_name != d.node_name
            }
            None => true,
        };
        if !restart {
            return Ok(());
        }
        if let Some((mut c, _)) = serf.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            std::thread::sleep(serf.backoff);
            serf.backoff = (serf.backoff * 2).min(RESTART_MAX);
        }
        serf.rpc = None;
        let c = self.spawn(d, addr)?;
        tracing::info!("serf started (pid {}) on {addr}:{SERF_PORT}", c.id());
        serf.sent_tags = d.tags.clone();
        serf.child = Some((c, d.clone()));
        Ok(())
    }
}

/// The serf child and our RPC connection to it.
struct Running {
    /// With the desired state it was started for.
    child: Option<(Child, Desired)>,
    rpc: Option<Rpc>,
    /// The tags serf has: given at start, then set over RPC.
    sent_tags: BTreeMap<String, String>,
    backoff: Duration,
}

impl Default for Running {
    fn default() -> Self {
        Running {
            child: None,
            rpc: None,
            sent_tags: BTreeMap::new(),
            backoff: RESTART_MIN,
        }
    }
}

impl Running {
    /// True once connected to serf's RPC.
    fn connect(&mut self, auth: &str) -> bool {
        if self.rpc.is_none() {
            match Rpc::connect(auth) {
                Ok(r) => {
                    self.rpc = Some(r);
                    self.backoff = RESTART_MIN;
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// Gives serf `tags` if it has others, and reads its members; over a connected RPC.
    fn poll(&mut self, tags: &BTreeMap<String, String>) -> Result<Vec<SerfMember>, SerfError> {
        let r = self.rpc.as_mut().expect("connected");
        if &self.sent_tags != tags {
            r.set_tags(tags)?;
            self.sent_tags = tags.clone();
        }
        r.members()
    }
}

/// Joins the known members Serf does not show as alive, a few at a time, one join at a time.
struct Joiner {
    last: Instant,
    busy: Arc<AtomicBool>,
    /// Where the next batch starts in the missing list, so every member gets its turn.
    rotate: usize,
}

impl Default for Joiner {
    fn default() -> Self {
        Joiner {
            last: Instant::now() - JOIN_MISSING,
            busy: Arc::new(AtomicBool::new(false)),
            rotate: 0,
        }
    }
}

impl Joiner {
    fn join_missing(&mut self, auth: &str, join: &[SocketAddr], ms: &[SerfMember]) {
        let alive: Vec<IpAddr> = ms
            .iter()
            .filter(|m| m.status == "alive")
            .map(|m| m.addr)
            .collect();
        // Joining only while alone could leave two nodes that found each other first in a
        // cluster of their own: any known member Serf does not show is joined.
        let missing: Vec<SocketAddr> = join
            .iter()
            .filter(|a| !alive.contains(&a.ip()))
            .copied()
            .collect();
        let every = if alive.len() <= 1 {
            JOIN_ALONE
        } else {
            JOIN_MISSING
        };
        if missing.is_empty() || self.last.elapsed() < every || self.busy.swap(true, SeqCst) {
            return;
        }
        self.last = Instant::now();
        self.rotate = self.rotate.wrapping_add(JOIN_AT_ONCE);
        let targets: Vec<SocketAddr> = (0..JOIN_AT_ONCE.min(missing.len()))
            .map(|i| missing[(self.rotate + i) % missing.len()])
            .collect();
        // A join waits on unreachable peers: its own connection and thread.
        let (auth, done) = (auth.to_string(), self.busy.clone());
        std::thread::spawn(move || {
            match Rpc::connect(&auth).and_then(|mut r| r.join(&targets)) {
                Ok(n) => tracing::info!("serf joined {n} of {} peers", targets.len()),
                Err(e) => tracing::debug!("serf join: {e}"),
            }
            done.store(false, SeqCst);
        });
    }
}

#[derive(Serialize)]
struct Header<'a> {
    #[serde(rename = "Command")]
    command: &'a str,
    #[serde(rename = "Seq")]
    seq: u64,
}

#[derive(Deserialize)]
struct Response {
    #[serde(rename = "Seq")]
    seq: u64,
    #[serde(rename = "Error")]
    error: String,
}

/// Serf encodes an address as 4 or 16 raw bytes (msgpack bin).
struct Addr(IpAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Addr;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("4 or 16 address bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<Addr, E> {
                let ip = match b.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(b).expect("4")),
                    16 => {
                        let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16"));
                        v6.to_ipv4_mapped()
                            .map(IpAddr::V4)
                            .unwrap_or(IpAddr::V6(v6))
                    }
                    _ => return Err(E::custom("address of odd length")),
                };
                Ok(Addr(ip))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[derive(Deserialize)]
struct WireMember {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Addr")]
    addr: Addr,
    #[serde(rename = "Tags", default)]
    tags: BTreeMap<String, String>,
    #[serde(rename = "Status")]
    status: String,
}

#[derive(Deserialize)]
struct Members {
    #[serde(rename = "Members")]
    members: Vec<WireMember>,
}

/// Installs `key` (base64) in Serf's keyring across the cluster and makes it the one Serf
/// encrypts with (`serf keys -install`, `-use`): after a rekey.
pub fn use_key(auth: &str, key: &str) -> Result<(), SerfError> {
    let mut r = Rpc::connect(auth)?;
    r.key_op("install-key", key)?;
    r.key_op("use-key", key)
}

/// Removes an old gossip key from Serf's keyring across the cluster, once the overlap is over.
pub fn remove_key(auth: &str, key: &str) -> Result<(), SerfError> {
    Rpc::connect(auth)?.key_op("remove-key", key)
}

struct Rpc {
    s: TcpStream,
    seq: u64,
}

impl Rpc {
    fn connect(auth: &str) -> Result<Rpc, SerfError> {
        let s =
            TcpStream::connect_timeout(&RPC_ADDR.parse().expect("addr"), Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_nodelay(true)?;
        let mut r = Rpc { s, seq: 0 };
        #[derive(Serialize)]
        struct Hs {
            #[serde(rename = "Version")]
            version: u32,
        }
        r.call("handshake", Some(&Hs { version: 1 }))?;
        #[derive(Serialize)]
        struct Auth<'a> {
            #[serde(rename = "AuthKey")]
            key: &'a str,
        }
        r.call("auth", Some(&Auth { key: auth }))?;
        Ok(r)
    }

    fn call<B: Serialize>(&mut self, command: &str, body: Option<&B>) -> Result<(), SerfError> {
        self.seq += 1;
        let mut buf = rmp_serde::to_vec_named(&Header {
            command,
            seq: self.seq,
        })?;
        if let Some(b) = body {
            buf.extend(rmp_serde::to_vec_named(b)?);
        }
        self.s.write_all(&buf)?;
        let h: Response = rmp_serde::from_read(&mut self.s)?;
        if h.seq != self.seq || !h.error.is_empty() {
            return Err(SerfError::Refused {
                command: command.into(),
                error: if h.error.is_empty() {
                    format!("answer {} to request {}", h.seq, self.seq)
                } else {
                    h.error
                },
            });
        }
        Ok(())
    }

    /// A keyring request; its answer's body (per-node messages and counts) is read and left.
    fn key_op(&mut self, command: &str, key: &str) -> Result<(), SerfError> {
        #[derive(Serialize)]
        struct Key<'a> {
            #[serde(rename = "Key")]
            key: &'a str,
        }
        self.call(command, Some(&Key { key }))?;
        let _: serde::de::IgnoredAny = rmp_serde::from_read(&mut self.s)?;
        Ok(())
    }

    fn members(&mut self) -> Result<Vec<SerfMember>, SerfError> {
        self.call::<()>("members", None)?;
        let m: Members = rmp_serde::from_read(&mut self.s)?;
        if m.members.len() > MAX_MEMBERS * 2 {
            return Err(SerfError::TooMany(m.members.len()));
        }
        Ok(m.members
            .into_iter()
            .map(|w| SerfMember {
                name: w.name,
                addr: w.addr.0,
                status: w.status,
                tags: w.tags,
            })
            .collect())
    }

    fn set_tags(&mut self, tags: &BTreeMap<String, String>) -> Result<(), SerfError> {
        #[derive(Serialize)]
        struct Tags<'a> {
            #[serde(rename = "Tags")]
            tags: &'a BTreeMap<String, String>,
            #[serde(rename = "DeleteTags")]
            delete: Vec<String>,
        }
        self.call(
            "tags",
            Some(&Tags {
                tags,
                delete: vec![],
            }),
        )
    }

    fn join(&mut self, to: &[SocketAddr]) -> Result<u32, SerfError> {
        #[derive(Serialize)]
        struct Join {
            #[serde(rename = "Existing")]
            existing: Vec<String>,
            #[serde(rename = "Replay")]
            replay: bool,
        }
        self.call(
            "join",
            Some(&Join {
                existing: to.iter().map(|a| a.to_string()).collect(),
                replay: false,
            }),
        )?;
        #[derive(Deserialize)]
        struct Num {
            #[serde(rename = "Num")]
            num: u32,
        }
        let n: Num = rmp_serde::from_read(&mut self.s)?;
        Ok(n.num)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_addresses_decode_from_serf_bytes() {
        #[derive(Serialize)]
        struct W<'a> {
            #[serde(rename = "Name")]
            name: &'a str,
            #[serde(rename = "Addr", with = "bytes")]
            addr: Vec<u8>,
            #[serde(rename = "Status")]
            status: &'a str,
            #[serde(rename = "Port")]
            port: u16,
        }
        mod bytes {
            pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(b)
            }
        }
        let mut v4mapped = vec![0u8; 10];
        v4mapped.extend([0xff, 0xff, 10, 213, 0, 7]);
        let enc = rmp_serde::to_vec_named(&W {
            name: "n7",
            addr: v4mapped,
            status: "alive",
            port: 7946,
        })
        .unwrap();
        let m: WireMember = rmp_serde::from_slice(&enc).unwrap();
        assert_eq!(m.addr.0.to_string(), "10.213.0.7");
        assert!(m.tags.is_empty());
    }
}
