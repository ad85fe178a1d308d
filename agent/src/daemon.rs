//! `cloudy-agent run`: applies the seed, prints the ready line, then (when the seed names a
//! community) keeps the node in its mesh: join service, gossip with members, tincd supervised.
//! Every step reconciles, so a restart after a crash at any point ends in the same node.

use anyhow::{Context, Result};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

use crate::identity::{self, Credential};
use crate::join::{self, JoinKey};
use crate::members::{vpn_candidate, Member, Members, MEMBERS_FILE};
use crate::network::{Net, Primary};
use crate::supervise::{self, Control};
use crate::system::System;
use crate::{ready, secrets, seed, tinc};

/// Gossip rounds start fast so a new node meshes within seconds, then slow down when nothing
/// changes.
const ROUND_MIN: Duration = Duration::from_millis(250);
const ROUND_MAX: Duration = Duration::from_secs(30);
/// At most this many join connections served at once; more are dropped.
const MAX_SERVING: usize = 64;
/// While a member or bootstrap peer has never answered, retry at least this often.
const ROUND_PENDING: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Options {
    /// Change links and addresses (the real node, or a test's network namespace).
    pub manage_network: bool,
    pub tincd: PathBuf,
    pub agent_exe: PathBuf,
    /// Apply (keys and tinc config included) and print ready, but start no tincd and do not
    /// stay to run the mesh.
    pub once: bool,
    /// Debian's serf agent, for community-wide discovery; none: mDNS only.
    pub serf: Option<PathBuf>,
}

pub fn run(sys: &System, opts: &Options) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    rt.block_on(boot(sys, opts))
}

struct Mesh {
    sys: System,
    key: JoinKey,
    members: Arc<Mutex<Members>>,
    /// Something changed: rerender tinc config and save the list.
    changed: Notify,
    /// Gossip should run a round now instead of sleeping.
    wake: Notify,
    tincd: mpsc::UnboundedSender<Control>,
    tincd_status: supervise::Shared,
    /// Join services seen on the LAN by mDNS, not yet answered.
    lan: Mutex<HashSet<SocketAddr>>,
    /// Our mDNS publication, redone when our address changes.
    mdns: Mutex<Option<crate::discovery::Lan>>,
    paths: tinc::Paths,
    settings: tinc::Settings,
    subnet: (std::net::Ipv4Addr, u8),
}

