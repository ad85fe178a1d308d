//! Publishing our services and folding everyone else's into the catalog, while `run` lives:
//!
//! - every `HEALTH` the healthy local services become our records: Avahi files (mDNS on the
//!   LAN and the switch-mode VPN) and a Serf tag revision;
//! - mDNS `_cloudy._tcp` records are taken only with a valid MAC under the community key,
//!   from a known member, at that member's address;
//! - Serf members (gossip under the community key) whose revision tag changed are asked for
//!   their records over the join port (community-key handshake);
//! - claims no source refreshes within `STALE` expire; the catalog is written for the CLI.
//!
//! A stopped service is gone from every catalog within `WITHDRAW_WITHIN` (README, tests).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

use crate::avahi;
use crate::catalog::{self, now_ms, Live, Record, Source};
use crate::discovery::{Lan, Seen};
use crate::join::{self, JoinKey};
use crate::members::Members;
use crate::serf::{self, Desired, SerfMember};
use crate::services::{self, Context, Service};
use crate::supervise::{Shared, State};
use crate::system::System;

pub const HEALTH: Duration = Duration::from_secs(1);
/// A claim not refreshed for this long is dropped (a source that went quiet).
pub const STALE: Duration = Duration::from_secs(10);
/// Health check + goodbye or tag gossip + fetch: what the tests hold us to.
pub const WITHDRAW_WITHIN: Duration = Duration::from_secs(5);
const WRITE_EVERY: Duration = Duration::from_secs(2);
/// Records from nodes not (yet) known as members wait here, bounded, to be checked again.
const MAX_PENDING: usize = 256;
/// How often waiting mDNS records are checked against the member list (a new node's records
/// often arrive before its membership has).
const RECHECK: Duration = Duration::from_millis(250);

/// A service and, for a managed one, its supervisor's status.
pub type Published = (Arc<dyn Service>, Option<Shared>);

pub struct Sharing {
    pub sys: System,
    pub key: JoinKey,
    pub community: String,
    pub members: Arc<Mutex<Members>>,
    /// Built-in and declared services, then the managed ones as the manager adopts them, each
    /// with its supervisor's status: a managed service is published only while `Running`.
    pub services: Mutex<Vec<Published>>,
    /// Check health and publish now (a supervised process exited or turned healthy).
    pub recheck: Arc<Notify>,
    /// What we publish now; served to Serf peers over the join port.
    pub ours: Mutex<Vec<Record>>,
    pub catalog: Mutex<Live>,
    pub serf: Arc<Mutex<Desired>>,
    pub bootstrap: Vec<String>,
    /// Our probe summary (JSON), served to members over the join port.
    pub summary: Mutex<String>,
    changed: Notify,
}

impl Sharing {
    pub fn new(
        sys: System,
        key: JoinKey,
        community: String,
        members: Arc<Mutex<Members>>,
        services: Vec<Arc<dyn Service>>,
        bootstrap: Vec<String>,
    ) -> Arc<Sharing> {
        let (name, id) = {
            let ms = members.lock().unwrap();
            (ms.me().tinc_name(), ms.me().id.clone())
        };
        Arc::new(Sharing {
            sys,
            key,
            community,
            members,
            services: Mutex::new(services.into_iter().map(|s| (s, None)).collect()),
            recheck: Arc::new(Notify::new()),
            ours: Mutex::new(Vec::new()),
            catalog: Mutex::new(Live::default()),
            serf: Arc::new(Mutex::new(Desired {
                node_name: name,
                address: None,
                tags: BTreeMap::from([("id".into(), id), ("s".into(), "-".into())]),
                join: Vec::new(),
            })),
            bootstrap,
            summary: Mutex::new("[]".into()),
            changed: Notify::new(),
        })
    }

    pub fn add_service(&self, s: Arc<dyn Service>, status: Option<Shared>) {
        self.services.lock().unwrap().push((s, status));
    }

    fn context(&self) -> Option<Context> {
        let ms = self.members.lock().unwrap();
        (!ms.me().address.is_unspecified()).then(|| Context::from_members(&ms, &self.community))
    }

    /// A record claiming to be from `node_id` at `ip`: true if that is a member other than us
    /// and the address is one of its own.
    fn by_member(&self, r: &Record) -> bool {
        let ms = self.members.lock().unwrap();
        r.node_id != ms.me
            && ms
                .members
                .get(&r.node_id)
                .is_some_and(|m| m.address == r.ip || IpAddr::V4(m.vpn) == r.ip)
    }
}

