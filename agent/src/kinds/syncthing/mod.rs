//! Syncthing (Debian's package): one instance per node, its config rendered from a template on
//! the community VPN address only, GUI/REST with generated credentials, no global discovery,
//! relays, NAT traversal, usage or crash reporting. Using (see README "Syncthing: joining")
//! shares one folder between the joining node and the provider: the joiner lists the
//! provider's device, asks the provider's agent over the exchange port to list its own, and both
//! agents re-render their configs.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::catalog::Record;
use crate::os::supervisor::{Log, Program};
use crate::os::system::System;
use crate::services::{
    credential, io_err, own_dir, port_open, read_file, read_string, render_xml, write_file,
    Configured, Context, Env, Joined, SafeDir, Service, ServiceError, UseRequest, Using,
};

pub const NAME: &str = "syncthing";
pub const USER: &str = "cloudy-syncthing";
pub const EXE: &str = "/usr/bin/syncthing";
pub const EXE_ENV: &str = "CLOUDY_SYNCTHING";
pub const PORT: u16 = 22000;
pub const GUI_PORT: u16 = 8384;
pub const GUI_USER: &str = "cloudy";
/// A shared folder named by `join --folder` lives below this (root's) directory.
pub const SHARES_BASE: &str = "/srv";
/// The one folder a community shares through a provider.
pub const FOLDER_ID: &str = "cloudy-shared";
const CONFIG: &str = include_str!("templates/syncthing-config.xml");

pub fn build(name: &str, sys: &System) -> Option<Arc<dyn Service>> {
    (name == NAME).then(|| Arc::new(Syncthing::new(sys)) as Arc<dyn Service>)
}

/// Devices this node shares its folder with, and where the folder is; written by `join` (the
/// user side) and by `accept` (the provider side), read by `configure`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peers {
    /// The shared folder; default `<state>/shared`.
    #[serde(default)]
    pub folder: Option<PathBuf>,
    /// Device id -> peer.
    #[serde(default)]
    pub devices: BTreeMap<String, Peer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub node_id: String,
    pub name: String,
    /// `tcp://<vpn address>:<port>`
    pub address: String,
}

pub struct Syncthing {
    /// Root's `/var/lib/cloudy`: every walk into the service's own directories starts here.
    base: PathBuf,
    /// Root's `/srv`: a shared folder other than the default lives below it.
    shares: PathBuf,
    state: PathBuf,
    exe: PathBuf,
    /// The config last written (Syncthing rewrites config.xml itself, so the file on disk is
    /// no guide), and the VPN address it listens on.
    applied: Mutex<Option<(String, Ipv4Addr)>>,
    /// `accept` and `join` both edit the peers file.
    peers_lock: Mutex<()>,
}

fn device_ok(id: &str) -> bool {
    cloudy_model::kinds::is_device_id(id)
}

impl Syncthing {
    pub fn new(sys: &System) -> Syncthing {
        Syncthing {
            base: sys.state_dir(),
            shares: sys.path(SHARES_BASE),
            state: crate::services::state_dir(sys, NAME),
            exe: crate::services::exe(EXE_ENV, EXE),
            applied: Mutex::new(None),
            peers_lock: Mutex::new(()),
        }
    }

    fn home(&self) -> PathBuf {
        self.state.join("home")
    }

    fn peers_file(&self) -> PathBuf {
        self.state.join("peers.json")
    }

    pub fn default_folder(&self) -> PathBuf {
        self.state.join("shared")
    }

    /// A shared folder other than the default: strictly below `/srv`, no `..` or `.`.
    fn share_folder(&self, f: &Path) -> Result<PathBuf, ServiceError> {
        let ok = f == self.default_folder()
            || (f.starts_with(&self.shares)
                && f != self.shares
                && f.strip_prefix(&self.shares).is_ok_and(|r| {
                    r.components()
                        .all(|c| matches!(c, std::path::Component::Normal(_)))
                }));
        if !ok {
            return Err(ServiceError::Failed(format!(
                "a shared folder must be below {} (not {})",
                self.shares.display(),
                f.display()
            )));
        }
        Ok(f.to_path_buf())
    }

