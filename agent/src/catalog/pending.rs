//! Pending nodes on the LAN, both sides (the handshake is `mesh::pending`):
//! - a node with a community's name and neither key nor invitation announces itself
//!   (`_cloudy-pending._tcp`, an Avahi file), shows its fingerprint on its console and login
//!   screen, and serves the approve handshake on its exchange port until one approval opens;
//! - every member browses those announcements for its own community and lists them
//!   (`Pending`), and approves them by fingerprint (`approve`, behind `cloudy-agent approve`
//!   and the dashboard's "Pending nodes").

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::catalog::avahi;
use crate::catalog::now_ms;
use crate::mesh::lan::{Lan, Seen};
use crate::mesh::members::Members;
use crate::mesh::pending::{self, Announcement, Approved, Grant};
use crate::os::identity::{self, NodeKey};
use crate::os::system::System;

/// Pending nodes remembered at once; announcements past this are ignored until some go.
pub const MAX_PENDING: usize = 64;
/// Fingerprints one approve request may name.
pub const MAX_APPROVE: usize = 64;
/// Approve handshakes a pending node serves at once (anyone on the LAN may connect).
const MAX_SERVING: usize = 8;

/// A pending node as a member lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingNode {
    pub fingerprint: String,
    pub node_id: String,
    /// Where it serves the approve handshake, `ip:port`.
    pub address: String,
    /// When we first heard it, unix ms.
    pub since: u64,
}

/// The pending announcements of our community heard on the LAN, by mDNS instance.
#[derive(Default)]
pub struct Pending {
    heard: Mutex<BTreeMap<String, (Announcement, u64)>>,
}

impl Pending {
    pub fn list(&self) -> Vec<PendingNode> {
        let mut l: Vec<PendingNode> = self
            .heard
            .lock()
            .unwrap()
            .values()
            .map(|(a, since)| PendingNode {
                fingerprint: a.fingerprint(),
                node_id: a.node_id.clone(),
                address: SocketAddr::new(a.ip, a.port).to_string(),
                since: *since,
            })
            .collect();
        l.sort_by(|a, b| (a.since, &a.fingerprint).cmp(&(b.since, &b.fingerprint)));
        l.dedup();
        l
    }

    fn heard(&self, instance: String, a: Announcement, now: u64) {
        let mut h = self.heard.lock().unwrap();
        if let Some((old, since)) = h.get(&instance) {
            if *old == a {
                return;
            }
            let since = *since;
            h.insert(instance, (a, since));
            return;
        }
        if h.len() >= MAX_PENDING {
            tracing::debug!("pending nodes: {MAX_PENDING} already listed, {instance} ignored");
            return;
        }
        tracing::info!(
            "pending node {} at {}:{} asks to join (fingerprint {})",
            a.node_id,
            a.ip,
            a.port,
            a.fingerprint()
        );
        h.insert(instance, (a, now));
    }

    fn gone(&self, instance: &str) {
        self.heard.lock().unwrap().remove(instance);
    }

    /// Where nodes announcing fingerprint `fp` are (a forged announcement may name a real
    /// node's key at another address: the handshake tells them apart).
    fn addresses(&self, fp: &str) -> Vec<SocketAddr> {
        self.heard
            .lock()
            .unwrap()
            .values()
            .filter(|(a, _)| a.fingerprint() == fp)
            .map(|(a, _)| SocketAddr::new(a.ip, a.port))
            .collect()
    }

    fn forget(&self, fp: &str) {
        self.heard
            .lock()
            .unwrap()
            .retain(|_, (a, _)| a.fingerprint() != fp);
    }

    #[cfg(test)]
    pub fn insert(&self, instance: &str, a: Announcement) {
        self.heard(instance.into(), a, now_ms());
    }
}

/// Browses pending announcements on the LAN (the mDNS socket of our exchange service) into
/// `pending`, those of `community` only.
pub fn browse(
    pending: Arc<Pending>,
    community: String,
    lan: &Lan,
) -> Result<(), crate::mesh::lan::DiscoveryError> {
    let mut seen = lan.browse(&format!("{}.local.", pending::DNSSD_TYPE))?;
    tokio::spawn(async move {
        while let Some(ev) = seen.recv().await {
            match ev {
                Seen::Resolved {
                    fullname,
                    port,
                    txt,
                } => {
                    let pairs: Vec<(&str, Option<&[u8]>)> = txt
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_deref()))
                        .collect();
                    match Announcement::from_txt(&pairs, port) {
                        Ok(a) if a.community == community => pending.heard(fullname, a, now_ms()),
                        Ok(_) => {}
                        Err(e) => tracing::debug!("mDNS: {fullname}: {e}"),
                    }
                }
                Seen::Removed(fullname) => pending.gone(&fullname),
            }
        }
    });
    Ok(())
}