/// Health checks and publication of our own records.
pub async fn publish(share: Arc<Sharing>, join_port: u16) {
    let mut last: Option<Vec<Record>> = None;
    loop {
        if let Some(ctx) = share.context() {
            let list: Vec<Arc<dyn Service>> = share
                .services
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, st)| {
                    st.as_ref()
                        .is_none_or(|st| st.lock().unwrap().state == State::Running)
                })
                .map(|(s, _)| s.clone())
                .collect();
            let c = ctx.clone();
            let ours = tokio::task::spawn_blocking(move || services::healthy_records(&list, &c))
                .await
                .unwrap_or_default();
            if last.as_ref() != Some(&ours) {
                let signed: Vec<(Record, String)> = ours
                    .iter()
                    .map(|r| (r.clone(), share.key.record_mac(r)))
                    .collect();
                match avahi::sync(&share.sys, &signed) {
                    Ok(_) => {}
                    Err(e) => tracing::warn!("avahi service files: {e}"),
                }
                // Serve the new records before the tag announces them, or a quick peer could
                // fetch the old ones under the new revision.
                *share.ours.lock().unwrap() = ours.clone();
                let rev = revision(&ours);
                {
                    let mut d = share.serf.lock().unwrap();
                    d.tags.insert("s".into(), rev);
                    d.tags.insert("j".into(), join_port.to_string());
                }
                let now = now_ms();
                share.catalog.lock().unwrap().replace_node(
                    &ctx.node_id,
                    Source::Local,
                    ours.clone(),
                    now,
                );
                tracing::info!(
                    "publishing {} service(s): {}",
                    ours.len(),
                    ours.iter()
                        .map(|r| format!("{}:{}", r.kind, r.port))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                last = Some(ours);
                share.changed.notify_one();
            } else if share.catalog.lock().unwrap().replace_node(
                &ctx.node_id,
                Source::Local,
                ours,
                now_ms(),
            ) {
                // Back after expiring (a loop that ran late on a loaded node).
                share.changed.notify_one();
            }
            // Serf follows our address and the members it can join through.
            let join = {
                let ms = share.members.lock().unwrap();
                let mut j: Vec<SocketAddr> = ms
                    .others()
                    .map(|m| SocketAddr::new(m.address, serf::SERF_PORT))
                    .collect();
                for b in &share.bootstrap {
                    if let Ok(a) = b.parse::<SocketAddr>() {
                        let a = SocketAddr::new(a.ip(), serf::SERF_PORT);
                        if !j.contains(&a) {
                            j.push(a);
                        }
                    }
                }
                j
            };
            let mut d = share.serf.lock().unwrap();
            d.address = Some(ctx.ip);
            d.join = join;
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH) => {}
            _ = share.recheck.notified() => {}
        }
    }
}

/// Short hash of our records: Serf peers refetch when it changes.
fn revision(records: &[Record]) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(serde_json::to_vec(records).expect("records serialise"));
    crate::identity::hex(&d[..6])
}