    /// Where the walk to a checked shared folder starts.
    fn folder_base(&self, f: &Path) -> &Path {
        if f.starts_with(&self.shares) {
            &self.shares
        } else {
            &self.base
        }
    }

    pub fn device_id(&self) -> Option<String> {
        let id = read_string(&self.base, &self.state.join("device-id"))?;
        let id = id.trim();
        device_ok(id).then(|| id.to_string())
    }

    pub fn load_peers(&self) -> Peers {
        read_file(&self.base, &self.peers_file())
            .and_then(|t| serde_json::from_slice(&t).ok())
            .unwrap_or_default()
    }

    fn save_peers(&self, p: &Peers) -> Result<(), ServiceError> {
        Ok(write_file(
            &self.base,
            &self.peers_file(),
            &serde_json::to_vec_pretty(p).expect("peers serialise"),
            0o644,
        )?)
    }

    /// The service user, its directories, the device key and GUI credentials: made once.
    fn identity(&self) -> Result<(u32, u32), ServiceError> {
        let ids = crate::services::ensure_user(USER, &self.state)?;
        let state = own_dir(&self.base, &self.state, ids, 0o700)?;
        let home = own_dir(&self.base, &self.home(), ids, 0o700)?;
        if self.device_id().is_some()
            && home.read("cert.pem").is_some()
            && state.read("gui-password.bcrypt").is_some()
        {
            return Ok(ids);
        }
        let password = credential(&self.base, &self.state.join("gui-password"), 16)?;
        let mut child = std::process::Command::new(&self.exe)
            .arg("generate")
            .arg(format!("--home={}", self.home().display()))
            .args(["--no-default-folder", "--skip-port-probing"])
            .arg(format!("--gui-user={GUI_USER}"))
            // From stdin, not the command line where any local user could read it.
            .arg("--gui-password=-")
            .env("HOME", &self.state)
            .uid(ids.0)
            .gid(ids.1)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(io_err(format!("running {} generate", self.exe.display())))?;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("piped");
            stdin
                .write_all(password.as_bytes())
                .map_err(io_err("giving syncthing the GUI password"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(io_err("waiting for syncthing generate"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let id = text
            .lines()
            .find_map(|l| l.split("Device ID: ").nth(1))
            .map(|s| s.trim().to_string())
            .filter(|s| device_ok(s))
            .ok_or_else(|| {
                ServiceError::Failed(format!("syncthing generate: no device id in: {text}"))
            })?;
        let config = home
            .read("config.xml")
            .and_then(|c| String::from_utf8(c).ok())
            .ok_or_else(|| {
                ServiceError::Failed("syncthing generate wrote no readable config.xml".into())
            })?;
        let hash = between(&config, "<password>", "</password>")
            .filter(|h| h.starts_with("$2"))
            .ok_or_else(|| {
                ServiceError::Failed("syncthing generate wrote no GUI password hash".into())
            })?;
        state.write("gui-password.bcrypt", hash.as_bytes(), 0o600, None)?;
        state.write("device-id", format!("{id}\n").as_bytes(), 0o644, None)?;
        tracing::info!("syncthing: device id {id}");
        Ok(ids)
    }
}

fn between<'a>(s: &'a str, a: &str, b: &str) -> Option<&'a str> {
    let i = s.find(a)? + a.len();
    let j = s[i..].find(b)? + i;
    Some(&s[i..j])
}

/// The whole config.xml for these inputs.
#[allow(clippy::too_many_arguments)]
pub fn render_config(
    device_id: &str,
    name: &str,
    vpn: Ipv4Addr,
    gui_password_hash: &str,
    api_key: &str,
    folder: &Path,
    peers: &Peers,
) -> Result<String, ServiceError> {
    #[derive(Serialize)]
    struct Config<'a> {
        folder_id: &'a str,
        folder_path: String,
        device_id: &'a str,
        name: &'a str,
        vpn: Ipv4Addr,
        port: u16,
        gui_port: u16,
        gui_user: &'a str,
        gui_password_hash: &'a str,
        api_key: &'a str,
        devices: Vec<Device<'a>>,
    }
    #[derive(Serialize)]
    struct Device<'a> {
        id: &'a str,
        name: &'a str,
        address: &'a str,
    }
    let devices = peers
        .devices
        .iter()
        // Peers come from the network (through `accept`): only well-formed ones go in.
        .filter(|(id, p)| device_ok(id) && p.address.starts_with("tcp://"))
        .map(|(id, p)| Device {
            id,
            name: &p.name,
            address: &p.address,
        })
        .collect();
    let config = Config {
        folder_id: FOLDER_ID,
        folder_path: folder.to_string_lossy().into_owned(),
        device_id,
        name,
        vpn,
        port: PORT,
        gui_port: GUI_PORT,
        gui_user: GUI_USER,
        gui_password_hash,
        api_key,
        devices,
    };
    Ok(render_xml("syncthing-config.xml", CONFIG, &config)?)
}

