//! Publishing our services while `run` lives: every `HEALTH` the healthy local services become
//! our records, served over the exchange port, and announced by pointers that carry none of
//! their contents: a signed, timestamped mDNS doorbell per service as an Avahi file (the LAN
//! and the switch-mode VPN), and a Serf tag revision. `Sharing` is the state publishing and
//! browsing (`browse`) share.
//!
//! A stopped service is gone from every catalog within `WITHDRAW_WITHIN` (README, tests).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

use crate::catalog::avahi;
use crate::catalog::signing::MdnsKey;
use crate::catalog::{now_ms, Live, Record, Source};
use crate::mesh::exchange::CommunityKey;
use crate::mesh::members::Members;
use crate::mesh::serf::{self, Desired};
use crate::os::system::System;
use cloudy_model::record::{Doorbell, Origin, Seals};

pub const HEALTH: Duration = Duration::from_secs(1);
/// Health check + goodbye or tag gossip + fetch: what the tests hold us to.
pub const WITHDRAW_WITHIN: Duration = Duration::from_secs(5);
/// Our doorbells are signed again with a new time this often, even when nothing changed: a
/// browser keeps our records only while our doorbells' time moves (`browse::LIVE`).
///
/// The cost: avahi-daemon reloads a changed service file by withdrawing and re-registering
/// it, so each refresh is, per service, a goodbye, a probe and an announcement (a handful of
/// small multicast packets), and every browser fetches our records once (the goodbye makes
/// it ask; fetches of one node are at most one a second). At 10 s that is well under one
/// packet a second per service and one fetch per peer per 10 s.
pub const REFRESH: Duration = Duration::from_secs(10);

/// Where our own records come from: the services above this layer answer with the records of
/// their healthy services. Called off the async thread (health checks may block briefly).
pub trait LocalRecords: Send + Sync {
    fn records(&self, origin: &Origin) -> Vec<Record>;
}

pub struct Sharing {
    pub sys: System,
    pub key: CommunityKey,
    /// Signs our mDNS doorbells and checks others'.
    pub mdns: MdnsKey,
    pub community: String,
    pub members: Arc<Mutex<Members>>,
    /// Check health and publish now (a supervised process exited or turned healthy).
    pub recheck: Arc<Notify>,
    /// What we publish now; served over the exchange port to members whose Serf tag or mDNS
    /// doorbell of ours told them to fetch.
    pub ours: Mutex<Vec<Record>>,
    pub catalog: Mutex<Live>,
    pub serf: Arc<Mutex<Desired>>,
    pub bootstrap: Vec<String>,
    /// Our probe summary (JSON), served to members over the exchange port.
    pub summary: Mutex<String>,
    /// Pending nodes of our community heard on the LAN, waiting for an approval.
    pub pending: Arc<crate::catalog::pending::Pending>,
    pub(crate) changed: Notify,
}

impl Sharing {
    pub fn new(
        sys: System,
        key: CommunityKey,
        community: String,
        members: Arc<Mutex<Members>>,
        bootstrap: Vec<String>,
    ) -> Arc<Sharing> {
        let (name, id) = {
            let ms = members.lock().unwrap();
            (ms.me().tinc_name(), ms.me().id.clone())
        };
        Arc::new(Sharing {
            sys,
            mdns: MdnsKey::new(&key),
            key,
            community,
            members,
            recheck: Arc::new(Notify::new()),
            ours: Mutex::new(Vec::new()),
            catalog: Mutex::new(Live::default()),
            serf: Arc::new(Mutex::new(Desired {
                node_name: name,
                address: None,
                tags: serf_tags(&id, "-", None),
                join: Vec::new(),
            })),
            bootstrap,
            summary: Mutex::new("[]".into()),
            pending: Default::default(),
            changed: Notify::new(),
        })
    }

    fn origin(&self) -> Option<Origin> {
        let ms = self.members.lock().unwrap();
        (!ms.me().address.is_unspecified()).then(|| ms.origin(&self.community))
    }

    /// A record claiming to be from `node_id` at `ip`: true if that is a member other than us
    /// and the address is one of its own.
    pub(crate) fn by_member(&self, r: &Record) -> bool {
        self.member_exchange(&r.node_id, r.ip).is_some()
    }

    /// The exchange service of `node_id` (at its primary address, where members swap lists)
    /// if it is a member other than us and `ip` is one of its addresses.
    pub(crate) fn member_exchange(&self, node_id: &str, ip: IpAddr) -> Option<SocketAddr> {
        let ms = self.members.lock().unwrap();
        if node_id == ms.me {
            return None;
        }
        ms.members
            .get(node_id)
            .filter(|m| m.address == ip || IpAddr::V4(m.vpn) == ip)
            .map(|m| SocketAddr::new(m.address, m.exchange_port))
    }
}

/// Our Serf tags: pointers only (node id, records' revision, exchange port), never a field of
/// a record, so no capability rides on Serf's gossip.
pub(crate) fn serf_tags(
    id: &str,
    rev: &str,
    exchange_port: Option<u16>,
) -> BTreeMap<String, String> {
    let mut t = BTreeMap::from([("id".into(), id.to_string()), ("s".into(), rev.to_string())]);
    if let Some(p) = exchange_port {
        t.insert("j".into(), p.to_string());
    }
    t
}

/// Our records' doorbells at revision `rev` and time `ts`, with the community's MAC and our
/// node key's signature (`sign`).
pub(crate) fn doorbells(
    mdns: &MdnsKey,
    sign: impl Fn(&[u8]) -> Option<String>,
    records: &[Record],
    rev: &str,
    ts: u64,
) -> Vec<(Doorbell, Seals)> {
    records
        .iter()
        .map(|r| {
            let d = Doorbell::of(r, rev, ts);
            let seals = Seals {
                mac: mdns.sign(&d),
                sig: sign(&d.signed_bytes()).unwrap_or_default(),
            };
            (d, seals)
        })
        .collect()
}