/// Takes mDNS sightings into the catalog.
pub async fn browse_lan(
    share: Arc<Sharing>,
    lan: &Lan,
) -> Result<(), crate::discovery::DiscoveryError> {
    let mut seen = lan.browse(&format!("{}.local.", avahi::DNSSD_TYPE))?;
    tokio::spawn(async move {
        // Instances present on the LAN now, and records waiting for their node to be known.
        let mut present: HashMap<String, Record> = HashMap::new();
        let mut pending: HashMap<String, (Record, String)> = HashMap::new();
        let mut tick = tokio::time::interval(RECHECK);
        loop {
            tokio::select! {
                ev = seen.recv() => {
                    let Some(ev) = ev else { return };
                    match ev {
                        Seen::Resolved { fullname, port, txt } => {
                            let pairs: Vec<(&str, Option<&[u8]>)> =
                                txt.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
                            match Record::from_txt(&pairs, port) {
                                Ok((r, mac)) => {
                                    if !share.key.record_mac_ok(&r, &mac) || r.microcloud != share.community {
                                        tracing::debug!("mDNS: {fullname}: not signed with our community key");
                                        continue;
                                    }
                                    if pending.len() < MAX_PENDING {
                                        pending.insert(fullname, (r, mac));
                                    }
                                }
                                Err(e) => tracing::debug!("mDNS: {fullname}: {e}"),
                            }
                        }
                        Seen::Removed(fullname) => {
                            pending.remove(&fullname);
                            if let Some(r) = present.remove(&fullname) {
                                if share.catalog.lock().unwrap().withdraw(&r.key(), Source::Mdns) {
                                    share.changed.notify_one();
                                }
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    // Refresh what mDNS still holds; re-adds a claim that expired meanwhile.
                    let now = now_ms();
                    let mut c = share.catalog.lock().unwrap();
                    let mut changed = false;
                    for r in present.values() {
                        changed |= c.upsert(r.clone(), Source::Mdns, now);
                    }
                    if changed {
                        share.changed.notify_one();
                    }
                }
            }
            // Sightings of members we know now go in; the rest keep waiting.
            let ready: Vec<String> = pending
                .iter()
                .filter(|(_, (r, _))| share.by_member(r))
                .map(|(f, _)| f.clone())
                .collect();
            for f in ready {
                let (r, _) = pending.remove(&f).expect("listed");
                let key = r.key();
                if let Some(old) = present.insert(f, r.clone()) {
                    if old.key() != key {
                        share
                            .catalog
                            .lock()
                            .unwrap()
                            .withdraw(&old.key(), Source::Mdns);
                    }
                }
                if share
                    .catalog
                    .lock()
                    .unwrap()
                    .upsert(r, Source::Mdns, now_ms())
                {
                    share.changed.notify_one();
                }
            }
        }
    });
    Ok(())
}

/// Takes Serf's member list into the catalog, fetching records when a revision changes. The
/// join services of Serf members not in our member list go to `strangers`.
pub async fn follow_serf(
    share: Arc<Sharing>,
    mut members: tokio::sync::mpsc::UnboundedReceiver<Vec<SerfMember>>,
    strangers: tokio::sync::mpsc::UnboundedSender<SocketAddr>,
) {
    // node id -> the revision we hold and its records
    let mut have: HashMap<String, (String, Vec<Record>)> = HashMap::new();
    let inflight: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(HashSet::new()));
    type Fetched = HashMap<String, (String, Vec<Record>)>;
    let fetched: Arc<Mutex<Fetched>> = Arc::new(Mutex::new(HashMap::new()));
    while let Some(list) = members.recv().await {
        let now = now_ms();
        for (id, got) in fetched.lock().unwrap().drain() {
            have.insert(id, got);
        }
        let mut alive = HashSet::new();
        for m in list.iter().filter(|m| m.status == "alive") {
            let (Some(id), Some(rev)) = (m.tags.get("id"), m.tags.get("s")) else {
                continue;
            };
            // Serf's keyring already kept outsiders out; still, only members we know, at
            // their own address, and only their join port is asked.
            let port = {
                let ms = share.members.lock().unwrap();
                if *id == ms.me {
                    continue;
                }
                match ms.members.get(id) {
                    Some(mem) if mem.address == m.addr => mem.join_port,
                    Some(_) => continue,
                    None => {
                        let join = m.tags.get("j").and_then(|j| j.parse::<u16>().ok());
                        if let Some(port) = join.filter(|p| *p != 0) {
                            let _ = strangers.send(SocketAddr::new(m.addr, port));
                        }
                        continue;
                    }
                }
            };
            alive.insert(id.clone());
            if let Some((_, records)) = have.get(id).filter(|(r, _)| r == rev) {
                // Refreshes, and re-adds records that expired while polls ran late.
                if share.catalog.lock().unwrap().replace_node(
                    id,
                    Source::Serf,
                    records.clone(),
                    now,
                ) {
                    share.changed.notify_one();
                }
                continue;
            }
            if !inflight.lock().unwrap().insert(id.clone()) {
                continue;
            }
            let (share, inflight, fetched) = (share.clone(), inflight.clone(), fetched.clone());
            let (id, addr) = (id.clone(), SocketAddr::new(m.addr, port));
            tokio::spawn(async move {
                match join::fetch_services(addr, &share.key, &id).await {
                    Ok(records) => {
                        // The revision of what we got, not of the tag we saw: if the two
                        // differ (the member changed meanwhile), the next poll fetches again.
                        let rev = revision(&records);
                        let records: Vec<Record> = records
                            .into_iter()
                            .filter(|r| r.microcloud == share.community && share.by_member(r))
                            .collect();
                        if share.catalog.lock().unwrap().replace_node(
                            &id,
                            Source::Serf,
                            records.clone(),
                            now_ms(),
                        ) {
                            share.changed.notify_one();
                        }
                        fetched.lock().unwrap().insert(id.clone(), (rev, records));
                    }
                    Err(e) => tracing::debug!("services of {addr}: {e}"),
                }
                inflight.lock().unwrap().remove(&id);
            });
        }
        // Gone from Serf (left, failed): its Serf-sourced records go at once.
        let gone: Vec<String> = have
            .keys()
            .filter(|id| !alive.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            have.remove(&id);
            if share
                .catalog
                .lock()
                .unwrap()
                .replace_node(&id, Source::Serf, Vec::new(), now)
            {
                share.changed.notify_one();
            }
        }
    }
}

/// Expires stale claims and writes the catalog for `cloudy-agent services`.
pub async fn keep_catalog(share: Arc<Sharing>) {
    loop {
        let _ = tokio::time::timeout(WRITE_EVERY, share.changed.notified()).await;
        let now = now_ms();
        let snap = {
            let mut c = share.catalog.lock().unwrap();
            c.expire(now, STALE.as_millis() as u64);
            c.snapshot(now)
        };
        if let Err(e) = write(&share.sys, &snap) {
            tracing::warn!("{}: {e}", catalog::CATALOG_FILE);
        }
    }
}

/// Tmpfs-backed and rewritten every few seconds: atomic, but no fsync.
fn write(sys: &System, c: &catalog::Catalog) -> std::io::Result<()> {
    let path = sys.path(catalog::CATALOG_FILE);
    let dir = path.parent().expect("has a dir");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".catalog.json.tmp-{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(c).expect("catalog serialises"))?;
    std::fs::rename(&tmp, &path)
}