async fn boot(sys: &System, opts: &Options) -> Result<i32> {
    let cmdline = if sys.is_live() {
        std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
    } else {
        String::new()
    };
    let loaded = seed::load(sys, &cmdline);
    for e in &loaded.errors {
        tracing::error!("seed: {e}");
    }
    let seed = &loaded.seed;
    let mut errors: Vec<String> = Vec::new();

    let name = seed
        .node
        .name
        .clone()
        .unwrap_or_else(|| identity::FALLBACK_NAME.to_string());
    identity::apply_hostname(sys, &name).context("applying the node's hostname")?;
    let node_id = identity::node_id(sys).context("the node id")?;
    match identity::dashboard_credential(
        sys,
        seed.dashboard
            .as_ref()
            .and_then(|d| d.password_hash.as_deref()),
    ) {
        Ok(Credential::Generated(p)) => {
            // Shown once, on the console of the first boot; only its hash is kept.
            println!("cloudy: dashboard login: admin / {p}  (shown once; set [dashboard] password_hash in the seed to choose one)");
        }
        Ok(_) => {}
        Err(e) => errors.push(format!("dashboard credential: {e}")),
    }
    if let Err(e) = identity::apply_ssh_keys(
        sys,
        seed.ssh
            .as_ref()
            .map(|s| s.authorized_keys.as_slice())
            .unwrap_or(&[]),
    ) {
        errors.push(format!("ssh keys: {e}"));
    }
    let community_key =
        match secrets::community_key(sys, seed.community.as_ref().and_then(|c| c.key.as_deref())) {
            Ok(k) => k,
            Err(e) => {
                errors.push(e.to_string());
                None
            }
        };
    // The boot medium is readable by anyone holding the card: scrub secrets once stored.
    if let Some(src) = &loaded.source {
        let on_boot_medium = seed::SEED_PATHS.iter().any(|p| sys.path(p) == *src);
        let has_secret = seed.community.as_ref().is_some_and(|c| c.key.is_some())
            || seed
                .dashboard
                .as_ref()
                .is_some_and(|d| d.password_hash.is_some());
        if on_boot_medium && has_secret {
            match secrets::scrub_seed(src) {
                Ok(true) => {
                    tracing::info!("moved secrets from {} into /var/lib/cloudy", src.display())
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!("could not scrub {} (read-only medium?): {e}", src.display())
                }
            }
        }
    }

    let primary = match primary_network(seed, opts).await {
        Ok(p) => p,
        Err(e) => {
            errors.push(format!("network: {e}"));
            None
        }
    };

    let mut ready = ready::Ready {
        cloudy: "ready",
        version: env!("CARGO_PKG_VERSION"),
        hostname: if sys.is_live() {
            identity::kernel_hostname()
        } else {
            name.clone()
        },
        node: name.clone(),
        kernel: ready::kernel_release(),
        arch: std::env::consts::ARCH,
        seed: loaded.source.as_ref().map(|p| p.display().to_string()),
        seed_errors: loaded.errors.clone(),
        uptime_s: 0.0,
        node_id: node_id.clone(),
        interface: primary.as_ref().map(|p| p.interface.clone()),
        address: primary
            .as_ref()
            .and_then(|p| p.address)
            .map(|a| a.to_string()),
        community: None,
        vpn_address: None,
        tinc_name: None,
        services: seed
            .services
            .as_ref()
            .map(|s| s.enable.clone())
            .unwrap_or_default(),
        errors: Vec::new(),
    };

    let community = match (&seed.community, community_key) {
        (Some(c), Some(k)) => Some((c.clone(), k)),
        (Some(c), None) => {
            errors.push(format!(
                "community {:?} has no key (none in the seed, none stored): staying alone; add [community] key",
                c.name
            ));
            None
        }
        _ => None,
    };
    let Some((community, key)) = community else {
        ready.errors = errors;
        ready.uptime_s = ready::uptime_s();
        println!("{}", ready.line());
        // Services listen on the community VPN: without a community none can start. Say so
        // in the line a verify stage waits for, rather than leaving it waiting.
        let enabled = seed
            .services
            .as_ref()
            .map(|s| s.enable.clone())
            .unwrap_or_default();
        if !enabled.is_empty() && !opts.once {
            let line = crate::services::manager::ServicesLine {
                cloudy: "services",
                running: Vec::new(),
                failed: enabled
                    .into_iter()
                    .map(|n| {
                        (
                            n,
                            "no [community] in the seed: services need the community VPN".into(),
                        )
                    })
                    .collect(),
                elapsed_s: 0.0,
            };
            println!("{}", serde_json::to_string(&line)?);
        }
        return Ok(0);
    };

    let mesh = match start_mesh(
        sys,
        opts,
        seed,
        &community,
        &key,
        &node_id,
        &name,
        primary.as_ref(),
    )
    .await
    {
        Ok(m) => m,
        Err(e) => {
            // The node must still come up and say what is wrong, once; then keep trying here
            // rather than exiting into a restart loop that would repeat the ready line.
            errors.push(format!("mesh: {e:#}"));
            ready.errors = errors;
            ready.community = Some(community.name.clone());
            ready.uptime_s = ready::uptime_s();
            println!("{}", ready.line());
            if opts.once {
                return Ok(0);
            }
            let mut wait = Duration::from_secs(2);
            let mesh = loop {
                tokio::time::sleep(wait).await;
                match start_mesh(
                    sys,
                    opts,
                    seed,
                    &community,
                    &key,
                    &node_id,
                    &name,
                    primary.as_ref(),
                )
                .await
                {
                    Ok(m) => break m,
                    Err(e) => tracing::error!("mesh still cannot start: {e:#}"),
                }
                wait = (wait * 2).min(Duration::from_secs(60));
            };
            return run_mesh(mesh, seed, &community, opts).await;
        }
    };
    {
        let ms = mesh.members.lock().unwrap();
        ready.community = Some(community.name.clone());
        ready.vpn_address = Some(ms.me().vpn.to_string());
        ready.tinc_name = Some(ms.me().tinc_name());
    }
    ready.errors = errors;
    ready.uptime_s = ready::uptime_s();
    println!("{}", ready.line());
    if opts.once {
        return Ok(0);
    }
    run_mesh(mesh, seed, &community, opts).await
}

