//! Everyone else's records into the catalog, while `run` lives. Records enter the catalog
//! only from an authenticated fetch over a member's exchange port; mDNS and Serf only say when
//! to fetch:
//!
//! - an mDNS `_cloudy._tcp` doorbell is heeded only with a valid MAC under the community's
//!   mDNS key, from a known member at that member's address, and not older than the newest
//!   doorbell seen from that member. One naming a revision other than the one we hold, or a
//!   goodbye, makes us fetch that member's records (at most once a second per member). So a
//!   replayed doorbell can at most cause a fetch, and never brings back an old record; a
//!   forged goodbye withdraws nothing the member still lists;
//! - Serf members (gossip under the community key) whose revision tag changed are asked for
//!   their records the same way;
//! - claims no source refreshes within `STALE` expire; the catalog is written for the CLI.
//!
//! Why not trust a fresh doorbell's contents instead, with a tight time window? The window
//! would need every node's clock to agree (a Pi without RTC before NTP does not) and would
//! still let a replay within it pass; a fetch is fresh by its handshake's nonces whatever the
//! clocks say. The doorbell's time is the publisher's own, only compared with the publisher's
//! earlier doorbells; the liveness window (`LIVE`) is measured on our clock, from when that
//! time last moved forward.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::publish::{revision, Sharing, REFRESH};
use crate::catalog::{self, now_ms, Record, Source};
use crate::mesh::exchange;
use crate::mesh::lan::{Lan, Seen};
use crate::mesh::serf::SerfMember;
use crate::os::system::System;
use cloudy_model::record::Doorbell;

/// A claim not refreshed for this long is dropped (a source that went quiet).
pub const STALE: Duration = Duration::from_secs(10);
const WRITE_EVERY: Duration = Duration::from_secs(2);
/// Doorbells from nodes not (yet) known as members wait here, bounded, to be checked again.
const MAX_PENDING: usize = 256;
/// How often waiting doorbells are checked against the member list (a new node's doorbells
/// often arrive before its membership has), wanted fetches started and claims refreshed.
const RECHECK: Duration = Duration::from_millis(250);
/// A member's mDNS-fetched records are kept fresh while its doorbells' time moved forward
/// within this long (three refreshes lost, and some slack); after it, they go stale.
pub const LIVE: Duration = Duration::from_secs(3 * REFRESH.as_secs() + 5);
/// Fetches from one member over mDNS are at least this far apart: a flood of replayed
/// doorbells or forged goodbyes costs each member one fetch a second, however many arrive.
pub const FETCH_GAP: Duration = Duration::from_secs(1);
/// Instances (service names) heard from members, to know whose records a goodbye concerns.
const MAX_INSTANCES: usize = catalog::MAX_ENTRIES;

/// What browsing mDNS knows of one member.
#[derive(Debug)]
struct Bell {
    /// The newest doorbell time seen from it (its clock, seconds).
    newest: u64,
    /// When that time last moved forward (our clock, ms).
    moved: u64,
    /// The revision its newest doorbells name.
    rev: String,
    /// Its exchange service.
    addr: SocketAddr,
    /// The revision and records of our last fetch from it.
    held: Option<(String, Vec<Record>)>,
    want: bool,
    inflight: bool,
    /// No fetch before this (our clock, ms).
    next_fetch: u64,
}

/// A doorbell and its publisher's signature (checked once we know the publisher's pinned key).
type Signed = (Doorbell, String);

/// The mDNS side of the catalog: doorbells in, fetches out.
#[derive(Default)]
struct Doorbells {
    bells: HashMap<String, Bell>,
    /// Instance full name -> member id.
    instances: HashMap<String, String>,
    /// Doorbells of nodes not known (yet) at their address: full name -> (doorbell, seen).
    pending: HashMap<String, (Signed, u64)>,
}

