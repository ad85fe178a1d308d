//! Boot: the seed applied (identity, secrets, network), the mesh started, the ready line printed
//! once whatever happened on the way, then the node run in its community (`node`).

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
    let loaded = sys.load_seed();
    // Before anything reads or writes /var/lib/cloudy: a live node's data disk goes over it.
    crate::os::storage::settle(sys, loaded.seed.storage.as_ref());
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
    let primary = match primary_network(seed, opts).await {
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
    let (Some((community, key)), Some(mesh)) = (community, mesh) else {
        // A node alone still tells the person at its screen who it is and why nothing runs.
        alone_screen(sys, seed, &me.name, &loaded.errors).await;
        services_need_a_community(seed)?;
        return Ok(0);
    };
    let mesh = match mesh {
        Ok(m) => m,
        Err(_) => {
            let mut wait = Duration::from_secs(2);
            loop {
                tokio::time::sleep(wait).await;
                match start_mesh(sys, opts, seed, &community, &key, &me, primary.as_ref()).await {
                    Ok(m) => break m,
                    Err(e) => tracing::error!("mesh still cannot start: {e:#}"),
                }
                wait = (wait * 2).min(Duration::from_secs(60));
            }
        }
    };
    let said = super::node::Said {
        seed_errors: loaded.errors.clone(),
        medium_warnings,
    };
    super::node::run(mesh, seed, &community, &key, opts, said).await
}

/// The login screen of a node without a community (written once: the agent exits after it).
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
            "no community: the node stays alone (set [community] name and key in the seed)".into(),
        ),
        seed: match seed_errors.len() {
            0 => "seed: applied".to_string(),
            n => format!("seed: {n} problem(s), the rest applied: see cloudy-agent status"),
        },
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
    use crate::mesh::exchange::{self, ExchangeError};
    let token = crate::mesh::invite::Token::parse(token)?;
    let mut wait = Duration::from_secs(2);
    let mut tries = 0;
    let got = loop {
        tries += 1;
        match exchange::redeem(&token, name).await {
            Ok(r) => break r,
            Err(e @ ExchangeError::Refused(_)) => {
                return Err(anyhow::anyhow!("the inviting member {e}"));
            }
            Err(e) if tries >= 6 => {
                return Err(anyhow::anyhow!(
                    "no inviting member answered at {} ({e}): is it up and on this LAN?",
                    token.addrs.join(", ")
                ))
            }
            Err(e) => tracing::warn!("redeeming the invitation: {e}; trying again"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(10));
    };
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

async fn primary_network(seed: &Seed, opts: &Options) -> Result<Option<Primary>> {
    let net = Net::connect()?;
    Ok(net
        .apply(seed.network.as_ref(), opts.manage_network, seed.netname())
        .await?)
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
            errors.push(format!(
                "community {:?} has no key (none in the seed, none stored): staying alone; add [community] key",
                c.name
            ));
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