async fn primary_network(seed: &seed::Seed, opts: &Options) -> Result<Option<Primary>> {
    let net = Net::connect()?;
    Ok(net
        .apply(seed.network.as_ref(), opts.manage_network, seed.netname())
        .await?)
}

#[allow(clippy::too_many_arguments)]
async fn start_mesh(
    sys: &System,
    opts: &Options,
    seed: &seed::Seed,
    community: &seed::Community,
    key: &str,
    node_id: &str,
    name: &str,
    primary: Option<&Primary>,
) -> Result<Arc<Mesh>> {
    let paths = tinc::Paths::new(sys, seed.netname());
    let tincd = opts.tincd.clone();
    let pk_paths = paths.clone();
    let pubkey =
        tokio::task::spawn_blocking(move || tinc::ensure_keys(&pk_paths, &tincd)).await??;
    let subnet = seed.vpn_subnet();
    let address = primary
        .and_then(|p| p.address)
        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let fresh = Member {
        id: node_id.into(),
        name: name.into(),
        address,
        tinc_port: seed.tinc_port(),
        join_port: seed.join_port(),
        vpn: vpn_candidate(node_id, subnet, 0),
        pubkey: pubkey.clone(),
        rev: 1,
    };
    let mut members = match load_members(sys, node_id) {
        Some(ms) => ms,
        None => Members::new(fresh.clone()),
    };
    members.update_me(|m| {
        m.name = fresh.name.clone();
        m.address = fresh.address;
        m.tinc_port = fresh.tinc_port;
        m.join_port = fresh.join_port;
        m.pubkey = pubkey;
        // A VPN address outside a changed subnet is meaningless.
        if !in_subnet(m.vpn, subnet) {
            m.vpn = fresh.vpn;
        }
    });
    members.resolve_vpn_collision(subnet);
    save_members(sys, &members)?;
    let settings = tinc::Settings {
        mode: seed.tinc_mode(),
        port: seed.tinc_port(),
        vpn_prefix: subnet.1,
        agent_exe: opts.agent_exe.clone(),
        root: sys.root().to_path_buf(),
    };
    tinc::render(&paths, &settings, &members)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let tincd_status = supervise::Shared::default();
    if !opts.once {
        tokio::spawn(supervise::supervise(
            supervise::tincd(&opts.tincd, &paths),
            tincd_status.clone(),
            rx,
        ));
    }
    Ok(Arc::new(Mesh {
        sys: sys.clone(),
        key: JoinKey::derive(&community.name, key),
        members: Arc::new(Mutex::new(members)),
        changed: Notify::new(),
        wake: Notify::new(),
        tincd: tx,
        tincd_status,
        lan: Mutex::new(HashSet::new()),
        mdns: Mutex::new(None),
        paths,
        settings,
        subnet,
    }))
}

