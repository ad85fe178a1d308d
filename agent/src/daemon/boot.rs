//! Boot: the seed applied (identity, secrets, network), the mesh started, the ready line printed
//! once whatever happened on the way, then the node run in its community (`node`); a node whose
//! seed names no community goes into setup mode (`setup`) and from there into the community its
//! dashboard created or joined, through the same `member`.

use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::Duration;

use super::options::Options;
use super::ready;
use crate::mesh::{self, Mesh};
use crate::os::identity::{self, Credential};
use crate::os::network::{Net, Primary};
use crate::os::secrets;
use crate::os::system::System;
use crate::os::wifi;
use cloudy_model::seed::{self, Community, Loaded, Seed};

pub fn run(sys: &System, opts: &Options) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    rt.block_on(boot(sys, opts))
}

/// The node's name and id, once applied.
struct Identity {
    name: String,
    node_id: String,
    /// The dashboard credential is stored (so the seed's hash may leave the medium).
    credential_stored: bool,
}

async fn boot(sys: &System, opts: &Options) -> Result<i32> {
    // Before anything reads or writes /var/lib/cloudy: a live node's data disk goes over it
    // (the seed's [storage] names it); what setup mode stored there is read after.
    crate::os::storage::settle(sys, sys.load_seed().seed.storage.as_ref());
    let loaded = crate::os::stored::load_seed(sys);
    for e in &loaded.errors {
        tracing::error!("seed: {e}");
    }
    let seed = &loaded.seed;
    let mut errors: Vec<String> = Vec::new();
    let me = apply_identity(sys, seed, &mut errors)?;
    let mut stored = me.credential_stored;
    let community_key =
        match secrets::community_key(sys, seed.community.as_ref().and_then(|c| c.key.as_deref())) {
            Ok(k) => k,
            Err(e) => {
                errors.push(e.to_string());
                stored = false;
                None
            }
        };
    // Before the network: the seed may name the Wi-Fi link as its primary interface.
    // Only a passphrase that is stored may leave the medium; a radio that fails to start is
    // reported, and the stored copy serves the next boot.
    match wifi::settle(sys, seed.wifi.as_ref()) {
        Ok(Some(w)) => {
            if let Err(e) = wifi::configure(sys, &w) {
                errors.push(format!("wifi: {e}"));
            }
        }
        Ok(None) => {}
        Err(e) => {
            errors.push(format!("wifi: {e}"));
            stored = false;
        }
    }
    let primary = match primary_network(sys, seed, opts).await {
        Ok(p) => p,
        Err(e) => {
            errors.push(format!("network: {e}"));
            None
        }
    };
    // An invitation in place of the key: redeemed once the network is up; until it has been,
    // the token stays on the medium (the next boot tries again), the other secrets go.
    let mut keep = loaded.skipped.clone();
    let invite = seed
        .community
        .as_ref()
        .and_then(|c| c.invite.as_deref().map(|t| (c, t)));
    let community_key = match (community_key, invite) {
        (None, Some((c, token))) => match redeem_invite(sys, c, token, &me.name).await {
            Ok(k) => Some(k),
            Err(e) => {
                errors.push(format!("invitation: {e:#}"));
                keep.push("community".into());
                None
            }
        },
        (k, _) => k,
    };
    let medium_warnings = scrub_boot_medium(sys, &loaded, &keep, stored);
    errors.extend(medium_warnings.iter().cloned());
    let mut ready = ready_line(sys, &loaded, &me, primary.as_ref());
    let community = community(seed, community_key, &mut errors);
    let mesh = match &community {
        None => None,
        Some((c, key)) => {
            ready.community = Some(c.name.clone());
            let m = start_mesh(sys, opts, seed, c, key, &me, primary.as_ref()).await;
            match &m {
                Ok(m) => {
                    let ms = m.members.lock().unwrap();
                    ready.vpn_address = Some(ms.me().vpn.to_string());
                    ready.tinc_name = Some(ms.me().tinc_name());
                    if let Some(e) = m.vpn_error.lock().unwrap().as_ref() {
                        errors.push(format!("mesh: {e}"));
                    }
                }
                // The node must still come up and say what is wrong, once; then keep trying
                // rather than exiting into a restart loop that would repeat the ready line.
                Err(e) => errors.push(format!("mesh: {e:#}")),
            }
            Some(m)
        }
    };
    ready.errors = errors;
    ready.uptime_s = ready::uptime_s();
    println!("{}", ready.line());
    if opts.once {
        return Ok(0);
    }
    let said = super::node::Said {
        seed_errors: loaded.errors.clone(),
        medium_warnings,
    };
    let (Some((community, key)), Some(mesh)) = (community, mesh) else {
        // A node in no community (yet) is alone in it: once ready, its slot is good, or an
        // update would be undone at the next boot (`update`).
        crate::update::Updater::new(sys.clone(), Default::default(), None, 0, Box::new(|| None))
            .boot_alone()
            .await;
        services_need_a_community(seed)?;
        // A community's name with neither key nor invitation: pending until a member approves
        // this node (`catalog::pending`), then a member like any other.
        if let Some(c) = seed
            .community
            .as_ref()
            .filter(|c| c.key.is_none() && c.invite.is_none())
        {
            use crate::catalog::pending::{wait_for_approval, Waiting};
            let waiting = Waiting {
                community: &c.name,
                node_id: &me.node_id,
                name: &me.name,
                address: primary.as_ref().and_then(|p| p.address),
                exchange_port: seed.exchange_port(),
                https_port: seed.dashboard_https_port(),
            };
            let approved = wait_for_approval(sys, waiting).await?;
            let mut c = c.clone();
            c.peers.extend(approved.grant.peers);
            let key = approved.grant.key;
            let first = start_mesh(sys, opts, seed, &c, &key, &me, primary.as_ref()).await;
            let primary = primary.as_ref();
            return member(sys, opts, seed, &c, &key, &me, primary, first, said, None).await;
        }
        if seed.community.is_none() {
            // No community named anywhere: setup mode, until the dashboard creates or joins
            // one; then the node starts in it as if it had booted so.
            let from_seed = seed.node.name.is_some()
                && crate::os::stored::node_name(sys).ok().flatten() != seed.node.name;
            let at = super::setup::Node {
                name: me.name.clone(),
                node_id: me.node_id.clone(),
                name_from_seed: from_seed,
                address: primary.as_ref().and_then(|p| p.address),
                seed_line: super::front::seed_line(&loaded.errors),
            };
            let Some(joined) = super::setup::run(sys, opts, seed, at).await? else {
                return Ok(0);
            };
            let mut seed = seed.clone();
            seed.community = Some(joined.community.clone());
            seed.node.name = Some(joined.name.clone());
            let me = Identity {
                name: joined.name.clone(),
                ..me
            };
            let c = &joined.community;
            let first = start_mesh(sys, opts, &seed, c, &joined.key, &me, primary.as_ref()).await;
            let front = Some(joined.front.clone());
            let primary = primary.as_ref();
            return member(
                sys,
                opts,
                &seed,
                c,
                &joined.key,
                &me,
                primary,
                first,
                said,
                front,
            )
            .await;
        }
        // A community without its key: the node stays alone, and tells the person at its
        // screen who it is and why nothing runs.
        alone_screen(sys, seed, &me.name, &loaded.errors).await;
        return Ok(0);
    };
    let primary = primary.as_ref();
    member(
        sys, opts, seed, &community, &key, &me, primary, mesh, said, None,
    )
    .await
}