impl Service for Syncthing {
    fn name(&self) -> &str {
        NAME
    }

    fn configure(&self, env: &Env) -> Result<Configured, ServiceError> {
        let ids = self.identity()?;
        let device_id = self.device_id().expect("identity made it");
        let hash = read_string(&self.base, &self.state.join("gui-password.bcrypt"))
            .ok_or_else(|| ServiceError::Failed("no readable GUI password hash".into()))?;
        let api_key = credential(&self.base, &self.state.join("api-key"), 16)?;
        let peers = self.load_peers();
        // peers.json is in a directory the service user can write: its folder is checked
        // again here, not trusted.
        let folder = match &peers.folder {
            Some(f) => self.share_folder(f)?,
            None => self.default_folder(),
        };
        let base = self.folder_base(&folder);
        if SafeDir::base(base)?.descend(&folder, false).is_err() {
            own_dir(base, &folder, ids, 0o750)?;
        }
        let vpn = env.ctx.vpn;
        let config = render_config(
            &device_id,
            &env.ctx.node,
            vpn,
            hash.trim(),
            &api_key,
            &folder,
            &peers,
        )?;
        let mut applied = self.applied.lock().unwrap();
        if applied.as_ref().map(|a| &a.0) == Some(&config) {
            return Ok(Configured::Unchanged);
        }
        // Written whatever the file holds now: Syncthing rewrites it in its own layout.
        let home = SafeDir::base(&self.base)?.descend(&self.home(), false)?;
        home.write("config.xml", config.as_bytes(), 0o600, Some(ids))?;
        tracing::info!(
            "syncthing: configuration rendered ({} peer device(s))",
            peers.devices.len()
        );
        *applied = Some((config, vpn));
        Ok(Configured::Changed)
    }

    fn program(&self, _env: &Env) -> Option<Program> {
        let ids = crate::services::ensure_user(USER, &self.state).ok()?;
        let home = format!("--home={}", self.home().display());
        let mut p = Program::new(NAME, &self.exe)
            .arg("serve")
            .arg(&home)
            .arg("--no-browser")
            // We supervise it: no monitor process, no self-upgrade.
            .arg("--no-restart")
            .arg("--no-upgrade");
        p.user = Some(ids);
        // Its home, the default folder, and the shares under the fixed base, whose folders
        // come and go with the peers file while it runs: the base itself (root's, so only the
        // folders made for it there are its to write). Made now if missing, as root's.
        std::fs::create_dir_all(&self.shares).ok()?;
        p.writable = vec![self.state.clone(), self.shares.clone()];
        // The agent's state around its own (node keys, other services) it does not even see.
        p.hidden = vec![self.base.clone()];
        p.cwd = Some(self.state.clone());
        p.env = vec![
            ("HOME".into(), self.state.to_string_lossy().into_owned()),
            ("STNOUPGRADE".into(), "1".into()),
            ("STNODEFAULTFOLDER".into(), "1".into()),
        ];
        p.marker = Some(home);
        p.log = Some(Log::new(&self.base, self.state.join("syncthing.log")));
        Some(p)
    }

    fn healthy(&self) -> bool {
        let Some(vpn) = self.applied.lock().unwrap().as_ref().map(|a| a.1) else {
            return false;
        };
        port_open(SocketAddr::new(vpn.into(), PORT))
            && port_open(SocketAddr::new(vpn.into(), GUI_PORT))
    }

