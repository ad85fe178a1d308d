//! The node in its community, once the mesh has started: the exchange server, LAN discovery,
//! publishing and browsing, Serf, the probe with the control socket and the dashboard, gossip
//! and the service manager, until SIGTERM.

use anyhow::{Context as _, Result};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::options::Options;
use crate::catalog::{avahi, browse, publish};
use crate::mesh::invite::{self, Invites};
use crate::mesh::{gossip, serf, Mesh};
use crate::os::supervisor::Control;
use crate::registry::manager::Manager;
use crate::registry::published::Local;
use crate::services::builtin::{Declared, TincVpn};
use crate::services::Service;
use cloudy_model::seed::{Community, Seed};

/// What boot found wrong with the seed and the boot medium, for the dashboard's node page (read
/// once: the medium does not change under a running node).
pub struct Said {
    pub seed_errors: Vec<String>,
    pub medium_warnings: Vec<String>,
}

pub async fn run(
    mesh: Arc<Mesh>,
    seed: &Seed,
    community: &Community,
    key: &str,
    opts: &Options,
    said: Said,
    front: Option<Arc<super::setup::Front>>,
) -> Result<i32> {
    let listener = listen(seed.exchange_port()).await?;
    // A damaged invitations file is reported and set aside: the node runs on without
    // invitations rather than not at all.
    let invites = match Invites::load(mesh.sys.path(invite::INVITES_FILE), &community.name, key) {
        Ok(i) => Some(Arc::new(i)),
        Err(e) => {
            tracing::error!("invitations: {e}");
            None
        }
    };
    let share = publish::Sharing::new(
        mesh.sys.clone(),
        mesh.key.clone(),
        community.name.clone(),
        mesh.members.clone(),
        community.peers.clone(),
    );
    let local = local_services(&mesh, seed);
    let manager = Manager::new(
        mesh.sys.clone(),
        opts.agent_exe.clone(),
        seed.enabled(),
        share.clone(),
        local.clone(),
        vec![("tincd".into(), mesh.tincd_status.clone())],
    );
    let extras = super::serve::Extras {
        ratings: Some(Arc::new(crate::probe::ratings::Book::open(
            mesh.sys.clone(),
            mesh.members.lock().unwrap().me().id.clone(),
            mesh.node_key.clone(),
        ))),
        invites,
        community: crate::probe::community::Community::new(),
    };
    tokio::spawn(super::serve::serve_full(
        mesh.clone(),
        share.clone(),
        manager.clone(),
        extras.clone(),
        listener,
    ));
    tokio::spawn(gossip::reconcile(mesh.clone()));
    start_lan(&mesh, &share, seed.exchange_port()).await;
    tokio::spawn(publish::publish(share.clone(), seed.exchange_port(), local));
    tokio::spawn(browse::keep_catalog(share.clone()));
    start_serf(&mesh, &share, opts);
    start_control(&mesh, &share, seed, opts, said, extras, front);
    tokio::spawn(gossip::gossip(
        mesh.clone(),
        community.peers.clone(),
        seed.network.clone(),
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
    if let Err(e) = avahi::sync(&mesh.sys, &[]) {
        tracing::warn!("withdrawing avahi service files: {e}");
    }
    manager.stop().await;
    let _ = mesh.tincd.send(Control::Stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(0)
}

/// The exchange port, on IPv6 and IPv4 where the kernel has both.
async fn listen(port: u16) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, port))
        .await
        .or(tokio::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port)).await)
        .with_context(|| format!("listening on exchange port {port}"))
}

/// Our built-in and declared services; the manager adds the ones it runs.
fn local_services(mesh: &Arc<Mesh>, seed: &Seed) -> Arc<Local> {
    let mut services: Vec<Arc<dyn Service>> = vec![Arc::new(TincVpn {
        port: mesh.settings.port,
        members: mesh.members.clone(),
        pidfile: mesh.paths.pidfile.clone(),
    })];
    for p in seed.services.iter().flat_map(|s| s.publish.iter()) {
        services.push(Arc::new(Declared(p.clone())));
    }
    Local::new(services)
}

/// Our exchange service on the LAN, and others' records browsed there.
async fn start_lan(mesh: &Arc<Mesh>, share: &Arc<publish::Sharing>, port: u16) {
    match gossip::start_lan(mesh, port) {
        Ok(lan) => {
            if let Err(e) = browse::browse_lan(share.clone(), &lan).await {
                tracing::warn!("no mDNS service browsing: {e}");
            }
            *mesh.mdns.lock().unwrap() = Some(lan)
        }
        Err(e) => {
            tracing::warn!("no LAN discovery ({e}); only the seed's bootstrap peers will be tried")
        }
    }
}