fn in_subnet(ip: std::net::Ipv4Addr, (net, prefix): (std::net::Ipv4Addr, u8)) -> bool {
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
            let mut clean = Members::new(ms.members[node_id].clone());
            clean.merge(ms.members.into_values().collect());
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

async fn run_mesh(
    mesh: Arc<Mesh>,
    seed: &seed::Seed,
    community: &seed::Community,
    opts: &Options,
) -> Result<i32> {
    let listener =
        tokio::net::TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, seed.join_port()))
            .await
            .or(
                tokio::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, seed.join_port()))
                    .await,
            )
            .with_context(|| format!("listening on join port {}", seed.join_port()))?;
    let share = sharing(&mesh, seed, community);
    let manager = crate::services::manager::Manager::new(
        mesh.sys.clone(),
        opts.agent_exe.clone(),
        seed.services
            .as_ref()
            .map(|s| s.enable.clone())
            .unwrap_or_default(),
        community.name.clone(),
        mesh.members.clone(),
        share.clone(),
        vec![("tincd".into(), mesh.tincd_status.clone())],
    );
    tokio::spawn(serve(
        mesh.clone(),
        share.clone(),
        manager.clone(),
        listener,
    ));
    tokio::spawn(reconcile(mesh.clone()));
    match start_lan(&mesh, seed.join_port()) {
        Ok(lan) => {
            if let Err(e) = crate::publish::browse_lan(share.clone(), &lan).await {
                tracing::warn!("no mDNS service browsing: {e}");
            }
            *mesh.mdns.lock().unwrap() = Some(lan)
        }
        Err(e) => {
            tracing::warn!("no LAN discovery ({e}); only the seed's bootstrap peers will be tried")
        }
    }
    tokio::spawn(crate::publish::publish(share.clone(), seed.join_port()));
    tokio::spawn(crate::publish::keep_catalog(share.clone()));
    match opts.serf.as_ref().filter(|p| p.exists()) {
        Some(exe) => {
            let serf = crate::serf::Serf {
                exe: exe.clone(),
                sys: mesh.sys.clone(),
                key: mesh.key.serf_key(),
                rpc_auth: mesh.key.serf_rpc_auth(),
                desired: share.serf.clone(),
            };
            match serf.start() {
                Ok(rx) => {
                    // Serf members missing from our member list: Serf's keyring already
                    // proved they hold the community key, and swapping lists with them lets
                    // a crowd that starts at once converge through Serf's gossip instead of
                    // one bootstrap node.
                    let (tx, found) = tokio::sync::mpsc::unbounded_channel();
                    tokio::spawn(crate::publish::follow_serf(share.clone(), rx, tx));
                    introduce(&mesh, found, "through serf");
                }
                Err(e) => tracing::warn!("no serf: {e}"),
            }
        }
        None => tracing::warn!(
            "serf not found ({:?}): services are found on the LAN and VPN by mDNS only",
            opts.serf
        ),
    }
    start_dashboard(&mesh, &share, seed, opts);
    tokio::spawn(gossip(
        mesh.clone(),
        community.peers.clone(),
        seed.network.clone(),
        opts.manage_network,
    ));
    // After the mesh: services listen on the VPN address and find providers in the catalog.
    tokio::spawn(manager.clone().run());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping");
    // Nobody checks our services' health once we are gone: withdraw them.
    if let Err(e) = crate::avahi::sync(&mesh.sys, &[]) {
        tracing::warn!("withdrawing avahi service files: {e}");
    }
    manager.stop().await;
    let _ = mesh.tincd.send(Control::Stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(0)
}

/// The probe (first scan soon, then periodic), the control socket and the dashboard.
fn start_dashboard(
    mesh: &Arc<Mesh>,
    share: &Arc<crate::publish::Sharing>,
    seed: &seed::Seed,
    opts: &Options,
) {
    let me = mesh.members.lock().unwrap().me().id.clone();
    let prober = Arc::new(crate::probe::Prober::new(
        mesh.sys.clone(),
        me,
        crate::probe::Options::default(),
    ));
    let cmdline = if mesh.sys.is_live() {
        std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
    } else {
        String::new()
    };
    let agent = Arc::new(crate::control::Agent {
        sys: mesh.sys.clone(),
        share: share.clone(),
        prober,
        seed_errors: seed::load(&mesh.sys, &cmdline).errors,
        pidfile: mesh.paths.pidfile.clone(),
        views: Mutex::new(Vec::new()),
    });
    crate::control::start(agent);
    crate::dashboard::supervise(
        mesh.sys.clone(),
        opts.agent_exe.clone(),
        seed.dashboard_port(),
    );
}

/// Our services (built-in and declared in the seed) and the catalog they feed.
fn sharing(
    mesh: &Arc<Mesh>,
    seed: &seed::Seed,
    community: &seed::Community,
) -> Arc<crate::publish::Sharing> {
    use crate::services::{Declared, Service, TincVpn};
    let mut services: Vec<Arc<dyn Service>> = vec![Arc::new(TincVpn {
        port: mesh.settings.port,
        members: mesh.members.clone(),
        pidfile: mesh.paths.pidfile.clone(),
    })];
    for p in seed.services.iter().flat_map(|s| s.publish.iter()) {
        services.push(Arc::new(Declared(p.clone())));
    }
    crate::publish::Sharing::new(
        mesh.sys.clone(),
        mesh.key.clone(),
        community.name.clone(),
        mesh.members.clone(),
        services,
        community.peers.clone(),
    )
}