    fn record(&self, ctx: &Context) -> Option<Record> {
        let mut r = ctx.vpn_record(NAME, PORT, "Syncthing shared folder");
        r.fields.insert("device_id".into(), self.device_id()?);
        Some(r)
    }

    fn accept(&self, req: &UseRequest) -> Result<BTreeMap<String, String>, ServiceError> {
        let id = req
            .fields
            .get("device_id")
            .filter(|d| device_ok(d))
            .ok_or_else(|| ServiceError::Failed("no valid device_id".into()))?;
        let mine = self
            .device_id()
            .ok_or_else(|| ServiceError::Failed("syncthing is not set up here yet".into()))?;
        let peer = Peer {
            node_id: req.from.id.clone(),
            name: req.from.name.clone(),
            // The asker's own VPN address from our member list, never one it claims.
            address: format!("tcp://{}:{PORT}", req.from.vpn),
        };
        let _g = self.peers_lock.lock().unwrap();
        let mut peers = self.load_peers();
        // One device per member: a node that made a new key replaces its old one.
        peers
            .devices
            .retain(|d, p| p.node_id != peer.node_id || d == id);
        if peers.devices.get(id) != Some(&peer) {
            peers.devices.insert(id.clone(), peer);
            self.save_peers(&peers)?;
            tracing::info!(
                "syncthing: sharing {FOLDER_ID} with {} ({id})",
                req.from.name
            );
        }
        Ok(BTreeMap::from([
            ("device_id".to_string(), mine),
            ("folder_id".to_string(), FOLDER_ID.to_string()),
        ]))
    }

