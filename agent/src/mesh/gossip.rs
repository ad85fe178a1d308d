//! Keeping the member list current: swapping lists with members, bootstrap peers and exchange
//! services found on the LAN or through Serf; following our own address; and bringing tinc's
//! files (and tincd) in line whenever the list changes.

use anyhow::Result;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::candidates::{Offered, DIALS_PER_ROUND, DIAL_TIMEOUT};
use super::exchange;
use super::lan::Lan;
use super::members::{Member, Members};
use super::rekey;
use super::Mesh;
use crate::os::identity;
use crate::os::network::Net;
use crate::os::supervisor::Control;
use cloudy_model::seed::Network;

/// Gossip rounds start fast so a new node meshes within seconds, then slow down when nothing
/// changes.
const ROUND_MIN: Duration = Duration::from_millis(250);
const ROUND_MAX: Duration = Duration::from_secs(30);
/// While a member or bootstrap peer has never answered, retry at least this often.
const ROUND_PENDING: Duration = Duration::from_secs(1);
/// Rounds in a row with a peer that never answered that still retry quickly: a dead bootstrap
/// address (or a community we cannot join) is not hammered forever.
const PENDING_ROUNDS: u32 = 30;

/// Publishes our exchange service on the LAN and takes the ones found there.
pub fn start_lan(mesh: &Arc<Mesh>, port: u16) -> Result<Lan> {
    let (name, id, address) = {
        let ms = mesh.members.lock().unwrap();
        (ms.me().tinc_name(), ms.me().id.clone(), ms.me().address)
    };
    let address = (!address.is_unspecified()).then_some(address);
    let (lan, found) = Lan::start(&name, &id, address, port, &mesh.key.tag())?;
    introduce(mesh, found, "on the LAN");
    keep_foreign_count(mesh, lan.foreign.clone());
    Ok(lan)
}

/// How many nodes with another community key the LAN showed, for `cloudy-agent status`.
pub const FOREIGN_FILE: &str = "/run/cloudy/foreign-keys";

