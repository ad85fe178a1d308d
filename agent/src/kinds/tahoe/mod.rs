//! Tahoe-LAFS: the introducer (publishes its FURL), storage nodes (find an introducer in the
//! catalog and join its grid) and client nodes (`cloudy-agent join tahoe-lafs`). Every node
//! directory is rendered from templates (tahoe.cfg, private/introducers.yaml, the .tac marker
//! `tahoe run` looks for), so no `tahoe create-*` step and no state but Tahoe's own keys.
//!
//! All roles listen on the community VPN address only and run as `cloudy-tahoe`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::catalog::Record;
use crate::os::supervisor::{Log, Program};
use crate::os::system::System;
use crate::services::{
    own_dir, port_open, read_string, remove_file, render, write_if_changed, Configured, Context,
    Env, Joined, Service, ServiceError, Using,
};

pub const USER: &str = "cloudy-tahoe";
pub const EXE: &str = "/opt/cloudy/tahoe-lafs/bin/tahoe";
pub const EXE_ENV: &str = "CLOUDY_TAHOE";
pub const INTRODUCER_PORT: u16 = 3458;
pub const STORAGE_PORT: u16 = 3457;
/// Web API of a storage node (localhost only).
pub const STORAGE_WEB_PORT: u16 = 3459;
/// Web API of a client node, Tahoe's usual port (localhost only).
pub const CLIENT_WEB_PORT: u16 = 3456;

const INTRODUCER_CFG: &str = include_str!("templates/tahoe-introducer.cfg");
const NODE_CFG: &str = include_str!("templates/tahoe-node.cfg");
const INTRODUCERS_YAML: &str = include_str!("templates/tahoe-introducers.yaml");
/// What `tahoe create-*` writes as the .tac file: only its name matters to `tahoe run`.
const TAC: &str = "import sys\nprint(\"Nodes created by Tahoe-LAFS v1.11.0 or later cannot be run by\")\nprint(\"releases of Tahoe-LAFS before v1.10.0.\")\nsys.exit(1)\n";

/// The three Tahoe-LAFS roles, each a service of its own name.
pub fn build(name: &str, sys: &System) -> Option<Arc<dyn Service>> {
    let role = match name {
        "tahoe-introducer" => Role::Introducer,
        "tahoe-storage" => Role::Storage,
        "tahoe-client" => Role::Client,
        _ => return None,
    };
    Some(Arc::new(Tahoe::new(sys, role)))
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Role {
    Introducer,
    Storage,
    Client,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Introducer => "tahoe-introducer",
            Role::Storage => "tahoe-storage",
            Role::Client => "tahoe-client",
        }
    }
}

pub struct Tahoe {
    role: Role,
    sys: System,
    /// /var/lib/cloudy/<role>
    state: PathBuf,
    exe: PathBuf,
    /// What the last configure saw: where to check health, which introducer is in use.
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    vpn: Option<Ipv4Addr>,
    furl: Option<String>,
    /// The introducer's node, to follow it when its FURL changes.
    introducer_node: Option<String>,
}

impl Tahoe {
    pub fn new(sys: &System, role: Role) -> Tahoe {
        Tahoe {
            role,
            sys: sys.clone(),
            state: crate::services::state_dir(sys, role.name()),
            exe: crate::services::exe(EXE_ENV, EXE),
            seen: Mutex::default(),
        }
    }

    /// The Tahoe node directory (`tahoe -d <this>`).
    pub fn node_dir(&self) -> PathBuf {
        self.state.join("node")
    }

    fn introducer_furl_file(&self) -> PathBuf {
        self.node_dir().join("private/introducer.furl")
    }