/// Starts the node in its community: the mesh (`first`, the first try, else tried again with
/// a growing pause until it starts), then the node run in it until SIGTERM. Boot calls it for a
/// seed's community, setup mode for the one it created or joined.
#[allow(clippy::too_many_arguments)]
async fn member(
    sys: &System,
    opts: &Options,
    seed: &Seed,
    community: &Community,
    key: &str,
    me: &Identity,
    primary: Option<&Primary>,
    first: Result<Arc<Mesh>>,
    said: super::node::Said,
    front: Option<Arc<super::setup::Front>>,
) -> Result<i32> {
    let mesh = match first {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("mesh cannot start: {e:#}");
            let mut wait = Duration::from_secs(2);
            loop {
                tokio::time::sleep(wait).await;
                match start_mesh(sys, opts, seed, community, key, me, primary).await {
                    Ok(m) => break m,
                    Err(e) => tracing::error!("mesh still cannot start: {e:#}"),
                }
                wait = (wait * 2).min(Duration::from_secs(60));
            }
        }
    };
    super::node::run(mesh, seed, community, key, opts, said, front).await
}

/// The login screen of a node whose community has no key (written once: the agent exits
/// after it).
async fn alone_screen(sys: &System, seed: &Seed, name: &str, seed_errors: &[String]) {
    use crate::os::issue;
    let addrs = match crate::os::network::Net::connect() {
        Ok(net) => issue::addresses(&net).await,
        Err(_) => Vec::new(),
    };
    let screen = issue::Screen {
        name: name.to_string(),
        https_port: seed.dashboard_https_port(),
        certificate: Err(
            "no community key: the node stays alone (set [community] key in the seed)".into(),
        ),
        seed: super::front::seed_line(seed_errors),
        setup: false,
    };
    if let Err(e) = issue::write(sys, &screen, &addrs) {
        tracing::warn!("login screen: {e}");
    }
}