/// The time our next doorbells carry: the clock in seconds, but always after the last one, so
/// two signings never share a time (browsers order them by it) even if the clock steps back.
fn next_stamp(last: u64) -> u64 {
    (now_ms() / 1000).max(last + 1)
}

/// Health checks and publication of our own records.
pub async fn publish(share: Arc<Sharing>, exchange_port: u16, local: Arc<dyn LocalRecords>) {
    let mut last: Option<Vec<Record>> = None;
    let (mut stamp, mut rung) = (0u64, tokio::time::Instant::now());
    loop {
        if let Some(ctx) = share.origin() {
            let (c, l) = (ctx.clone(), local.clone());
            let ours = tokio::task::spawn_blocking(move || l.records(&c))
                .await
                .unwrap_or_default();
            let changed = last.as_ref() != Some(&ours);
            if changed || rung.elapsed() >= REFRESH {
                // Serve the new records before any doorbell or tag announces them, or a quick
                // peer could fetch the old ones under the new revision (and, woken by a
                // goodbye, keep a stopped service until its claim went stale).
                *share.ours.lock().unwrap() = ours.clone();
                let rev = revision(&ours);
                stamp = next_stamp(stamp);
                rung = tokio::time::Instant::now();
                let bells = {
                    let ms = share.members.lock().unwrap();
                    doorbells(&share.mdns, |m| ms.sign_mine(m), &ours, &rev, stamp)
                };
                if let Err(e) = avahi::sync(&share.sys, &bells) {
                    tracing::warn!("avahi service files: {e}");
                }
                share.serf.lock().unwrap().tags =
                    serf_tags(&ctx.node_id, &rev, Some(exchange_port));
            }
            if changed {
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
pub(crate) fn revision(records: &[Record]) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(serde_json::to_vec(records).expect("records serialise"));
    crate::os::identity::hex(&d[..6])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::record;
    use cloudy_model::kinds::KINDS;

    /// A valid value for every typed field of the kinds table (a new field must add one).
    fn sample(field: &str) -> &'static str {
        match field {
            "vpn" => "10.213.0.1",
            "furl" => "pb://tubid7xq@10.213.0.1:3456/swissnumSECRET",
            "nodeid" => "v0-nodeidPUBLIC",
            "stream_id" => "streamID",
            "playlist" => "/stream/streamID/index.m3u8",
            "origin" => "0123456789abcdef0123456789abcdef",
            "hops" => "7",
            "upstream" => "89abcdef,01234567",
            "device_id" => "MFZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-BONSGYY-LTMRWAD",
            other => panic!("no sample value for field {other}: add one"),
        }
    }

    /// Defect 12 (second half): on 2293e0e a record's typed fields, the introducer's FURL among
    /// them, went into its mDNS TXT as `f.<field>` in clear. Now neither a TXT record (the
    /// Avahi file as written) nor a Serf tag holds any field value, of any kind in the table.
    #[test]
    fn no_field_of_any_kind_reaches_a_txt_record_or_a_serf_tag() {
        let mdns = MdnsKey::new(&CommunityKey::derive("sants", "0123456789abcdef"));
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        let mut records = Vec::new();
        for (i, k) in KINDS.iter().enumerate() {
            let mut r = record('a', k.name, 1000 + i as u16);
            for f in k.fields {
                r.fields.insert(f.name.into(), sample(f.name).into());
            }
            r.validate().unwrap();
            records.push(r);
        }
        assert!(records.iter().any(|r| r
            .fields
            .keys()
            .any(|f| cloudy_model::kinds::is_capability(&r.kind, f))));
        let rev = revision(&records);
        let sign = |m: &[u8]| Some(crate::mesh::members::tests::key_of('a').sign_hex(m));
        avahi::sync(&sys, &doorbells(&mdns, sign, &records, &rev, 1_800_000_000)).unwrap();
        let mut published = String::new();
        for e in std::fs::read_dir(sys.path(avahi::SERVICES_DIR)).unwrap() {
            published += &std::fs::read_to_string(e.unwrap().path()).unwrap();
        }
        assert_eq!(published.matches("<service-group>").count(), KINDS.len());
        for (_, v) in serf_tags(&records[0].node_id, &rev, Some(6655)) {
            published += &v;
        }
        for r in &records {
            for (f, v) in &r.fields {
                // Values that are also the record's own parts (a VPN address that is the
                // record's IP) are not secret by being a field, and a short one ("7" hops)
                // shows by chance; the keys are checked below for those.
                if *v != r.ip.to_string() && v.len() >= 8 {
                    assert!(
                        !published.contains(v.as_str()),
                        "{}'s {f} published: {published}",
                        r.kind
                    );
                }
            }
        }
        assert!(!published.contains("SECRET"));
        let keys: std::collections::BTreeSet<&str> = published
            .split("<txt-record>")
            .skip(1)
            .map(|t| t.split('=').next().unwrap())
            .collect();
        let doorbell = ["id", "ip", "mac", "mc", "n", "s", "sig", "t", "ts", "v"];
        assert_eq!(
            keys.into_iter().collect::<Vec<_>>(),
            doorbell,
            "TXT keys: pointers only"
        );
        let tags = serf_tags(&records[0].node_id, &rev, Some(6655));
        assert_eq!(tags.keys().collect::<Vec<_>>(), ["id", "j", "s"]);
    }
}
