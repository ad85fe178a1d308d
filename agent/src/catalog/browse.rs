//! Everyone else's records into the catalog, while `run` lives:
//!
//! - mDNS `_cloudy._tcp` records are taken only with a valid MAC under the community key,
//!   from a known member, at that member's address;
//! - Serf members (gossip under the community key) whose revision tag changed are asked for
//!   their records over the exchange port (community-key handshake);
//! - claims no source refreshes within `STALE` expire; the catalog is written for the CLI.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::publish::{revision, Sharing};
use crate::catalog::{self, now_ms, Record, Source};
use crate::mesh::exchange;
use crate::mesh::lan::{Lan, Seen};
use crate::mesh::serf::SerfMember;
use crate::os::system::System;

/// A claim not refreshed for this long is dropped (a source that went quiet).
pub const STALE: Duration = Duration::from_secs(10);
const WRITE_EVERY: Duration = Duration::from_secs(2);
/// Records from nodes not (yet) known as members wait here, bounded, to be checked again.
const MAX_PENDING: usize = 256;
/// How often waiting mDNS records are checked against the member list (a new node's records
/// often arrive before its membership has).
const RECHECK: Duration = Duration::from_millis(250);

/// Takes mDNS sightings into the catalog.
pub async fn browse_lan(
    share: Arc<Sharing>,
    lan: &Lan,
) -> Result<(), crate::mesh::lan::DiscoveryError> {
    let mut seen = lan.browse(&format!("{}.local.", crate::catalog::avahi::DNSSD_TYPE))?;
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

/// node id -> the revision we hold and its records
type Held = HashMap<String, (String, Vec<Record>)>;

/// What following Serf keeps between polls.
#[derive(Default)]
struct Following {
    have: Held,
    inflight: Arc<Mutex<HashSet<String>>>,
    fetched: Arc<Mutex<Held>>,
}

/// Takes Serf's member list into the catalog, fetching records when a revision changes. The
/// exchange services of Serf members not in our member list go to `strangers`.
pub async fn follow_serf(
    share: Arc<Sharing>,
    mut members: tokio::sync::mpsc::UnboundedReceiver<Vec<SerfMember>>,
    strangers: tokio::sync::mpsc::UnboundedSender<SocketAddr>,
) {
    let mut f = Following::default();
    while let Some(list) = members.recv().await {
        let now = now_ms();
        for (id, got) in f.fetched.lock().unwrap().drain() {
            f.have.insert(id, got);
        }
        let mut alive = HashSet::new();
        for m in list.iter().filter(|m| m.status == "alive") {
            let (Some(id), Some(rev)) = (m.tags.get("id"), m.tags.get("s")) else {
                continue;
            };
            let Some(port) = member_port(&share, m, id, &strangers) else {
                continue;
            };
            alive.insert(id.clone());
            if let Some((_, records)) = f.have.get(id).filter(|(r, _)| r == rev) {
                // Refreshes, and re-adds records that expired while polls ran late.
                replace(&share, id, records.clone(), now);
                continue;
            }
            if f.inflight.lock().unwrap().insert(id.clone()) {
                fetch(&share, &f, id.clone(), SocketAddr::new(m.addr, port));
            }
        }
        // Gone from Serf (left, failed): its Serf-sourced records go at once.
        let gone: Vec<String> = f
            .have
            .keys()
            .filter(|id| !alive.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            f.have.remove(&id);
            replace(&share, &id, Vec::new(), now);
        }
    }
}

/// The exchange port of a Serf member we know at its own address. Serf's keyring already kept
/// outsiders out; still, only members we know are asked. A member not in our list yet is
/// passed to `strangers` for the next gossip round.
fn member_port(
    share: &Sharing,
    m: &SerfMember,
    id: &str,
    strangers: &tokio::sync::mpsc::UnboundedSender<SocketAddr>,
) -> Option<u16> {
    let ms = share.members.lock().unwrap();
    if id == ms.me {
        return None;
    }
    match ms.members.get(id) {
        Some(mem) if mem.address == m.addr => Some(mem.exchange_port),
        Some(_) => None,
        None => {
            let port = m.tags.get("j").and_then(|j| j.parse::<u16>().ok());
            if let Some(port) = port.filter(|p| *p != 0) {
                let _ = strangers.send(SocketAddr::new(m.addr, port));
            }
            None
        }
    }
}

/// Makes Serf's view of `id` exactly `records`.
fn replace(share: &Sharing, id: &str, records: Vec<Record>, now: u64) {
    if share
        .catalog
        .lock()
        .unwrap()
        .replace_node(id, Source::Serf, records, now)
    {
        share.changed.notify_one();
    }
}

/// Fetches a member's records over its exchange port, in the background.
fn fetch(share: &Arc<Sharing>, f: &Following, id: String, addr: SocketAddr) {
    let (share, inflight, fetched) = (share.clone(), f.inflight.clone(), f.fetched.clone());
    tokio::spawn(async move {
        // The answer must be signed by the node key we pinned for `id`.
        let member = share.members.lock().unwrap().members.get(&id).cloned();
        let got = match &member {
            Some(m) => exchange::fetch_services(addr, &share.key, m).await,
            None => Err(exchange::ExchangeError::Refused(format!(
                "{id} is not a member yet"
            ))),
        };
        match got {
            Ok(records) => {
                // The revision of what we got, not of the tag we saw: if the two differ (the
                // member changed meanwhile), the next poll fetches again.
                let rev = revision(&records);
                let records: Vec<Record> = records
                    .into_iter()
                    .filter(|r| r.microcloud == share.community && share.by_member(r))
                    .collect();
                replace(&share, &id, records.clone(), now_ms());
                fetched.lock().unwrap().insert(id.clone(), (rev, records));
            }
            Err(e) => tracing::debug!("services of {addr}: {e}"),
        }
        inflight.lock().unwrap().remove(&id);
    });
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
