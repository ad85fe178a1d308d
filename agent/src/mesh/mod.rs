//! The community mesh: the member list, its exchange protocol under the community key, tinc,
//! finding members on the LAN (mDNS) and community-wide (Serf), and the gossip that keeps the
//! list and tinc's files current. Imports `os` and the model.

pub mod candidates;
pub mod exchange;
pub mod gossip;
pub mod invite;
pub mod lan;
pub mod members;
pub mod pending;
pub mod rekey;
pub mod serf;
pub mod tinc;

use anyhow::{Context as _, Result};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Notify};

use crate::os::identity::NodeKey;
use crate::os::network::Primary;
use crate::os::supervisor::{self, Control};
use crate::os::system::System;
use cloudy_model::seed::Seed;
use exchange::CommunityKey;
use members::{vpn_candidate, Member, Members, MEMBERS_FILE};

/// This node's place in the mesh, shared by every task that keeps it.
pub struct Mesh {
    pub sys: System,
    pub key: CommunityKey,
    /// Our own signing key: our record, our requests and our answers carry its signature.
    pub node_key: NodeKey,
    pub members: Arc<Mutex<Members>>,
    /// Something changed: rerender tinc config and save the list.
    pub changed: Notify,
    /// Gossip should run a round now instead of sleeping.
    pub wake: Notify,
    pub tincd: mpsc::UnboundedSender<Control>,
    pub tincd_status: supervisor::Shared,
    /// Exchange services seen on the LAN (or through Serf), not yet answered: bounded, and
    /// what does not answer ages out (anyone on the LAN can announce them).
    pub lan: Mutex<candidates::Candidates>,
    /// Our mDNS publication, redone when our address changes.
    pub mdns: Mutex<Option<lan::Lan>>,
    pub paths: tinc::Paths,
    pub settings: tinc::Settings,
    pub subnet: (Ipv4Addr, u8),
    /// Why our VPN address is not settled (the subnet is full), if it is not: for the ready
    /// line, and in `MESH_ERROR_FILE` for `cloudy-agent status`.
    pub vpn_error: Mutex<Option<String>>,
}

/// The mesh's standing problem, while it lasts (`cloudy-agent status` prints it).
pub const MESH_ERROR_FILE: &str = "/run/cloudy/mesh-error";

/// What the mesh starts from.
pub struct Start<'a> {
    pub seed: &'a Seed,
    pub community: &'a str,
    pub key: &'a str,
    pub node_id: &'a str,
    pub name: &'a str,
    pub primary: Option<&'a Primary>,
    pub tincd: PathBuf,
    pub agent_exe: PathBuf,
    /// Start tincd under the supervisor (not for `run --once`).
    pub run_tincd: bool,
}

impl Mesh {
    /// Keys (made once), our member record, the member list as stored, tinc's files; tincd
    /// supervised.
    pub async fn start(sys: &System, s: Start<'_>) -> Result<Arc<Mesh>> {
        let paths = tinc::Paths::new(sys, s.seed.netname());
        let (pk_paths, tincd) = (paths.clone(), s.tincd.clone());
        let pubkey =
            tokio::task::spawn_blocking(move || tinc::ensure_keys(&pk_paths, &tincd)).await??;
        let subnet = s.seed.vpn_subnet();
        let node_key = NodeKey::ensure(sys).context("the node signing key")?;
        let (members, vpn_error) = our_members(sys, &s, subnet, pubkey, &node_key)?;
        // Whatever an earlier run left there is not news.
        let _ = std::fs::remove_file(sys.path(MESH_ERROR_FILE));
        let settings = tinc::Settings {
            mode: s.seed.tinc_mode(),
            port: s.seed.tinc_port(),
            vpn_prefix: subnet.1,
            agent_exe: s.agent_exe.clone(),
            root: sys.root().to_path_buf(),
        };
        tinc::render(&paths, &settings, &members)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let tincd_status = supervisor::Shared::default();
        if s.run_tincd {
            tokio::spawn(supervisor::supervise(
                tinc::tincd(&s.tincd, &paths),
                tincd_status.clone(),
                rx,
            ));
        }
        Ok(Arc::new(Mesh {
            sys: sys.clone(),
            key: rekey::ring(sys, s.community, s.key),
            node_key,
            members: Arc::new(Mutex::new(members)),
            changed: Notify::new(),
            wake: Notify::new(),
            tincd: tx,
            tincd_status,
            lan: Mutex::new(candidates::Candidates::default()),
            mdns: Mutex::new(None),
            paths,
            settings,
            subnet,
            vpn_error: Mutex::new(None),
        }))
        .inspect(|m| m.set_vpn_error(vpn_error))
    }