/// How one fingerprint of an approve request went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub fingerprint: String,
    pub ok: bool,
    pub message: String,
}

/// Approves the pending nodes with fingerprints `fps` (canonical, see
/// `pending::parse_fingerprint`): each is sent our community's name and key, sealed to its
/// node key and signed by ours, with our exchange address as its first peer.
pub async fn approve(
    sys: &System,
    pending: &Pending,
    (community, members): (&str, &Mutex<Members>),
    exchange_port: u16,
    fps: &[String],
) -> Vec<Outcome> {
    let ready = (|| -> Result<(String, NodeKey)> {
        let key = crate::os::secrets::community_key(sys, None)?
            .context("this node holds no community key")?;
        let node = NodeKey::load(sys).context("our node key")?;
        Ok((key, node))
    })();
    let (key, node) = match ready {
        Ok(k) => k,
        Err(e) => {
            return fps
                .iter()
                .map(|f| Outcome {
                    fingerprint: f.clone(),
                    ok: false,
                    message: format!("{e:#}"),
                })
                .collect()
        }
    };
    let me = members.lock().unwrap().me().address;
    let grant = Grant {
        community: community.to_string(),
        key,
        peers: if me.is_unspecified() {
            Vec::new()
        } else {
            vec![SocketAddr::new(me, exchange_port).to_string()]
        },
    };
    let mut out = Vec::new();
    for fp in fps {
        let addrs = pending.addresses(fp);
        if addrs.is_empty() {
            let now: Vec<String> = pending.list().into_iter().map(|p| p.fingerprint).collect();
            out.push(Outcome {
                fingerprint: fp.clone(),
                ok: false,
                message: format!(
                    "no pending node with fingerprint {fp} is announced on this LAN ({}); compare with the fingerprint on the node's console",
                    if now.is_empty() {
                        "none is pending now".to_string()
                    } else {
                        format!("pending now: {}", now.join(", "))
                    }
                ),
            });
            continue;
        }
        let mut last = String::new();
        let mut ok = None;
        for a in addrs {
            match pending::approve(a, fp, &grant, &node).await {
                Ok(()) => {
                    ok = Some(a);
                    break;
                }
                Err(e) => {
                    tracing::warn!("approving {fp} at {a}: {e}");
                    last = format!("{a}: {e}");
                }
            }
        }
        out.push(match ok {
            Some(a) => {
                tracing::info!("approved pending node {fp} at {a}");
                pending.forget(fp);
                Outcome {
                    fingerprint: fp.clone(),
                    ok: true,
                    message: format!("approved the node at {a}: it joins now"),
                }
            }
            None => Outcome {
                fingerprint: fp.clone(),
                ok: false,
                message: format!("not approved: {last}"),
            },
        });
    }
    out
}

/// What a pending node waits with.
pub struct Waiting<'a> {
    pub community: &'a str,
    pub node_id: &'a str,
    pub name: &'a str,
    /// Our LAN address (the primary interface's), announced for members to connect to.
    pub address: Option<IpAddr>,
    pub exchange_port: u16,
    pub https_port: u16,
}

/// The text a pending node shows on its console and login screen.
pub fn waiting_text(community: &str, fp: &str) -> String {
    format!(
        "waiting for approval to join community {community:?}: node key fingerprint {fp}; \
         on a member, compare it and run `cloudy-agent approve {fp}` (or Pending nodes in its dashboard)"
    )
}