    /// The introducer our grid should use: the node a user joined (`prefer`: a new join
    /// switches grids); else the one in use while it is still published; the same node's new
    /// FURL if it changed; else a fresh choice (`choose_provider`).
    fn pick_introducer(&self, env: &Env, prefer: Option<&str>) -> Option<(String, String)> {
        let intro: Vec<&Record> = env
            .catalog
            .iter()
            .filter(|r| r.kind == Role::Introducer.name() && r.fields.contains_key("furl"))
            .collect();
        let seen = self.seen.lock().unwrap();
        let pick = |r: &Record| (r.fields["furl"].clone(), r.node_id.clone());
        if let Some(r) = prefer.and_then(|p| intro.iter().find(|r| r.node_id == p)) {
            return Some(pick(r));
        }
        if let Some(cur) = &seen.furl {
            if let Some(r) = intro.iter().find(|r| &r.fields["furl"] == cur) {
                return Some(pick(r));
            }
        }
        if let Some(node) = &seen.introducer_node {
            if let Some(r) = intro.iter().find(|r| &r.node_id == node) {
                return Some(pick(r));
            }
        }
        let all: Vec<Record> = intro.into_iter().cloned().collect();
        let scores = crate::probe::load_scores(&env.sys);
        crate::probe::select::choose_provider(
            Role::Introducer.name(),
            &all,
            &env.ctx.node_id,
            &scores,
            &crate::probe::ratings::Ratings::load(&env.sys).unwrap_or_default(),
        )
        .map(|r| pick(&r))
    }

    fn stored_furl(&self) -> Option<String> {
        let text = read_string(
            &self.sys.state_dir(),
            &self.node_dir().join("private/introducers.yaml"),
        )?;
        text.lines()
            .find_map(|l| l.trim().strip_prefix("furl: "))
            .map(str::to_string)
    }
}

/// The files of a node directory for `role`, rendered: (path inside the node dir, content,
/// private?).
pub fn render_node(
    role: Role,
    nickname: &str,
    vpn: Ipv4Addr,
    furl: Option<&str>,
) -> Result<Vec<(&'static str, String, bool)>, ServiceError> {
    let mut files = Vec::new();
    match role {
        Role::Introducer => {
            #[derive(Serialize)]
            struct Cfg<'a> {
                nickname: &'a str,
                vpn: Ipv4Addr,
                port: u16,
            }
            let cfg = Cfg {
                nickname,
                vpn,
                port: INTRODUCER_PORT,
            };
            files.push((
                "tahoe.cfg",
                render("tahoe-introducer.cfg", INTRODUCER_CFG, &cfg)?,
                false,
            ));
            files.push(("tahoe-introducer.tac", TAC.to_string(), false));
        }
        Role::Storage | Role::Client => {
            #[derive(Serialize)]
            struct Cfg<'a> {
                nickname: &'a str,
                web_port: u16,
                tub_port: String,
                tub_location: String,
                storage: bool,
            }
            #[derive(Serialize)]
            struct Introducers<'a> {
                furl: &'a str,
            }
            let storage = role == Role::Storage;
            let (tub_port, tub_location, web_port) = if storage {
                (
                    format!("tcp:{STORAGE_PORT}:interface={vpn}"),
                    format!("tcp:{vpn}:{STORAGE_PORT}"),
                    STORAGE_WEB_PORT,
                )
            } else {
                // A client takes no connections: it only uses the grid.
                ("disabled".into(), "disabled".into(), CLIENT_WEB_PORT)
            };
            let cfg = Cfg {
                nickname,
                web_port,
                tub_port,
                tub_location,
                storage,
            };
            files.push((
                "tahoe.cfg",
                render("tahoe-node.cfg", NODE_CFG, &cfg)?,
                false,
            ));
            files.push(("tahoe-client.tac", TAC.to_string(), false));
            let furl = furl.ok_or_else(|| ServiceError::Failed("no introducer FURL".into()))?;
            files.push((
                "private/introducers.yaml",
                render(
                    "tahoe-introducers.yaml",
                    INTRODUCERS_YAML,
                    &Introducers { furl },
                )?,
                true,
            ));
        }
    }
    Ok(files)
}

impl Service for Tahoe {
    fn name(&self) -> &str {
        self.role.name()
    }