/// Hostname, node id, dashboard credential and ssh keys; a failure past the first two is
/// reported in the ready line, not fatal.
fn apply_identity(sys: &System, seed: &Seed, errors: &mut Vec<String>) -> Result<Identity> {
    let name = seed
        .node
        .name
        .clone()
        .unwrap_or_else(|| identity::FALLBACK_NAME.to_string());
    identity::apply_hostname(sys, &name).context("applying the node's hostname")?;
    let node_id = identity::node_id(sys).context("the node id")?;
    let mut credential_stored = true;
    match identity::dashboard_credential(
        sys,
        seed.dashboard
            .as_ref()
            .and_then(|d| d.password_hash.as_deref()),
    ) {
        Ok(Credential::Generated(p)) => {
            if let Err(e) = show_password(sys, &p) {
                credential_stored = false;
                errors.push(format!("dashboard credential: {e}"));
            }
        }
        Ok(_) => {}
        Err(e) => {
            credential_stored = false;
            errors.push(format!("dashboard credential: {e}"))
        }
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
    Ok(Identity {
        name,
        node_id,
        credential_stored,
    })
}

/// A password generated on this boot is shown once, on the console device only: stdout and
/// stderr go to the journal, which keeps them on disk. Only its hash is kept. When a live node
/// cannot show it, the hash is dropped too (a password nobody saw is no credential) and the
/// next boot makes another.
fn show_password(sys: &System, password: &str) -> Result<()> {
    let Some(console) = identity::console_path(sys) else {
        println!("cloudy: dashboard login: admin / (a new password; this root has no console to show it on: set [dashboard] password_hash in the seed)");
        return Ok(());
    };
    let line = format!("\ncloudy: dashboard login: admin / {password}  (shown once, on this console only; set [dashboard] password_hash in the seed to choose one)\n\n");
    match identity::show_on_console(&console, &line) {
        Ok(()) => {
            // The journal learns that a password was made and where to read it, never the password.
            println!(
                "cloudy: dashboard login: admin / (a new password, shown once on {} only; set [dashboard] password_hash in the seed to choose one)",
                console.display()
            );
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(sys.path(identity::DASHBOARD_HASH_FILE));
            anyhow::bail!(
                "a password was generated but could not be shown on {}: {e}; set [dashboard] password_hash in the seed",
                console.display()
            )
        }
    }
}

/// The boot medium is readable by anyone holding the card: scrub secrets once `stored`, then
/// check the medium and say loudly, on the console, when a secret is still there (a read-only
/// medium, a rewrite that did not take). Returns the warnings for the ready line.
fn scrub_boot_medium(sys: &System, loaded: &Loaded, keep: &[String], stored: bool) -> Vec<String> {
    if let Some(src) = &loaded.source {
        let seed = &loaded.seed;
        let on_boot_medium = seed::SEED_PATHS.iter().any(|p| sys.path(p) == *src);
        let has_secret = seed
            .community
            .as_ref()
            .is_some_and(|c| c.key.is_some() || c.invite.is_some())
            || seed
                .dashboard
                .as_ref()
                .is_some_and(|d| d.password_hash.is_some())
            || seed
                .wifi
                .as_ref()
                .is_some_and(|w| w.psk.is_some() || w.psk_hash.is_some());
        if on_boot_medium && has_secret && stored {
            match secrets::scrub_seed_keeping(src, keep) {
                Ok(true) => {
                    tracing::info!("moved secrets from {} into /var/lib/cloudy", src.display())
                }
                Ok(false) => {}
                Err(e) => tracing::error!("could not scrub {}: {e}", src.display()),
            }
        }
    }
    let warnings = secrets::medium_warnings(sys, loaded);
    for w in &warnings {
        // The console's operator must see it whatever the log level.
        eprintln!("cloudy: {w}");
    }
    warnings
}

/// Redeems the seed's invitation at the inviting member, a few times while it may not be up
/// yet, and stores the key it gives like a seed's. A refusal (used, expired, wrong) is final:
/// the error says why, never the token.
async fn redeem_invite(sys: &System, c: &Community, token: &str, name: &str) -> Result<String> {
    let token = crate::mesh::invite::Token::parse(token)?;
    let got = super::setup::redeem(&token, name, 6).await?;
    if got.community != c.name {
        anyhow::bail!(
            "the invitation is for community {:?}, the seed names {:?}: fix [community] name",
            got.community,
            c.name
        );
    }
    tracing::info!("invitation redeemed: joined {:?}", got.community);
    secrets::community_key(sys, Some(&got.key))?
        .ok_or_else(|| anyhow::anyhow!("the community key was not stored"))
}

/// How long a node waits for DHCP before it reports and announces itself without an address.
const DHCP_WAIT: Duration = Duration::from_secs(20);

async fn primary_network(sys: &System, seed: &Seed, opts: &Options) -> Result<Option<Primary>> {
    let net = Net::connect()?;
    // The agent starts beside systemd-networkd, not after it (it is ordered before
    // network.target). An installed disk (and a live boot that found its keys on a data disk)
    // gets here in seconds, before DHCP has answered: the ready line and the node's member
    // record said address null. A node's own root waits for the lease, bounded; a private
    // root (tests in namespaces) has its addresses already.
    let wait = if sys.is_live() {
        DHCP_WAIT
    } else {
        Duration::ZERO
    };
    let started = std::time::Instant::now();
    loop {
        let p = net
            .apply(seed.network.as_ref(), opts.manage_network, seed.netname())
            .await?;
        if p.as_ref().is_some_and(|p| p.address.is_some()) {
            return Ok(p);
        }
        if started.elapsed() >= wait {
            if !wait.is_zero() {
                tracing::warn!(
                    "network: no address after {} s (no DHCP answer?); going on without one",
                    wait.as_secs()
                );
            }
            return Ok(p);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The ready line as far as the node is known before the mesh.
fn ready_line(
    sys: &System,
    loaded: &Loaded,
    me: &Identity,
    primary: Option<&Primary>,
) -> ready::Ready {
    ready::Ready {
        cloudy: "ready",
        version: env!("CARGO_PKG_VERSION"),
        hostname: if sys.is_live() {
            identity::kernel_hostname()
        } else {
            me.name.clone()
        },
        node: me.name.clone(),
        kernel: ready::kernel_release(),
        arch: std::env::consts::ARCH,
        seed: loaded.source.as_ref().map(|p| p.display().to_string()),
        seed_errors: loaded.errors.clone(),
        uptime_s: 0.0,
        node_id: me.node_id.clone(),
        interface: primary.map(|p| p.interface.clone()),
        address: primary.and_then(|p| p.address).map(|a| a.to_string()),
        community: None,
        vpn_address: None,
        tinc_name: None,
        services: loaded.seed.enabled(),
        errors: Vec::new(),
    }
}

/// The seed's community with its key, or None (and why, when a community has no key).
fn community(
    seed: &Seed,
    key: Option<String>,
    errors: &mut Vec<String>,
) -> Option<(Community, String)> {
    match (&seed.community, key) {
        (Some(c), Some(k)) => Some((c.clone(), k)),
        (Some(c), None) => {
            errors.push(if c.invite.is_none() {
                format!(
                    "community {:?} has no key (none in the seed, none stored): pending until a member approves this node (`cloudy-agent approve` with the fingerprint on this console); or add [community] key or invite",
                    c.name
                )
            } else {
                format!(
                    "community {:?} has no key: its invitation was not redeemed (see above), staying alone; fix: a new invitation, or [community] key",
                    c.name
                )
            });
            None
        }
        _ => None,
    }
}

/// Services listen on the community VPN: without a community none can start. Say so in the
/// line a verify stage waits for, rather than leaving it waiting.
fn services_need_a_community(seed: &Seed) -> Result<()> {
    let enabled = seed.enabled();
    if enabled.is_empty() {
        return Ok(());
    }
    let line = crate::registry::manager::ServicesLine {
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
    Ok(())
}

async fn start_mesh(
    sys: &System,
    opts: &Options,
    seed: &Seed,
    community: &Community,
    key: &str,
    me: &Identity,
    primary: Option<&Primary>,
) -> Result<Arc<Mesh>> {
    Mesh::start(
        sys,
        mesh::Start {
            seed,
            community: &community.name,
            key,
            node_id: &me.node_id,
            name: &me.name,
            primary,
            tincd: opts.tincd.clone(),
            agent_exe: opts.agent_exe.clone(),
            run_tincd: !opts.once,
        },
    )
    .await
}