/// Serf, for records community-wide.
fn start_serf(mesh: &Arc<Mesh>, share: &Arc<publish::Sharing>, opts: &Options) {
    let Some(exe) = opts.serf.as_ref().filter(|p| p.exists()) else {
        tracing::warn!(
            "serf not found ({:?}): services are found on the LAN and VPN by mDNS only",
            opts.serf
        );
        return;
    };
    let serf = serf::Serf {
        exe: exe.clone(),
        sys: mesh.sys.clone(),
        key: mesh.key.clone(),
        rpc_auth: mesh.key.serf_rpc_auth(),
        desired: share.serf.clone(),
    };
    match serf.start() {
        Ok(rx) => {
            // Serf members missing from our member list: Serf's keyring already proved they
            // hold the community key, and swapping lists with them lets a crowd that starts
            // at once converge through Serf's gossip instead of one bootstrap node.
            let (tx, found) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(browse::follow_serf(share.clone(), rx, tx));
            gossip::introduce(mesh, found, "through serf");
        }
        Err(e) => tracing::warn!("no serf: {e}"),
    }
}

/// The probe (first scan soon, then periodic), the control socket and the dashboard.
fn start_control(
    mesh: &Arc<Mesh>,
    share: &Arc<publish::Sharing>,
    seed: &Seed,
    opts: &Options,
    said: Said,
    extras: super::serve::Extras,
    front: Option<Arc<super::setup::Front>>,
) {
    // Updates: fetched from the url and members, served on to members, installed in the
    // rollout window; never a reboot while a join runs.
    let busy_sys = mesh.sys.clone();
    let update = crate::update::Updater::new(
        mesh.sys.clone(),
        seed.update.clone().unwrap_or_default(),
        Some(mesh.members.clone()),
        seed.exchange_port(),
        Box::new(move || crate::registry::use_service::joining(&busy_sys)),
    );
    tokio::spawn(update.clone().run());
    let (me, name) = {
        let ms = mesh.members.lock().unwrap();
        (ms.me().id.clone(), ms.me().name.clone())
    };
    let seed_line = super::front::seed_line(&said.seed_errors);
    let ratings = extras.ratings.clone().expect("a node's ratings book");
    let community = extras.community.clone();
    let prober = Arc::new(crate::probe::Prober::new(
        mesh.sys.clone(),
        me,
        crate::probe::Options::default(),
    ));
    let agent = Arc::new(crate::control::Agent {
        sys: mesh.sys.clone(),
        share: share.clone(),
        prober,
        seed_errors: said.seed_errors,
        medium_warnings: said.medium_warnings,
        pidfile: mesh.paths.pidfile.clone(),
        views: Mutex::new(Vec::new()),
        ratings: ratings.clone(),
        invites: extras.invites,
        exchange_port: seed.exchange_port(),
        community: community.clone(),
        update: Some(update),
    });
    tokio::spawn(ratings.follow(share.clone()));
    // Our node info, regathered and the members' fetched (the Community map); our services
    // are what we publish, each healthy ("up") while published.
    let ours = share.clone();
    tokio::spawn(crate::probe::community::run(
        community,
        mesh.sys.clone(),
        mesh.key.clone(),
        mesh.members.clone(),
        agent.prober.clone(),
        move || {
            ours.ours
                .lock()
                .unwrap()
                .iter()
                .map(|r| cloudy_model::info::ServiceInfo {
                    kind: r.kind.clone(),
                    port: r.port,
                    state: "up".into(),
                })
                .collect()
        },
        crate::probe::community::Described {
            location: seed.node.location.clone(),
            contact: seed.node.contact.clone(),
        },
    ));
    let ports = super::front::ports(seed);
    let certificate = super::front::dashboard_certificate(&mesh.sys, &names(mesh), ports.https);
    // Setup mode's socket and dashboard go on serving (the same browser session too): they
    // answer as the node from now on.
    let setup = front.is_some();
    match front {
        Some(f) => {
            f.install(agent.clone());
            crate::control::start_probe(agent);
        }
        None => crate::control::start(agent),
    }
    tokio::spawn(crate::os::issue::keep(
        mesh.sys.clone(),
        crate::os::issue::Screen {
            name,
            https_port: ports.https,
            certificate: certificate
                .as_ref()
                .map(|c| c.fingerprint.clone())
                .map_err(Clone::clone),
            seed: seed_line,
            setup: false,
        },
    ));
    if !setup {
        crate::dashboard::supervise(mesh.sys.clone(), opts.agent_exe.clone(), ports, certificate);
    }
}

/// The names and addresses a member's certificate is made for.
fn names(mesh: &Arc<Mesh>) -> Vec<String> {
    let ms = mesh.members.lock().unwrap();
    let me = ms.me();
    vec![
        me.name.clone(),
        format!("{}.local", me.name),
        me.address.to_string(),
        me.vpn.to_string(),
    ]
}