    fn configure(&self, env: &Env) -> Result<Configured, ServiceError> {
        let vpn = env.ctx.vpn;
        let furl = match self.role {
            Role::Introducer => None,
            Role::Storage | Role::Client => {
                let prefer = (self.role == Role::Client)
                    .then(|| crate::services::read_joined(&self.sys, Role::Client.name()))
                    .flatten()
                    .and_then(|j| j["provider"].as_str().map(str::to_string));
                match self.pick_introducer(env, prefer.as_deref()) {
                    Some((furl, node)) => {
                        self.seen.lock().unwrap().introducer_node = Some(node);
                        Some(furl)
                    }
                    // Nothing published right now (our agent just started, or the introducer
                    // is restarting): keep the grid we were in.
                    None => match self.stored_furl() {
                        Some(f) => Some(f),
                        None => {
                            return Ok(Configured::Waiting(
                                "no tahoe-introducer in the catalog yet".into(),
                            ))
                        }
                    },
                }
            }
        };
        let ids = crate::services::ensure_user(USER, &self.state)?;
        // Every directory and file below through the link-refusing walk: they are the
        // service user's to change.
        let base = self.sys.state_dir();
        own_dir(&base, &self.state, ids, 0o700)?;
        let node = self.node_dir();
        own_dir(&base, &node, ids, 0o700)?;
        own_dir(&base, &node.join("private"), ids, 0o700)?;
        let nickname = format!("{}-{}", env.ctx.node, self.role.name());
        let mut changed = false;
        for (rel, text, private) in render_node(self.role, &nickname, vpn, furl.as_deref())? {
            changed |= write_if_changed(
                &base,
                &node.join(rel),
                text.as_bytes(),
                if private { 0o600 } else { 0o644 },
                Some(ids),
            )?;
        }
        let mut seen = self.seen.lock().unwrap();
        if self.role == Role::Introducer && seen.vpn.is_some_and(|v| v != vpn) {
            // The FURL file keeps the location it was made with: a new one carries the new
            // address (storage nodes follow the introducer node to its new FURL).
            let _ = remove_file(&base, &self.introducer_furl_file());
        }
        if changed {
            tracing::info!("{}: configuration rendered", self.role.name());
        }
        seen.vpn = Some(vpn);
        seen.furl = furl;
        Ok(if changed {
            Configured::Changed
        } else {
            Configured::Unchanged
        })
    }

    fn program(&self, _env: &Env) -> Option<Program> {
        let ids = crate::services::ensure_user(USER, &self.state).ok()?;
        let node = self.node_dir().to_string_lossy().into_owned();
        let mut p = Program::new(self.role.name(), &self.exe)
            .arg("run")
            // Without it tahoe exits when its stdin (ours: /dev/null) is closed.
            .arg("--allow-stdin-close")
            .arg(&node);
        p.user = Some(ids);
        // Its node directory, its HOME (Python's caches) and its log all live here.
        p.writable = vec![self.state.clone()];
        // The agent's state around it (node keys, other services) it does not even see.
        p.hidden = vec![self.sys.state_dir()];
        p.cwd = Some(self.state.clone());
        p.env = vec![
            ("HOME".into(), self.state.to_string_lossy().into_owned()),
            ("PYTHONUNBUFFERED".into(), "1".into()),
        ];
        p.marker = Some(node);
        p.log = Some(Log::new(
            self.sys.state_dir(),
            self.state.join(format!("{}.log", self.role.name())),
        ));
        Some(p)
    }