/// Announces this node as pending and serves the approve handshake on its exchange port until
/// one approval opens; stores the key it grants (as a seed's) and withdraws the announcement.
/// Returns the grant (community name, key, the approver's address as a peer).
pub async fn wait_for_approval(sys: &System, w: Waiting<'_>) -> Result<Approved> {
    let node = NodeKey::ensure(sys).context("the node signing key")?;
    let fp = pending::fingerprint(&node.public_hex()).expect("our own key");
    let text = waiting_text(w.community, &fp);
    let addrs = match crate::os::network::Net::connect() {
        Ok(net) => crate::os::issue::addresses(&net).await,
        Err(_) => Vec::new(),
    };
    let screen = crate::os::issue::Screen {
        name: w.name.to_string(),
        https_port: w.https_port,
        certificate: Err(text.clone()),
        seed: format!("pending: fingerprint {fp}"),
        setup: false,
    };
    if let Err(e) = crate::os::issue::write(sys, &screen, &addrs) {
        tracing::warn!("login screen: {e}");
    }
    if let Some(console) = identity::console_path(sys) {
        let _ = identity::show_on_console(&console, &format!("\ncloudy: {text}\n\n"));
    }
    println!(
        "{}",
        serde_json::json!({"cloudy": "pending", "community": w.community, "fingerprint": fp, "node_id": w.node_id})
    );
    let address = w
        .address
        .or_else(|| addrs.iter().copied().find(IpAddr::is_ipv4))
        .or_else(|| addrs.first().copied());
    match address {
        Some(ip) => {
            let a = Announcement {
                community: w.community.to_string(),
                node_id: w.node_id.to_string(),
                ip,
                port: w.exchange_port,
                node_key: node.public_hex(),
            };
            if let Err(e) = avahi::pending(sys, Some((&format!("{} pending", w.name), &a))) {
                tracing::error!("announcing this node as pending: {e} (approve it by address)");
            }
        }
        None => tracing::error!("no address to announce: members cannot list this node"),
    }
    let listener =
        tokio::net::TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, w.exchange_port))
            .await
            .or(
                tokio::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, w.exchange_port))
                    .await,
            )
            .with_context(|| format!("listening on exchange port {}", w.exchange_port))?;
    let taken = Arc::new(AtomicBool::new(false));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SERVING));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let community = w.community.to_string();
    let approved = loop {
        tokio::select! {
            got = rx.recv() => {
                if let Some(a) = got { break a; }
            }
            acc = listener.accept() => {
                let Ok((s, peer)) = acc else { continue };
                let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
                let (node, community, taken, tx) = (node.clone(), community.clone(), taken.clone(), tx.clone());
                let sys = sys.clone();
                tokio::spawn(async move {
                    // The key is stored before the approver hears "joined": one approval,
                    // confirmed only once it is ours.
                    let claim = |g: &Grant| {
                        if taken.swap(true, Ordering::SeqCst) {
                            return Err("this node was approved already (it takes one approval)".to_string());
                        }
                        crate::os::secrets::community_key(&sys, Some(&g.key)).map(|_| ()).map_err(|e| {
                            taken.store(false, Ordering::SeqCst);
                            tracing::error!("storing the community key: {e}");
                            "the node could not store the key (see its log)".to_string()
                        })
                    };
                    match pending::serve(s, &node, &community, &claim).await {
                        Ok(a) => {
                            tracing::info!("approved by {peer} (node key {})", a.by);
                            let _ = tx.send(a);
                        }
                        Err(e) => tracing::info!("approve attempt from {peer}: {e}"),
                    }
                    drop(slot);
                });
            }
        }
    };
    drop(listener);
    if let Err(e) = avahi::pending(sys, None) {
        tracing::warn!("withdrawing the pending announcement: {e}");
    }
    let by = pending::fingerprint(&approved.by).unwrap_or_default();
    let line = format!(
        "approved: joining community {:?} (approved by the node with fingerprint {by})",
        approved.grant.community
    );
    if let Some(console) = identity::console_path(sys) {
        let _ = identity::show_on_console(&console, &format!("\ncloudy: {line}\n\n"));
    }
    println!(
        "{}",
        serde_json::json!({"cloudy": "approved", "community": approved.grant.community, "by": by})
    );
    // The handshake's task may still hold its end; give the port back before the mesh binds it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(approved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(seed: u8, ip: &str) -> Announcement {
        Announcement {
            community: "test".into(),
            node_id: "0123456789abcdef0123456789abcdef".into(),
            ip: ip.parse().unwrap(),
            port: 6655,
            node_key: NodeKey::from_seed([seed; 32]).public_hex(),
        }
    }

    #[test]
    fn the_list_is_bounded_and_keeps_first_sight() {
        let p = Pending::default();
        p.heard("a".into(), ann(1, "10.0.0.1"), 5);
        p.heard("a".into(), ann(1, "10.0.0.2"), 9);
        let l = p.list();
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].since, l[0].address.as_str()), (5, "10.0.0.2:6655"));
        for i in 0..200u8 {
            p.heard(format!("x{i}"), ann(i, "10.0.0.3"), 10);
        }
        assert_eq!(p.list().len(), MAX_PENDING);
        let fp = ann(1, "10.0.0.1").fingerprint();
        assert_eq!(p.addresses(&fp).len(), 2, "instance a and x1");
        p.forget(&fp);
        assert!(p.addresses(&fp).is_empty());
        p.gone("x2");
        assert!(p.addresses(&ann(2, "10.0.0.3").fingerprint()).is_empty());
    }
}