impl Doorbells {
    /// A doorbell with a valid MAC, first heard at `heard`. Heeded now if it is from a member
    /// at its address and signed by that member's pinned node key; else it waits (bounded, at
    /// most `LIVE`) for the member list.
    fn ring(&mut self, share: &Sharing, fullname: String, bell: Signed, heard: u64, now: u64) {
        let Some(addr) = share.member_exchange(&bell.0.node_id, bell.0.ip) else {
            let fits = self.pending.len() < MAX_PENDING || self.pending.contains_key(&fullname);
            if fits && now.saturating_sub(heard) <= LIVE.as_millis() as u64 {
                self.pending.insert(fullname, (bell, heard));
            }
            return;
        };
        self.pending.remove(&fullname);
        let (d, sig) = bell;
        // The community's MAC says a member made it; only this signature says which. Without
        // it any member could ring for another with a time far ahead, and browsers would then
        // ignore the real doorbells until they forgot that member.
        let by_owner = share
            .members
            .lock()
            .unwrap()
            .signed_by(&d.node_id, &d.signed_bytes(), &sig);
        if !by_owner {
            tracing::debug!(
                "mDNS: {fullname}: not signed by {}'s own node key, ignored",
                d.node
            );
            return;
        }
        let b = self.bells.entry(d.node_id.clone()).or_insert_with(|| Bell {
            newest: 0,
            moved: now,
            rev: d.rev.clone(),
            addr,
            held: None,
            want: true,
            inflight: false,
            next_fetch: 0,
        });
        if now.saturating_sub(b.moved) > LIVE.as_millis() as u64 {
            // Silent for `LIVE`: forget its time (it may have restarted with its clock behind)
            // and what we fetched (so a replay now cannot make those records fresh again: it
            // names a revision we no longer hold, and only makes us fetch).
            b.newest = 0;
            b.held = None;
        }
        if d.ts < b.newest {
            tracing::debug!(
                "mDNS: {fullname}: a doorbell older than {}'s newest (replayed?), ignored",
                d.node
            );
            return;
        }
        if d.ts > b.newest {
            b.newest = d.ts;
            b.moved = now;
            b.rev = d.rev.clone();
        }
        b.addr = addr;
        if b.held.as_ref().map(|(r, _)| r) != Some(&b.rev) {
            b.want = true;
        }
        if self.instances.len() < MAX_INSTANCES || self.instances.contains_key(&fullname) {
            self.instances.insert(fullname, d.node_id);
        }
    }

    /// A goodbye, which anyone on the LAN can send: it withdraws nothing by itself, it only
    /// makes us ask the member what it still offers.
    fn goodbye(&mut self, fullname: &str) {
        self.pending.remove(fullname);
        if let Some(id) = self.instances.remove(fullname) {
            if let Some(b) = self.bells.get_mut(&id) {
                b.want = true;
            }
        }
    }

    /// Members to fetch from now, each marked in flight and rate-bound.
    fn due(&mut self, now: u64) -> Vec<(String, SocketAddr)> {
        let mut out = Vec::new();
        for (id, b) in &mut self.bells {
            if b.want && !b.inflight && now >= b.next_fetch {
                b.want = false;
                b.inflight = true;
                b.next_fetch = now + FETCH_GAP.as_millis() as u64;
                out.push((id.clone(), b.addr));
            }
        }
        out
    }

    /// A fetch ended: on success its records are the member's mDNS view from now on, and
    /// their revision the one its doorbells must name to keep them fresh (the fetch, fresh by
    /// its handshake, outranks a doorbell that named another).
    fn fetched(&mut self, id: &str, got: Option<(String, Vec<Record>)>) -> Option<Vec<Record>> {
        let b = self.bells.get_mut(id)?;
        b.inflight = false;
        let got = got?;
        let records = got.1.clone();
        b.rev = got.0.clone();
        b.held = Some(got);
        Some(records)
    }