    fn use_provider(&self, u: &Using, provider: &Record) -> Result<Joined, ServiceError> {
        let their = provider
            .fields
            .get("device_id")
            .filter(|d| device_ok(d))
            .ok_or_else(|| {
                ServiceError::Failed(format!(
                    "{}'s syncthing record has no device id",
                    provider.node
                ))
            })?
            .clone();
        let ids = self.identity()?;
        let mine = self.device_id().expect("identity made it");
        {
            let _g = self.peers_lock.lock().unwrap();
            let mut peers = self.load_peers();
            if let Some(f) = &u.folder {
                let f = std::path::absolute(f).map_err(io_err("the folder path"))?;
                let f = self.share_folder(&f)?;
                // Created or handed to the service user (Syncthing must write into it), never
                // through a link.
                own_dir(self.folder_base(&f), &f, ids, 0o750)?;
                peers.folder = Some(f);
            }
            peers.devices.retain(|_, p| p.node_id != provider.node_id);
            peers.devices.insert(
                their.clone(),
                Peer {
                    node_id: provider.node_id.clone(),
                    name: provider.node.clone(),
                    address: format!("tcp://{}:{}", provider.ip, provider.port),
                },
            );
            self.save_peers(&peers)?;
        }
        let answer = u.ask(
            provider,
            BTreeMap::from([("device_id".to_string(), mine.clone())]),
        )?;
        if answer.get("device_id") != Some(&their) {
            return Err(ServiceError::Failed(format!(
                "{} answered with another device id than it publishes",
                provider.node
            )));
        }
        u.mark_joined(
            NAME,
            &serde_json::json!({ "provider": provider.node_id, "node": provider.node }),
        )?;
        let folder = self
            .load_peers()
            .folder
            .unwrap_or_else(|| self.default_folder());
        Ok(Joined {
            usage: vec![
                format!(
                    "sharing folder {FOLDER_ID} with {} (device {their})",
                    provider.node
                ),
                format!("this node's copy: {}", folder.display()),
                format!("this node's device id: {mine}"),
                format!(
                    "Syncthing GUI: http://{}:{GUI_PORT}/  user {GUI_USER}, password in {}",
                    u.ctx.vpn,
                    self.state.join("gui-password").display()
                ),
            ],
            local_service: Some(NAME.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "MFZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-BONSGYY-LTMRWAD";
    const B: &str = "BBZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-BONSGYY-LTMRWAD";

    #[test]
    fn config_is_private_to_the_vpn_and_shares_with_peers() {
        let mut peers = Peers::default();
        peers.devices.insert(
            B.into(),
            Peer {
                node_id: "b".repeat(32),
                name: "n<2>".into(),
                address: "tcp://10.99.0.2:22000".into(),
            },
        );
        let c = render_config(
            A,
            "n1",
            Ipv4Addr::new(10, 99, 0, 1),
            "$2a$10$hash",
            "k3y",
            Path::new("/var/lib/cloudy/syncthing/shared"),
            &peers,
        )
        .unwrap();
        for want in [
            "<listenAddress>tcp://10.99.0.1:22000</listenAddress>",
            "<address>10.99.0.1:8384</address>",
            "<globalAnnounceEnabled>false</globalAnnounceEnabled>",
            "<localAnnounceEnabled>false</localAnnounceEnabled>",
            "<relaysEnabled>false</relaysEnabled>",
            "<natEnabled>false</natEnabled>",
            "<urAccepted>-1</urAccepted>",
            "<crashReportingEnabled>false</crashReportingEnabled>",
            "<password>$2a$10$hash</password>",
            "<apikey>k3y</apikey>",
            "<address>tcp://10.99.0.2:22000</address>",
            "name=\"n&lt;2&gt;\"",
        ] {
            assert!(c.contains(want), "missing {want} in\n{c}");
        }
        assert_eq!(
            c.matches(&format!("<device id=\"{B}\"")).count(),
            2,
            "peer listed and in the folder"
        );
        assert!(!c.contains("{{"));
    }

    /// The attack through real `configure` (and real `syncthing generate`): the (compromised)
    /// service user points peers.json's folder at a new directory under a root-owned one, or
    /// swaps its home for a link to it. Root neither makes nor chowns anything there.
    #[test]
    fn the_service_cannot_steer_root_to_its_folder_or_through_a_link() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if !nix::unistd::geteuid().is_root() || !Path::new(EXE).exists() {
            eprintln!("SKIP the_service_cannot_steer_root_to_its_folder_or_through_a_link: needs root and {EXE}");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let sys = System::new(root.path());
        let s = Syncthing::new(&sys);
        let etc = root.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755)).unwrap();
        let looks = || {
            let m = std::fs::symlink_metadata(&etc).unwrap();
            let names: Vec<_> = std::fs::read_dir(&etc)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            ((m.uid(), m.gid(), m.mode() & 0o7777), names)
        };
        let before = looks();
        let env = Env {
            sys: sys.clone(),
            ctx: crate::services::test_context(),
            catalog: vec![],
            agent_exe: "/bin/true".into(),
        };
        assert_eq!(s.configure(&env).unwrap(), Configured::Changed);
        for folder in [
            etc.join("made"),
            sys.path("/srv").join("../etc/made"),
            sys.path("/srv"),
        ] {
            // The service user's own file: it can write anything there.
            std::fs::write(
                s.peers_file(),
                serde_json::json!({ "folder": folder, "devices": {} }).to_string(),
            )
            .unwrap();
            let r = s.configure(&env);
            assert!(!etc.join("made").exists(), "nothing made under /etc");
            assert_eq!(looks(), before, "the target is untouched");
            assert!(r.is_err(), "{} refused: {r:?}", folder.display());
        }
        std::fs::remove_file(s.peers_file()).unwrap();
        // Its home swapped for a link.
        std::fs::rename(s.home(), s.state.join("home.old")).unwrap();
        std::os::unix::fs::symlink(&etc, s.home()).unwrap();
        *s.applied.lock().unwrap() = None;
        assert!(s.configure(&env).is_err(), "a linked home is refused");
        assert_eq!(looks(), before, "the target is untouched");
    }

    #[test]
    fn malformed_peers_are_left_out() {
        let mut peers = Peers::default();
        peers.devices.insert(
            "NOT-A-DEVICE\"/><x".into(),
            Peer {
                node_id: "b".repeat(32),
                name: "x".into(),
                address: "tcp://10.99.0.2:22000".into(),
            },
        );
        let c = render_config(
            A,
            "n1",
            Ipv4Addr::new(10, 99, 0, 1),
            "h",
            "k",
            Path::new("/s"),
            &peers,
        )
        .unwrap();
        assert!(!c.contains("NOT-A-DEVICE"));
    }
}