/// Writes the LAN's count of other-key join services to `FOREIGN_FILE` as it grows.
fn keep_foreign_count(mesh: &Arc<Mesh>, count: Arc<std::sync::atomic::AtomicUsize>) {
    let sys = mesh.sys.clone();
    tokio::spawn(async move {
        let mut written = 0;
        loop {
            let n = count.load(std::sync::atomic::Ordering::Relaxed);
            if n != written {
                match sys.write_atomic(FOREIGN_FILE, format!("{n}\n").as_bytes(), 0o644) {
                    Ok(()) => written = n,
                    Err(e) => tracing::warn!("{FOREIGN_FILE}: {e}"),
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
}

/// Exchange services found outside our member list (`via` mDNS or Serf): the next gossip
/// round swaps member lists with each one not yet known.
pub fn introduce(
    mesh: &Arc<Mesh>,
    mut found: tokio::sync::mpsc::UnboundedReceiver<SocketAddr>,
    via: &'static str,
) {
    let m = mesh.clone();
    tokio::spawn(async move {
        let mut refusals: u64 = 0;
        while let Some(addr) = found.recv().await {
            let known = m
                .members
                .lock()
                .unwrap()
                .others()
                .any(|o| o.address == addr.ip() && o.exchange_port == addr.port());
            if known {
                continue;
            }
            let offered = m.lan.lock().unwrap().offer(addr, Instant::now());
            match offered {
                Offered::Added => {
                    tracing::info!("found an exchange service {via} at {addr}");
                    m.wake.notify_one();
                }
                Offered::Seen => {}
                // Anyone on the LAN can announce these: say so, but not once per record.
                refused => {
                    refusals += 1;
                    if refusals.is_power_of_two() {
                        tracing::warn!(
                            "exchange service {via} at {addr} not taken ({refused:?}); \
                             {refusals} refused so far"
                        );
                    }
                }
            }
        }
    });
}

/// Brings tinc's files in line with the member list whenever it changes.
pub async fn reconcile(mesh: Arc<Mesh>) {
    // The community key follows rekeys for as long as the lists are kept.
    tokio::spawn(follow_key(mesh.clone()));
    loop {
        mesh.changed.notified().await;
        let snapshot = {
            let mut ms = mesh.members.lock().unwrap();
            let settled = ms.settle_vpn(mesh.subnet);
            if let Ok(true) = settled {
                tracing::warn!(
                    "VPN address held by a member that had it first (as we knew it); moved to {}",
                    ms.me().vpn
                );
                mesh.wake.notify_one();
            }
            let snapshot = ms.clone();
            drop(ms);
            mesh.set_vpn_error(settled.err().map(|e| e.to_string()));
            snapshot
        };
        if let Err(e) = mesh.save_members(&snapshot) {
            tracing::error!("{e:#}");
        }
        match super::tinc::render(&mesh.paths, &mesh.settings, &snapshot) {
            Ok(r) if r.restart => {
                let _ = mesh.tincd.send(Control::Restart);
            }
            Ok(r) if r.reload => {
                let _ = mesh.tincd.send(Control::Reload);
            }
            Ok(_) => {}
            Err(e) => tracing::error!("tinc config: {e}"),
        }
    }
}

/// Whom a round talks to: a member (by id), a bootstrap peer or LAN find (by its name), at
/// an address.
type Target = (Option<String>, Option<String>, SocketAddr);

/// A target and what the exchange with it brought.
type Exchanged = (
    Option<String>,
    Option<String>,
    SocketAddr,
    Result<Vec<Member>, exchange::ExchangeError>,
);

/// What gossip remembers between rounds.
#[derive(Default)]
struct Rounds {
    /// Members talked to since our own record last changed.
    synced: HashSet<String>,
    /// Bootstrap peers answered since then.
    boot_done: HashSet<String>,
    /// Our record's revision when `synced` was last cleared.
    my_rev: u64,
    /// Rounds in a row with a peer that never answered.
    pending_rounds: u32,
}

/// Swaps member lists with bootstrap peers and every member not yet talked to since our own
/// record last changed, plus one random member per round so news keeps spreading.
pub async fn gossip(mesh: Arc<Mesh>, bootstrap: Vec<String>, network: Option<Network>) {
    let mut state = Rounds::default();
    let mut round = ROUND_MIN;
    let net = Net::connect().ok();
    loop {
        if let Some(net) = &net {
            follow_address(&mesh, net, network.as_ref()).await;
        }
        let (ours, targets) = targets(&mesh, &mut state, &bootstrap).await;
        let results = futures_util::future::join_all(targets.into_iter().map(|(id, b, addr)| {
            let key = mesh.key.clone();
            let ours = ours.clone();
            async move {
                let dial = exchange::exchange(addr, &key, &ours);
                // Every dial ends (exchange::TIMEOUT at the latest); one to a mere candidate
                // sooner, so what anyone can announce cannot hold descriptors for long.
                let r = if b.as_deref().is_some_and(|b| b.starts_with("lan:")) {
                    tokio::time::timeout(DIAL_TIMEOUT, dial)
                        .await
                        .unwrap_or(Err(exchange::ExchangeError::Timeout))
                } else {
                    dial.await
                };
                (id, b, addr, r)
            }
        }))
        .await;
        let (news, pending) = take_results(&mesh, &mut state, results);
        round = next_round(&mesh, &mut state, round, news, pending);
        tokio::select! {
            _ = tokio::time::sleep(round) => {}
            _ = mesh.wake.notified() => { round = ROUND_MIN; }
        }
    }
}

/// DHCP may give or change our address after boot: follow it.
async fn follow_address(mesh: &Mesh, net: &Net, network: Option<&Network>) {
    let Ok(Some(p)) = net.apply(network, false, &mesh.paths.netname).await else {
        return;
    };
    let Some(a) = p.address else {
        return;
    };
    let mut ms = mesh.members.lock().unwrap();
    if ms.update_me(|m| m.address = a) {
        tracing::info!("our address is now {a}");
        mesh.changed.notify_one();
        if let Some(lan) = mesh.mdns.lock().unwrap().as_mut() {
            if let Err(e) = lan.publish(a) {
                tracing::warn!("{e}");
            }
        }
    }
}

/// Our list, and whom this round talks to.
async fn targets(
    mesh: &Mesh,
    state: &mut Rounds,
    bootstrap: &[String],
) -> (Vec<Member>, Vec<Target>) {
    let (ours, me_rev, members) = {
        let ms = mesh.members.lock().unwrap();
        (ms.list(), ms.me().rev, member_targets(&ms, &state.synced))
    };
    if me_rev != state.my_rev {
        // Our record changed: everyone must hear it again.
        state.synced.clear();
        state.boot_done.clear();
        state.my_rev = me_rev;
    }
    let mut all: Vec<Target> = members.into_iter().map(|(id, a)| (id, None, a)).collect();
    for b in bootstrap.iter().filter(|b| !state.boot_done.contains(*b)) {
        if let Ok(mut addrs) = tokio::net::lookup_host(b.as_str()).await {
            if let Some(a) = addrs.next() {
                all.push((None, Some(b.clone()), a));
            }
        }
    }
    // A bounded number per round: every dial holds a descriptor until it ends (at the latest
    // after exchange::TIMEOUT).
    for a in mesh
        .lan
        .lock()
        .unwrap()
        .due(Instant::now(), DIALS_PER_ROUND)
    {
        all.push((None, Some(format!("lan:{a}")), a));
    }
    (ours, all)
}

/// Members not talked to yet; else one at random.
fn member_targets(ms: &Members, synced: &HashSet<String>) -> Vec<(Option<String>, SocketAddr)> {
    let mut targets: Vec<(Option<String>, SocketAddr)> = ms
        .others()
        .filter(|m| !synced.contains(&m.id))
        .map(|m| {
            (
                Some(m.id.clone()),
                SocketAddr::new(m.address, m.exchange_port),
            )
        })
        .collect();
    if targets.is_empty() {
        let others: Vec<&Member> = ms.others().collect();
        if !others.is_empty() {
            let m = others[identity::random_bytes::<1>()[0] as usize % others.len()];
            targets.push((
                Some(m.id.clone()),
                SocketAddr::new(m.address, m.exchange_port),
            ));
        }
    }
    targets
}

/// Merges what the round brought; (news, a peer still pending).
fn take_results(mesh: &Mesh, state: &mut Rounds, results: Vec<Exchanged>) -> (bool, bool) {
    let mut news = false;
    let mut pending = false;
    for (id, b, addr, r) in results {
        match r {
            Ok(theirs) => {
                let mut ms = mesh.members.lock().unwrap();
                let merged = ms.merge(theirs);
                for r in &merged.refused {
                    tracing::warn!("from {addr}: refused {r}");
                }
                news |= merged.changed;
                if let Some(id) = id {
                    state.synced.insert(id);
                }
                if let Some(b) = b {
                    if b.starts_with("lan:") {
                        mesh.lan.lock().unwrap().answered(&addr);
                    } else {
                        state.boot_done.insert(b);
                    }
                }
            }
            Err(e) => {
                if b.as_deref().is_some_and(|b| b.starts_with("lan:")) {
                    mesh.lan.lock().unwrap().failed(&addr, Instant::now());
                }
                pending |= b.is_some() || id.as_ref().is_some_and(|id| !state.synced.contains(id));
                tracing::debug!("exchange with {addr}: {e}");
            }
        }
    }
    (news, pending)
}

/// How long until the next round.
fn next_round(
    mesh: &Mesh,
    state: &mut Rounds,
    round: Duration,
    news: bool,
    pending: bool,
) -> Duration {
    if !pending {
        state.pending_rounds = 0;
    }
    // Until DHCP (or the seed) gives us an address nobody can reach us: look again soon.
    let addressless = mesh.members.lock().unwrap().me().address.is_unspecified();
    let mut round = if news {
        mesh.changed.notify_one();
        ROUND_MIN
    } else if pending && state.pending_rounds < PENDING_ROUNDS {
        state.pending_rounds += 1;
        (round * 2).min(ROUND_PENDING)
    } else {
        (round * 2).min(ROUND_MAX)
    };
    if addressless {
        round = round.min(ROUND_PENDING);
    }
    round
}

/// Keeps the node on the current key: stores every switch and moves the LAN tag and Serf with
/// it, and asks one member after another for the key they hold (`rekey::PULL`).
pub async fn follow_key(mesh: Arc<Mesh>) {
    let mut changed = mesh.key.subscribe();
    let mut next = 0usize;
    let mut tick = tokio::time::interval(rekey::PULL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = changed.changed() => {
                if r.is_err() {
                    return;
                }
                switched(&mesh).await;
            }
            _ = tick.tick() => {
                next = pull(&mesh, next).await;
            }
        }
    }
}

async fn switched(mesh: &Arc<Mesh>) {
    if let Err(e) = rekey::save(&mesh.sys, &mesh.key) {
        tracing::error!("storing the new community key: {e}");
    }
    let tag = mesh.key.tag();
    if let Some(lan) = mesh.mdns.lock().unwrap().as_mut() {
        if let Err(e) = lan.set_tag(&tag) {
            tracing::warn!("republishing our exchange service: {e}");
        }
    }
    mesh.changed.notify_one();
    mesh.wake.notify_one();
    let (auth, new) = (mesh.key.serf_rpc_auth(), mesh.key.serf_key());
    let old = mesh.key.serf_keys_old();
    let r = tokio::task::spawn_blocking(move || crate::mesh::serf::use_key(&auth, &new)).await;
    match r {
        Ok(Ok(())) => {
            tracing::info!("serf: gossip key switched");
            let auth = mesh.key.serf_rpc_auth();
            tokio::spawn(async move {
                tokio::time::sleep(exchange::overlap()).await;
                let _ = tokio::task::spawn_blocking(move || {
                    for k in old {
                        if let Err(e) = crate::mesh::serf::remove_key(&auth, &k) {
                            tracing::debug!("serf: removing the old gossip key: {e}");
                        }
                    }
                })
                .await;
            });
        }
        Ok(Err(e)) => tracing::warn!("serf: gossip key not switched: {e}"),
        Err(e) => tracing::warn!("serf: {e}"),
    }
}

/// Asks the `next`-th other member for its key; adopts it if newer. The index to ask next.
async fn pull(mesh: &Arc<Mesh>, next: usize) -> usize {
    let (me, others) = {
        let ms = mesh.members.lock().unwrap();
        (ms.me.clone(), ms.others().cloned().collect::<Vec<_>>())
    };
    if others.is_empty() {
        return 0;
    }
    let m = &others[next % others.len()];
    let addr = SocketAddr::new(m.address, m.exchange_port);
    match exchange::fetch_newkey(addr, &mesh.key, &mesh.node_key, &me, m).await {
        Ok(msg) => {
            let g = msg.generation();
            if g.newer_than(&mesh.key.current()) {
                {
                    let mut ms = mesh.members.lock().unwrap();
                    let removed: Vec<String> = msg
                        .removed
                        .iter()
                        .filter(|r| **r != ms.me)
                        .cloned()
                        .collect();
                    ms.remove(&removed);
                }
                if mesh.key.adopt(g) {
                    tracing::info!(
                        "community key replaced while we were away (serial {}), from {}",
                        msg.serial,
                        m.name
                    );
                }
            }
        }
        Err(e) => tracing::debug!("asking {} for the community key: {e}", m.name),
    }
    next + 1
}
