//! Publishing our services while `run` lives: every `HEALTH` the healthy local services become
//! our records, as Avahi files (mDNS on the LAN and the switch-mode VPN), a Serf tag revision
//! and the list served over the exchange port. `Sharing` is the state publishing and browsing
//! (`browse`) share.
//!
//! A stopped service is gone from every catalog within `WITHDRAW_WITHIN` (README, tests).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

use crate::catalog::avahi;
use crate::catalog::{now_ms, Live, Record, Source};
use crate::mesh::exchange::CommunityKey;
use crate::mesh::members::Members;
use crate::mesh::serf::{self, Desired};
use crate::os::system::System;
use cloudy_model::record::Origin;

pub const HEALTH: Duration = Duration::from_secs(1);
/// Health check + goodbye or tag gossip + fetch: what the tests hold us to.
pub const WITHDRAW_WITHIN: Duration = Duration::from_secs(5);

/// Where our own records come from: the services above this layer answer with the records of
/// their healthy services. Called off the async thread (health checks may block briefly).
pub trait LocalRecords: Send + Sync {
    fn records(&self, origin: &Origin) -> Vec<Record>;
}

pub struct Sharing {
    pub sys: System,
    pub key: CommunityKey,
    pub community: String,
    pub members: Arc<Mutex<Members>>,
    /// Check health and publish now (a supervised process exited or turned healthy).
    pub recheck: Arc<Notify>,
    /// What we publish now; served to Serf peers over the exchange port.
    pub ours: Mutex<Vec<Record>>,
    pub catalog: Mutex<Live>,
    pub serf: Arc<Mutex<Desired>>,
    pub bootstrap: Vec<String>,
    /// Our probe summary (JSON), served to members over the exchange port.
    pub summary: Mutex<String>,
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
            key,
            community,
            members,
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

    fn origin(&self) -> Option<Origin> {
        let ms = self.members.lock().unwrap();
        (!ms.me().address.is_unspecified()).then(|| ms.origin(&self.community))
    }

    /// A record claiming to be from `node_id` at `ip`: true if that is a member other than us
    /// and the address is one of its own.
    pub(crate) fn by_member(&self, r: &Record) -> bool {
        let ms = self.members.lock().unwrap();
        r.node_id != ms.me
            && ms
                .members
                .get(&r.node_id)
                .is_some_and(|m| m.address == r.ip || IpAddr::V4(m.vpn) == r.ip)
    }
}

/// Health checks and publication of our own records.
pub async fn publish(share: Arc<Sharing>, exchange_port: u16, local: Arc<dyn LocalRecords>) {
    let mut last: Option<Vec<Record>> = None;
    loop {
        if let Some(ctx) = share.origin() {
            let (c, l) = (ctx.clone(), local.clone());
            let ours = tokio::task::spawn_blocking(move || l.records(&c))
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
                    d.tags.insert("j".into(), exchange_port.to_string());
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
pub(crate) fn revision(records: &[Record]) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(serde_json::to_vec(records).expect("records serialise"));
    crate::os::identity::hex(&d[..6])
}