    /// Records (or clears, with None) why our VPN address is not settled.
    pub fn set_vpn_error(&self, e: Option<String>) {
        let mut cur = self.vpn_error.lock().unwrap();
        if *cur == e {
            return;
        }
        let written = match &e {
            Some(e) => {
                tracing::error!("{e}");
                self.sys.write_atomic(MESH_ERROR_FILE, e.as_bytes(), 0o644)
            }
            None => match std::fs::remove_file(self.sys.path(MESH_ERROR_FILE)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        };
        if let Err(e) = written {
            tracing::warn!("{MESH_ERROR_FILE}: {e:#}");
        }
        *cur = e;
    }

    pub fn save_members(&self, ms: &Members) -> Result<()> {
        save_members(&self.sys, ms)
    }
}

/// The stored member list (or a new one) with our own record brought up to date.
fn our_members(
    sys: &System,
    s: &Start<'_>,
    subnet: (Ipv4Addr, u8),
    pubkey: String,
    node_key: &NodeKey,
) -> Result<(Members, Option<String>)> {
    let address = s
        .primary
        .and_then(|p| p.address)
        .unwrap_or(Ipv4Addr::UNSPECIFIED.into());
    let fresh = Member {
        id: s.node_id.into(),
        name: s.name.into(),
        address,
        tinc_port: s.seed.tinc_port(),
        exchange_port: s.seed.exchange_port(),
        vpn: vpn_candidate(s.node_id, subnet, 0),
        pubkey: pubkey.clone(),
        rev: 1,
        signkey: String::new(),
        sig: String::new(),
    };
    let mut members = load_members(sys, s.node_id).unwrap_or_else(|| Members::new(fresh.clone()));
    // Signs our record as it stands (a list from before node keys had none).
    members.set_signer(node_key.clone());
    members.update_me(|m| {
        m.name = fresh.name.clone();
        m.address = fresh.address;
        m.tinc_port = fresh.tinc_port;
        m.exchange_port = fresh.exchange_port;
        m.pubkey = pubkey;
        // A VPN address outside a changed subnet is meaningless.
        if !in_subnet(m.vpn, subnet) {
            m.vpn = fresh.vpn;
        }
    });
    let vpn_error = members.settle_vpn(subnet).err().map(|e| e.to_string());
    save_members(sys, &members)?;
    Ok((members, vpn_error))
}

fn in_subnet(ip: Ipv4Addr, (net, prefix): (Ipv4Addr, u8)) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

fn load_members(sys: &System, node_id: &str) -> Option<Members> {
    let text = std::fs::read_to_string(sys.path(MEMBERS_FILE)).ok()?;
    match serde_json::from_str::<Members>(&text) {
        Ok(ms) if ms.me == node_id && ms.members.contains_key(node_id) => {
            // Re-check what was stored: the file is ours, but the records came from peers.
            // Records without a signature (stored by an agent before protocol 3) go; the
            // members themselves send signed ones again.
            let mut clean = Members::new(ms.members[node_id].clone());
            clean.first_seen = ms.first_seen;
            clean.vpn_since = ms.vpn_since;
            // Before the merge: a removed member's record stays out.
            clean.removed = ms.removed;
            clean.merge(ms.members.into_values().collect());
            let known: Vec<String> = clean.members.keys().cloned().collect();
            clean.first_seen.retain(|id, _| known.contains(id));
            Some(clean)
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("{MEMBERS_FILE}: {e}; starting a new member list");
            None
        }
    }
}

fn save_members(sys: &System, ms: &Members) -> Result<()> {
    let text = serde_json::to_vec_pretty(ms)?;
    sys.write_atomic(MEMBERS_FILE, &text, 0o644)
        .context("saving the member list")?;
    Ok(())
}