fn start_lan(mesh: &Arc<Mesh>, port: u16) -> Result<crate::discovery::Lan> {
    let (name, id, address) = {
        let ms = mesh.members.lock().unwrap();
        (ms.me().tinc_name(), ms.me().id.clone(), ms.me().address)
    };
    let address = (!address.is_unspecified()).then_some(address);
    let (lan, found) = crate::discovery::Lan::start(&name, &id, address, port, &mesh.key.tag())?;
    introduce(mesh, found, "on the LAN");
    Ok(lan)
}

/// Join services found outside our member list (`via` mDNS or Serf): the next gossip round
/// swaps member lists with each one not yet known.
fn introduce(
    mesh: &Arc<Mesh>,
    mut found: tokio::sync::mpsc::UnboundedReceiver<SocketAddr>,
    via: &'static str,
) {
    let m = mesh.clone();
    tokio::spawn(async move {
        while let Some(addr) = found.recv().await {
            let known = m
                .members
                .lock()
                .unwrap()
                .others()
                .any(|o| o.address == addr.ip() && o.join_port == addr.port());
            if !known && m.lan.lock().unwrap().insert(addr) {
                tracing::info!("found a join service {via} at {addr}");
                m.wake.notify_one();
            }
        }
    });
}

async fn serve(
    mesh: Arc<Mesh>,
    share: Arc<crate::publish::Sharing>,
    manager: Arc<crate::services::manager::Manager>,
    listener: tokio::net::TcpListener,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SERVING));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!("join: too many connections, dropping {peer}");
            continue;
        };
        let mesh = mesh.clone();
        let share = share.clone();
        let manager = manager.clone();
        tokio::spawn(async move {
            let m = mesh.clone();
            let summary = share.summary.lock().unwrap().clone();
            let m2 = mesh.clone();
            let ours = move || share.ours.lock().unwrap().clone();
            // A member asks to use one of our services: known members only, as they are in
            // our list (their VPN address is ours to know, not theirs to claim).
            let ask = move |a: join::ServiceAsk| {
                let from = {
                    let ms = m2.members.lock().unwrap();
                    if a.node_id == ms.me {
                        return Err("that is this node".to_string());
                    }
                    ms.members.get(&a.node_id).cloned()
                };
                let from = from.ok_or_else(|| format!("{} is not a member we know", a.node_id))?;
                tracing::info!("{} ({peer}) asks to use our {}", from.name, a.service);
                manager
                    .accept(
                        &a.service,
                        &crate::services::JoinRequest {
                            from,
                            fields: a.fields,
                        },
                    )
                    .map_err(|e| e.to_string())
            };
            let r = join::serve_all(
                stream,
                &mesh.key,
                move |theirs| {
                    let mut ms = m.members.lock().unwrap();
                    let merged = ms.merge(theirs);
                    for r in &merged.refused {
                        tracing::warn!("join from {peer}: refused {r}");
                    }
                    if merged.changed {
                        m.changed.notify_one();
                        m.wake.notify_one();
                    }
                    ms.list()
                },
                ours,
                ask,
                move || summary,
            )
            .await;
            match r {
                Ok(n) => tracing::debug!("join: swapped lists with {peer} ({n} members)"),
                Err(e) => tracing::warn!("join: refused {peer}: {e}"),
            }
            drop(permit);
        });
    }
}