    /// The records to refresh: those of members whose doorbells are live and name the
    /// revision we hold (records known to be outdated are left to go stale).
    fn live(&self, now: u64) -> Vec<(String, Vec<Record>)> {
        self.bells
            .iter()
            .filter(|(_, b)| now.saturating_sub(b.moved) <= LIVE.as_millis() as u64)
            .filter_map(|(id, b)| match &b.held {
                Some((rev, recs)) if *rev == b.rev => Some((id.clone(), recs.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Takes mDNS doorbells as reasons to fetch members' records into the catalog.
pub async fn browse_lan(
    share: Arc<Sharing>,
    lan: &Lan,
) -> Result<(), crate::mesh::lan::DiscoveryError> {
    let mut seen = lan.browse(&format!("{}.local.", crate::catalog::avahi::DNSSD_TYPE))?;
    crate::catalog::pending::browse(share.pending.clone(), share.community.clone(), lan)?;
    tokio::spawn(async move {
        let mut bells = Doorbells::default();
        let (done_tx, mut done) =
            tokio::sync::mpsc::unbounded_channel::<(String, Option<(String, Vec<Record>)>)>();
        let mut tick = tokio::time::interval(RECHECK);
        loop {
            let now = now_ms();
            tokio::select! {
                ev = seen.recv() => {
                    let Some(ev) = ev else { return };
                    match ev {
                        Seen::Resolved { fullname, port, txt } => {
                            let pairs: Vec<(&str, Option<&[u8]>)> =
                                txt.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
                            match Doorbell::from_txt(&pairs, port) {
                                Ok((d, seals)) => {
                                    if !share.mdns.verify(&d, &seals.mac) || d.microcloud != share.community {
                                        tracing::debug!("mDNS: {fullname}: not signed with our community key");
                                        continue;
                                    }
                                    // Our own, heard back from our avahi-daemon.
                                    if d.node_id == share.members.lock().unwrap().me {
                                        continue;
                                    }
                                    bells.ring(&share, fullname, (d, seals.sig), now, now);
                                }
                                Err(e) => tracing::debug!("mDNS: {fullname}: {e}"),
                            }
                        }
                        Seen::Removed(fullname) => bells.goodbye(&fullname),
                    }
                }
                Some((id, got)) = done.recv() => {
                    if let Some(records) = bells.fetched(&id, got) {
                        replace(&share, &id, Source::Mdns, records, now);
                    }
                }
                _ = tick.tick() => {
                    // Doorbells of members we know now are heeded; the rest wait, a while.
                    for (f, (d, heard)) in std::mem::take(&mut bells.pending) {
                        bells.ring(&share, f, d, heard, now);
                    }
                    // Refresh what live doorbells still vouch for; re-adds a claim that
                    // expired meanwhile.
                    for (id, records) in bells.live(now) {
                        replace(&share, &id, Source::Mdns, records, now);
                    }
                }
            }
            for (id, addr) in bells.due(now_ms()) {
                let (share, done) = (share.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let got = fetch_records(&share, &id, addr).await;
                    let _ = done.send((id, got));
                });
            }
        }
    });
    Ok(())
}

/// A member's records over its exchange port: their revision and those we take.
async fn fetch_records(
    share: &Sharing,
    id: &str,
    addr: SocketAddr,
) -> Option<(String, Vec<Record>)> {
    // The answer must be signed by the node key we pinned for `id`.
    let member = share.members.lock().unwrap().members.get(id).cloned();
    let got = match &member {
        Some(m) => exchange::fetch_services(addr, &share.key, m).await,
        None => Err(exchange::ExchangeError::Refused(format!(
            "{id} is not a member yet"
        ))),
    };
    match got {
        Ok(records) => {
            // The revision of what we got, not of the doorbell or tag we saw: if the two
            // differ (the member changed meanwhile), the next one makes us fetch again.
            let rev = revision(&records);
            let records = records
                .into_iter()
                .filter(|r| r.microcloud == share.community && share.by_member(r))
                .collect();
            Some((rev, records))
        }
        Err(e) => {
            tracing::debug!("services of {addr}: {e}");
            None
        }
    }
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
                replace(&share, id, Source::Serf, records.clone(), now);
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
            replace(&share, &id, Source::Serf, Vec::new(), now);
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

/// Makes `source`'s view of `id` exactly `records`.
fn replace(share: &Sharing, id: &str, source: Source, records: Vec<Record>, now: u64) {
    if share
        .catalog
        .lock()
        .unwrap()
        .replace_node(id, source, records, now)
    {
        share.changed.notify_one();
    }
}

/// Fetches a member's records over its exchange port, in the background.
fn fetch(share: &Arc<Sharing>, f: &Following, id: String, addr: SocketAddr) {
    let (share, inflight, fetched) = (share.clone(), f.inflight.clone(), f.fetched.clone());
    tokio::spawn(async move {
        if let Some((rev, records)) = fetch_records(&share, &id, addr).await {
            replace(&share, &id, Source::Serf, records.clone(), now_ms());
            fetched.lock().unwrap().insert(id.clone(), (rev, records));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::record;
    use crate::mesh::exchange::CommunityKey;
    use crate::mesh::members::{
        tests::{key_of, member},
        Members,
    };

    /// We are 'a'; 'b' is a member at 10.213.0.1, the address `record` gives.
    fn share() -> (tempfile::TempDir, Arc<Sharing>) {
        let dir = tempfile::tempdir().unwrap();
        let mut ms = Members::new(member('a', "n0"));
        let mut b = member('b', "n1");
        b.address = "10.213.0.1".parse().unwrap();
        ms.members.insert(b.id.clone(), b);
        let share = Sharing::new(
            System::new(dir.path()),
            CommunityKey::derive("sants", "0123456789abcdef"),
            "sants".into(),
            Arc::new(Mutex::new(ms)),
            vec![],
        );
        (dir, share)
    }

    const NAME: &str = "n1 web 80._cloudy._tcp.local.";

    /// The doorbell of `r`, signed by its node's (test) key.
    fn bell(r: &Record, rev: &str, ts: u64) -> Signed {
        signed_as(r, rev, ts, r.node_id.chars().next().unwrap())
    }

    fn signed_as(r: &Record, rev: &str, ts: u64, by: char) -> Signed {
        let d = Doorbell::of(r, rev, ts);
        let sig = key_of(by).sign_hex(&d.signed_bytes());
        (d, sig)
    }

    #[test]
    fn a_replayed_doorbell_is_ignored_and_a_goodbye_only_asks() {
        let (_d, share) = share();
        let r = record('b', "web", 80);
        let mut bells = Doorbells::default();
        bells.ring(&share, NAME.into(), bell(&r, "00000000000a", 100), 0, 0);
        assert_eq!(
            bells.due(0),
            vec![("b".repeat(32), "10.213.0.1:6655".parse().unwrap())]
        );
        assert_eq!(
            bells.fetched(
                &"b".repeat(32),
                Some(("00000000000a".into(), vec![r.clone()]))
            ),
            Some(vec![r.clone()])
        );
        assert_eq!(
            bells.live(1000).len(),
            1,
            "a live doorbell keeps the records fresh"
        );
        // The same doorbell again (another service of the node, or mDNS repeating): nothing.
        bells.ring(
            &share,
            NAME.into(),
            bell(&r, "00000000000a", 100),
            2000,
            2000,
        );
        assert!(bells.due(2000).is_empty());
        // An older doorbell, validly signed once (a replay): not even a fetch.
        bells.ring(
            &share,
            NAME.into(),
            bell(&r, "00000000000b", 99),
            2000,
            2000,
        );
        assert!(bells.due(2000).is_empty());
        assert_eq!(bells.bells[&"b".repeat(32)].rev, "00000000000a");
        // A goodbye withdraws nothing; it asks the member, once a second however many come.
        for name in [NAME, NAME, "n1 tincvpn 655._cloudy._tcp.local."] {
            bells.goodbye(name);
            bells.ring(
                &share,
                NAME.into(),
                bell(&r, "00000000000a", 100),
                2000,
                2000,
            );
        }
        assert_eq!(bells.live(2000).len(), 1);
        assert_eq!(bells.due(2000).len(), 1);
        assert!(bells.due(2500).is_empty(), "one fetch in flight");
        // The fetch failed: the records stay until the doorbells stop moving.
        assert_eq!(bells.fetched(&"b".repeat(32), None), None);
        bells.goodbye(NAME);
        assert!(bells.due(2500).is_empty(), "rate-bound");
        assert_eq!(bells.due(3000).len(), 1);
        assert_eq!(bells.live(3000).len(), 1);
        assert!(bells.live(LIVE.as_millis() as u64 + 1).is_empty(), "silent");
        // A newer doorbell with another revision makes us fetch; until then the held records
        // are known to be outdated and are no longer refreshed.
        bells.fetched(&"b".repeat(32), None);
        bells.ring(
            &share,
            NAME.into(),
            bell(&r, "00000000000c", 110),
            5000,
            5000,
        );
        assert!(bells.live(5000).is_empty());
        assert_eq!(bells.due(5000).len(), 1);
        // The fetch says otherwise (a doorbell signed with another revision): it wins.
        bells.fetched(
            &"b".repeat(32),
            Some(("00000000000a".into(), vec![r.clone()])),
        );
        assert_eq!(bells.live(5000).len(), 1);
        // Silent for longer than LIVE (dead, or restarted with its clock behind): an older
        // doorbell is heard again, but only to fetch; nothing held is refreshed by it.
        let later = 5000 + LIVE.as_millis() as u64 + 1;
        bells.ring(
            &share,
            NAME.into(),
            bell(&r, "00000000000a", 50),
            later,
            later,
        );
        assert!(bells.live(later).is_empty(), "nothing held any more");
        assert_eq!(bells.due(later).len(), 1);
    }

    /// A member (any holder of the community key can make the MAC) rings in another
    /// member's name with a time far ahead. Before doorbells carried the publisher's own
    /// signature, browsers took it as that member's newest and then ignored its real
    /// doorbells, so its records went stale; now it is ignored and the real ones still count.
    #[test]
    fn a_doorbell_in_another_members_name_is_ignored() {
        let (_d, share) = share();
        share.members.lock().unwrap().merge(vec![member('c', "n2")]);
        let r = record('b', "web", 80);
        let mut bells = Doorbells::default();
        for forged in [
            signed_as(&r, "00000000000f", u64::MAX / 2, 'c'),
            (
                Doorbell::of(&r, "00000000000f", u64::MAX / 2),
                String::new(),
            ),
            (
                Doorbell::of(&r, "00000000000f", u64::MAX / 2),
                "ab".repeat(64),
            ),
        ] {
            bells.ring(&share, NAME.into(), forged, 0, 0);
        }
        assert!(bells.due(0).is_empty(), "no fetch on a forged doorbell");
        assert!(!bells.bells.contains_key(&"b".repeat(32)));
        bells.ring(&share, NAME.into(), bell(&r, "00000000000a", 100), 0, 0);
        assert_eq!(bells.due(0).len(), 1, "the member's own doorbell is heeded");
        assert_eq!(bells.bells[&"b".repeat(32)].newest, 100);
    }

    #[test]
    fn doorbells_of_strangers_wait_bounded_and_not_for_ever() {
        let (_d, share) = share();
        let mut bells = Doorbells::default();
        let mut r = record('c', "web", 80);
        bells.ring(&share, "x".into(), bell(&r, "00000000000a", 1), 0, 0);
        r.node_id = "b".repeat(32);
        r.ip = "10.213.0.9".parse().unwrap();
        bells.ring(&share, "y".into(), bell(&r, "00000000000a", 1), 0, 0);
        assert!(
            bells.due(0).is_empty(),
            "not a member, or not at its address"
        );
        assert_eq!(bells.pending.len(), 2);
        for i in 0..2 * MAX_PENDING {
            bells.ring(&share, format!("z{i}"), bell(&r, "00000000000a", 1), 0, 0);
        }
        assert_eq!(bells.pending.len(), MAX_PENDING);
        let late = LIVE.as_millis() as u64 + 1;
        for (f, (d, heard)) in std::mem::take(&mut bells.pending) {
            bells.ring(&share, f, d, heard, late);
        }
        assert!(bells.pending.is_empty(), "forgotten after LIVE");
    }
}