    fn healthy(&self) -> bool {
        let Some(vpn) = self.seen.lock().unwrap().vpn else {
            return false;
        };
        let local = |port| port_open(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port));
        match self.role {
            Role::Introducer => {
                self.introducer_furl_file().exists()
                    && port_open(SocketAddr::new(vpn.into(), INTRODUCER_PORT))
            }
            Role::Storage => {
                port_open(SocketAddr::new(vpn.into(), STORAGE_PORT)) && local(STORAGE_WEB_PORT)
            }
            Role::Client => local(CLIENT_WEB_PORT),
        }
    }

    fn record(&self, ctx: &Context) -> Option<Record> {
        match self.role {
            Role::Introducer => {
                let furl = read_string(&self.sys.state_dir(), &self.introducer_furl_file())?;
                let mut r = ctx.vpn_record(
                    Role::Introducer.name(),
                    INTRODUCER_PORT,
                    "Tahoe-LAFS grid introducer",
                );
                r.fields.insert("furl".into(), furl.trim().to_string());
                Some(r)
            }
            Role::Storage => {
                let mut r = ctx.vpn_record(
                    Role::Storage.name(),
                    STORAGE_PORT,
                    "Tahoe-LAFS storage node",
                );
                if let Some(id) =
                    read_string(&self.sys.state_dir(), &self.node_dir().join("my_nodeid"))
                {
                    r.fields.insert("nodeid".into(), id.trim().to_string());
                }
                Some(r)
            }
            // A client serves nobody.
            Role::Client => None,
        }
    }

    fn use_provider(&self, u: &Using, provider: &Record) -> Result<Joined, ServiceError> {
        if self.role != Role::Client {
            return Err(ServiceError::Unsupported {
                service: self.role.name().into(),
            });
        }
        let furl = provider.fields.get("furl").ok_or_else(|| {
            ServiceError::Failed(format!(
                "{}'s tahoe-introducer record has no FURL",
                provider.node
            ))
        })?;
        u.mark_joined(
            Role::Client.name(),
            &serde_json::json!({ "provider": provider.node_id, "node": provider.node, "furl": furl }),
        )?;
        let dir = self.node_dir();
        Ok(Joined {
            usage: vec![
                format!(
                    "joined the Tahoe-LAFS grid of {} ({})",
                    provider.node, provider.ip
                ),
                format!("node directory: {}", dir.display()),
                format!("web API and browser UI: http://127.0.0.1:{CLIENT_WEB_PORT}/"),
                format!(
                    "store a file:  {} -d {} put FILE      (prints its capability)",
                    self.exe.display(),
                    dir.display()
                ),
                format!(
                    "read it back:  {} -d {} get CAP OUT",
                    self.exe.display(),
                    dir.display()
                ),
            ],
            local_service: Some(Role::Client.name().into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::{Configured, Env};

    #[test]
    fn introducer_config_listens_on_the_vpn_only() {
        let files = render_node(
            Role::Introducer,
            "n1-tahoe-introducer",
            Ipv4Addr::new(10, 99, 0, 7),
            None,
        )
        .unwrap();
        let cfg = &files.iter().find(|f| f.0 == "tahoe.cfg").unwrap().1;
        assert!(
            cfg.contains("tub.port = tcp:3458:interface=10.99.0.7\n"),
            "{cfg}"
        );
        assert!(cfg.contains("tub.location = tcp:10.99.0.7:3458\n"));
        assert!(!cfg.contains("{{"));
        assert!(files.iter().any(|f| f.0 == "tahoe-introducer.tac"));
    }

    /// A storage node keeps its introducer while it is published, follows the same node to a
    /// new FURL (a Changed config: the manager restarts tahoe), and waits while there is none.
    #[test]
    fn storage_node_follows_its_introducer() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP storage_node_follows_its_introducer: needs root (service user, chown)");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let sys = System::new(root.path());
        let t = Tahoe::new(&sys, Role::Storage);
        let mut ctx = crate::services::test_context();
        ctx.vpn = Ipv4Addr::new(10, 99, 0, 2);
        let intro = |node: char, furl: &str| {
            let mut c = crate::services::test_context();
            c.node_id = node.to_string().repeat(32);
            c.node = format!("n{node}");
            let mut r = c.vpn_record("tahoe-introducer", INTRODUCER_PORT, "");
            r.fields.insert("furl".into(), furl.into());
            r
        };
        let env = |catalog: Vec<Record>| Env {
            sys: sys.clone(),
            ctx: ctx.clone(),
            catalog,
            agent_exe: "/bin/true".into(),
        };
        let yaml =
            || std::fs::read_to_string(t.node_dir().join("private/introducers.yaml")).unwrap();
        assert!(matches!(
            t.configure(&env(vec![])).unwrap(),
            Configured::Waiting(_)
        ));
        let a1 = "pb://aaaa@tcp:10.99.0.1:3458/one";
        let b1 = "pb://bbbb@tcp:10.99.0.3:3458/two";
        assert_eq!(
            t.configure(&env(vec![intro('b', b1), intro('a', a1)]))
                .unwrap(),
            Configured::Changed
        );
        assert!(yaml().contains(a1), "the lowest node id first");
        assert_eq!(
            t.configure(&env(vec![intro('a', a1), intro('b', b1)]))
                .unwrap(),
            Configured::Unchanged
        );
        // Node a's introducer comes back with a new FURL: follow it, not switch to b.
        let a2 = "pb://aaaa@tcp:10.99.0.9:3458/new";
        assert_eq!(
            t.configure(&env(vec![intro('b', b1), intro('a', a2)]))
                .unwrap(),
            Configured::Changed
        );
        assert!(yaml().contains(a2));
        // None published for a moment: keep the grid we are in.
        assert_eq!(t.configure(&env(vec![])).unwrap(), Configured::Unchanged);
        // a is gone for good: b it is.
        assert_eq!(
            t.configure(&env(vec![intro('b', b1)])).unwrap(),
            Configured::Changed
        );
        assert!(yaml().contains(b1));
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(t.node_dir().join("private/introducers.yaml")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
        assert_ne!(m.uid(), 0, "owned by the service user");
    }

    /// The attack: the (compromised) storage node swaps its `node/private` for a link to a
    /// root-owned directory (standing in for /etc), and its `tahoe.cfg` for a link to a file
    /// there. The next configure refuses (an error: the service fails), the target keeps its
    /// owner and mode and gains no file, and no file is written through a link.
    #[test]
    fn a_swapped_in_link_does_not_hand_root_files_to_the_service() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP a_swapped_in_link_does_not_hand_root_files_to_the_service: needs root");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let sys = System::new(root.path());
        let t = Tahoe::new(&sys, Role::Storage);
        let etc = root.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(etc.join("passwd"), "root:x:0:0\n").unwrap();
        let looks = || {
            let m = std::fs::symlink_metadata(&etc).unwrap();
            let p = std::fs::symlink_metadata(etc.join("passwd")).unwrap();
            let mut names: Vec<_> = std::fs::read_dir(&etc)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            (
                (m.uid(), m.gid(), m.mode() & 0o7777),
                (p.uid(), p.mode() & 0o7777),
                std::fs::read(etc.join("passwd")).unwrap(),
                names,
            )
        };
        let before = looks();
        let intro = |furl: &str| {
            let mut r =
                crate::services::test_context().vpn_record("tahoe-introducer", INTRODUCER_PORT, "");
            r.fields.insert("furl".into(), furl.into());
            r
        };
        let env = |furl: &str| Env {
            sys: sys.clone(),
            ctx: crate::services::test_context(),
            catalog: vec![intro(furl)],
            agent_exe: "/bin/true".into(),
        };
        assert_eq!(
            t.configure(&env("pb://aaaa@tcp:10.99.0.1:3458/one"))
                .unwrap(),
            Configured::Changed
        );
        // The service user's moves, all within directories it owns.
        let node = t.node_dir();
        std::fs::rename(node.join("private"), node.join("private.old")).unwrap();
        std::os::unix::fs::symlink(&etc, node.join("private")).unwrap();
        std::fs::remove_file(node.join("tahoe.cfg")).unwrap();
        std::os::unix::fs::symlink(etc.join("passwd"), node.join("tahoe.cfg")).unwrap();
        // Twice, as the manager does every second; a new introducer makes it write.
        for furl in [
            "pb://aaaa@tcp:10.99.0.1:3458/one",
            "pb://bbbb@tcp:10.99.0.5:3458/two",
        ] {
            let r = t.configure(&env(furl));
            assert_eq!(looks(), before, "the link's target is untouched");
            assert!(r.is_err(), "refused, not followed: {r:?}");
        }
        // The storage node's own home swapped too (its state dir is its own).
        std::fs::remove_file(node.join("private")).unwrap();
        std::fs::rename(&node, t.state.join("node.old")).unwrap();
        std::os::unix::fs::symlink(&etc, &node).unwrap();
        assert!(t
            .configure(&env("pb://cccc@tcp:10.99.0.6:3458/three"))
            .is_err());
        assert_eq!(looks(), before, "the link's target is untouched");
        assert!(t.record(&crate::services::test_context()).is_some());
    }

    /// A client uses the grid the user joined, and a new join switches grids.
    #[test]
    fn client_follows_the_last_join() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP client_follows_the_last_join: needs root (service user, chown)");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let sys = System::new(root.path());
        let t = Tahoe::new(&sys, Role::Client);
        let intro = |node: char, furl: &str| {
            let mut c = crate::services::test_context();
            c.node_id = node.to_string().repeat(32);
            c.node = format!("n{node}");
            let mut r = c.vpn_record("tahoe-introducer", INTRODUCER_PORT, "");
            r.fields.insert("furl".into(), furl.into());
            r
        };
        let (a, b) = (
            "pb://aaaa@tcp:10.99.0.1:3458/one",
            "pb://bbbb@tcp:10.99.0.3:3458/two",
        );
        let env = Env {
            sys: sys.clone(),
            ctx: crate::services::test_context(),
            catalog: vec![intro('a', a), intro('b', b)],
            agent_exe: "/bin/true".into(),
        };
        let join = |node: char| {
            sys.write_atomic(
                &format!("{}/tahoe-client.json", crate::services::JOINED_DIR),
                format!("{{\"provider\":\"{}\"}}", node.to_string().repeat(32)).as_bytes(),
                0o644,
            )
            .unwrap()
        };
        let yaml =
            || std::fs::read_to_string(t.node_dir().join("private/introducers.yaml")).unwrap();
        join('b');
        assert_eq!(t.configure(&env).unwrap(), Configured::Changed);
        assert!(yaml().contains(b), "the joined grid, not the lowest id");
        assert_eq!(t.configure(&env).unwrap(), Configured::Unchanged);
        join('a');
        assert_eq!(t.configure(&env).unwrap(), Configured::Changed);
        assert!(yaml().contains(a));
        let cfg = std::fs::read_to_string(t.node_dir().join("tahoe.cfg")).unwrap();
        assert!(cfg.contains("tub.port = disabled") && cfg.contains("enabled = false"));
    }

    #[test]
    fn storage_and_client_configs_name_the_introducer() {
        let furl = "pb://abc@tcp:10.99.0.1:3458/xyz";
        let vpn = Ipv4Addr::new(10, 99, 0, 8);
        let s = render_node(Role::Storage, "n2", vpn, Some(furl)).unwrap();
        let cfg = &s[0].1;
        assert!(cfg.contains("enabled = true"));
        assert!(cfg.contains("tub.location = tcp:10.99.0.8:3457"));
        assert!(cfg.contains("web.port = tcp:3459:interface=127.0.0.1"));
        let yaml = s
            .iter()
            .find(|f| f.0 == "private/introducers.yaml")
            .unwrap();
        assert!(yaml.2, "private");
        assert!(yaml.1.contains(&format!("furl: {furl}\n")));
        let c = render_node(Role::Client, "n3", vpn, Some(furl)).unwrap();
        assert!(c[0].1.contains("enabled = false"));
        assert!(c[0].1.contains("tub.port = disabled"));
        assert!(c[0].1.contains("web.port = tcp:3456:interface=127.0.0.1"));
        assert!(render_node(Role::Storage, "n2", vpn, None).is_err());
    }
}