/// Brings tinc's files in line with the member list whenever it changes.
async fn reconcile(mesh: Arc<Mesh>) {
    loop {
        mesh.changed.notified().await;
        let snapshot = {
            let mut ms = mesh.members.lock().unwrap();
            if ms.resolve_vpn_collision(mesh.subnet) {
                tracing::warn!(
                    "VPN address taken by a member with a lower id; moved to {}",
                    ms.me().vpn
                );
                mesh.wake.notify_one();
            }
            ms.clone()
        };
        if let Err(e) = save_members(&mesh.sys, &snapshot) {
            tracing::error!("{e:#}");
        }
        match tinc::render(&mesh.paths, &mesh.settings, &snapshot) {
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

/// Swaps member lists with bootstrap peers and every member not yet talked to since our own
/// record last changed, plus one random member per round so news keeps spreading.
async fn gossip(
    mesh: Arc<Mesh>,
    bootstrap: Vec<String>,
    network: Option<seed::Network>,
    manage: bool,
) {
    let mut synced: HashSet<String> = HashSet::new();
    let mut boot_done: HashSet<String> = HashSet::new();
    let mut round = ROUND_MIN;
    let mut my_rev = 0;
    // Rounds in a row with a peer that never answered: quick retries only for a while, so a
    // dead bootstrap address (or a community we cannot join) is not hammered forever.
    let mut pending_rounds = 0u32;
    let net = Net::connect().ok();
    loop {
        // DHCP may give or change our address after boot: follow it.
        if let Some(net) = &net {
            if let Ok(Some(p)) = net
                .apply(network.as_ref(), false, &mesh.paths.netname)
                .await
            {
                if let Some(a) = p.address {
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
            }
        }
        let _ = manage;
        let (ours, me_rev, targets) = {
            let ms = mesh.members.lock().unwrap();
            let mut targets: Vec<(Option<String>, SocketAddr)> = ms
                .others()
                .filter(|m| !synced.contains(&m.id))
                .map(|m| (Some(m.id.clone()), SocketAddr::new(m.address, m.join_port)))
                .collect();
            if targets.is_empty() {
                let others: Vec<&Member> = ms.others().collect();
                if !others.is_empty() {
                    let m = others[identity::random_bytes::<1>()[0] as usize % others.len()];
                    targets.push((Some(m.id.clone()), SocketAddr::new(m.address, m.join_port)));
                }
            }
            (ms.list(), ms.me().rev, targets)
        };
        if me_rev != my_rev {
            // Our record changed: everyone must hear it again.
            synced.clear();
            boot_done.clear();
            my_rev = me_rev;
        }
        let mut all: Vec<(Option<String>, Option<String>, SocketAddr)> =
            targets.into_iter().map(|(id, a)| (id, None, a)).collect();
        for b in bootstrap.iter().filter(|b| !boot_done.contains(*b)) {
            if let Ok(mut addrs) = tokio::net::lookup_host(b.as_str()).await {
                if let Some(a) = addrs.next() {
                    all.push((None, Some(b.clone()), a));
                }
            }
        }
        for a in mesh.lan.lock().unwrap().iter() {
            all.push((None, Some(format!("lan:{a}")), *a));
        }
        let results = futures_util::future::join_all(all.into_iter().map(|(id, b, addr)| {
            let key = mesh.key.clone();
            let ours = ours.clone();
            async move { (id, b, addr, join::exchange(addr, &key, &ours).await) }
        }))
        .await;
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
                        synced.insert(id);
                    }
                    if let Some(b) = b {
                        if b.starts_with("lan:") {
                            mesh.lan.lock().unwrap().remove(&addr);
                        } else {
                            boot_done.insert(b);
                        }
                    }
                }
                Err(e) => {
                    pending |= b.is_some() || id.as_ref().is_some_and(|id| !synced.contains(id));
                    tracing::debug!("join with {addr}: {e}");
                }
            }
        }
        if !pending {
            pending_rounds = 0;
        }
        // Until DHCP (or the seed) gives us an address nobody can reach us: look again soon.
        let addressless = mesh.members.lock().unwrap().me().address.is_unspecified();
        if news {
            mesh.changed.notify_one();
            round = ROUND_MIN;
        } else if pending && pending_rounds < 30 {
            pending_rounds += 1;
            round = (round * 2).min(ROUND_PENDING);
        } else {
            round = (round * 2).min(ROUND_MAX);
        }
        if addressless {
            round = round.min(ROUND_PENDING);
        }
        tokio::select! {
            _ = tokio::time::sleep(round) => {}
            _ = mesh.wake.notified() => { round = ROUND_MIN; }
        }
    }
}
