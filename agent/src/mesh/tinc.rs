//! Tinc 1.0 for the community VPN: a key pair made once, and `tinc.conf`, `hosts/` and
//! `tinc-up`/`tinc-down` rendered from the member list. Only tincd itself is supervised
//! elsewhere (`os::supervisor`).

use nix::sys::signal::Signal;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Serialize;

use crate::mesh::members::{Member, Members};
use crate::os::files::{render as render_template, FileError};
use crate::os::system::{write_atomic, System};
use cloudy_model::seed::TincMode;

/// Debian's tinc 1.0 makes RSA keys: 2048 bits is sound for link keys and quick to make on
/// the small boards nodes run on, where 4096 bits keeps the first boot waiting.
pub const KEY_BITS: u32 = 2048;
pub const KEY_DIR: &str = "/var/lib/cloudy/tinc";
/// tincd opens connections to this many members; the rest are reached through them.
pub const MAX_CONNECT_TO: usize = 8;

const TINC_CONF: &str = include_str!("templates/tinc.conf");
const HOST: &str = include_str!("templates/tinc-host");
const TINC_UP: &str = include_str!("templates/tinc-up");
const TINC_DOWN: &str = include_str!("templates/tinc-down");

#[derive(Debug, thiserror::Error)]
pub enum TincError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("running {tincd} to make keys: {problem}; install Debian's `tinc` package")]
    Keygen { tincd: String, problem: String },
    #[error("{priv_key} exists without {pub_key}; keys are never replaced, so restore the public key from a backup or delete both to make a new identity")]
    PubMissing { priv_key: String, pub_key: String },
    #[error(transparent)]
    Template(#[from] FileError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TincError + '_ {
    move |source| TincError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where one tinc network lives under a node's root.
#[derive(Debug, Clone)]
pub struct Paths {
    pub netname: String,
    pub confdir: PathBuf,
    pub key_dir: PathBuf,
    pub pidfile: PathBuf,
}

impl Paths {
    pub fn new(sys: &System, netname: &str) -> Self {
        Paths {
            netname: netname.into(),
            confdir: sys.path(&format!("/etc/tinc/{netname}")),
            key_dir: sys.path(KEY_DIR),
            pidfile: sys.path(&format!("/run/tinc.{netname}.pid")),
        }
    }

    pub fn private_key(&self) -> PathBuf {
        self.key_dir.join("rsa_key.priv")
    }

    pub fn public_key(&self) -> PathBuf {
        self.key_dir.join("rsa_key.pub")
    }
}

/// The node's tinc public key, made on first boot. Crash-safe: keys are made in a scratch
/// directory, the public key is stored first and the private key renamed into place last, so
/// a private key on disk always has its public key beside it and is never made twice.
pub fn ensure_keys(paths: &Paths, tincd: &Path) -> Result<String, TincError> {
    let (priv_key, pub_key) = (paths.private_key(), paths.public_key());
    if priv_key.exists() {
        return match std::fs::read_to_string(&pub_key) {
            Ok(s) => Ok(pem_block(&s).unwrap_or(s)),
            Err(_) => Err(TincError::PubMissing {
                priv_key: priv_key.display().to_string(),
                pub_key: pub_key.display().to_string(),
            }),
        };
    }
    std::fs::create_dir_all(&paths.key_dir).map_err(io_err(&paths.key_dir))?;
    // Scratch left by a run killed half-way is never trusted.
    if let Ok(rd) = std::fs::read_dir(&paths.key_dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(".keygen-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let scratch = paths
        .key_dir
        .join(format!(".keygen-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(io_err(&scratch))?;
    std::fs::write(scratch.join("tinc.conf"), "").map_err(io_err(&scratch))?;
    let keygen_err = |problem: String| TincError::Keygen {
        tincd: tincd.display().to_string(),
        problem,
    };
    let out = std::process::Command::new(tincd)
        .arg("-c")
        .arg(&scratch)
        .arg(format!("-K{KEY_BITS}"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| keygen_err(e.to_string()))?;
    if !out.status.success() {
        return Err(keygen_err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let pub_text = std::fs::read_to_string(scratch.join("rsa_key.pub"))
        .map_err(|e| keygen_err(e.to_string()))?;
    let pem =
        pem_block(&pub_text).ok_or_else(|| keygen_err("no public key in its output".into()))?;
    write_atomic(&pub_key, pem.as_bytes(), 0o644).map_err(io_err(&pub_key))?;
    let scratch_priv = scratch.join("rsa_key.priv");
    std::fs::File::open(&scratch_priv)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&scratch_priv))?;
    std::fs::rename(&scratch_priv, &priv_key).map_err(io_err(&priv_key))?;
    if let Ok(d) = std::fs::File::open(&paths.key_dir) {
        let _ = d.sync_all();
    }
    let _ = std::fs::remove_dir_all(&scratch);
    tracing::info!("made the node's tinc key pair ({KEY_BITS} bits)");
    Ok(pem)
}

fn pem_block(s: &str) -> Option<String> {
    let start = s.find("-----BEGIN RSA PUBLIC KEY-----")?;
    let end_marker = "-----END RSA PUBLIC KEY-----";
    let end = s[start..].find(end_marker)? + start + end_marker.len();
    Some(format!("{}\n", &s[start..end]))
}

/// Settings that do not come from the member list.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: TincMode,
    pub port: u16,
    pub vpn_prefix: u8,
    /// `cloudy-agent` itself: tinc-up calls it to configure the VPN interface.
    pub agent_exe: PathBuf,
    pub root: PathBuf,
}

#[derive(Debug, Default, PartialEq)]
pub struct Rendered {
    /// tinc.conf or a host file changed: tincd must reread them (SIGHUP).
    pub reload: bool,
    /// tinc-up changed (our VPN address): tincd must restart to run it again.
    pub restart: bool,
}

/// Writes the tinc configuration for this member list; touches only files whose content
/// changes, because tinc 1.0 drops a connection whose host file is newer than its last reload.
pub fn render(
    paths: &Paths,
    settings: &Settings,
    members: &Members,
) -> Result<Rendered, TincError> {
    let me = members.me();
    let mut out = Rendered::default();
    let hosts = paths.confdir.join("hosts");
    std::fs::create_dir_all(&hosts).map_err(io_err(&hosts))?;
    let conf_path = paths.confdir.join("tinc.conf");
    let conf = tinc_conf(paths, settings, members)?;
    // A new Name (an older agent named us with 8 hex digits of the id) takes a restart:
    // tincd reads its Name only at start. The old host files go below, as strangers.
    let name_line = |c: &str| {
        c.lines()
            .find(|l| l.starts_with("Name ="))
            .map(str::to_owned)
    };
    if let Ok(old) = std::fs::read_to_string(&conf_path) {
        out.restart |= name_line(&old) != name_line(&conf);
    }
    out.reload |= write_if_changed(&conf_path, &conf, 0o644)?;
    let mut wanted = Vec::new();
    for m in members.members.values() {
        let name = m.tinc_name();
        out.reload |= write_if_changed(&hosts.join(&name), &host_file(m, settings.mode)?, 0o644)?;
        wanted.push(name);
    }
    // hosts/ is ours: a file for anyone not in the list would let them in.
    for e in std::fs::read_dir(&hosts).map_err(io_err(&hosts))?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !wanted.contains(&n) {
            let _ = std::fs::remove_file(e.path());
            out.reload = true;
        }
    }
    let up = tinc_up(settings, me)?;
    out.restart |= write_if_changed(&paths.confdir.join("tinc-up"), &up, 0o755)?;
    let down = render_template("tinc-down", TINC_DOWN, &())?;
    write_if_changed(&paths.confdir.join("tinc-down"), &down, 0o755)?;
    Ok(out)
}

fn write_if_changed(path: &Path, content: &str, mode: u32) -> Result<bool, TincError> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(false);
    }
    write_atomic(path, content.as_bytes(), mode).map_err(io_err(path))?;
    Ok(true)
}

/// The members tincd connects to: a stable pick per node (by a hash of both ids), so the
/// connection graph is spread out and does not change on every new member.
pub fn connect_to(members: &Members) -> Vec<&Member> {
    use sha2::{Digest, Sha256};
    let mut others: Vec<(Vec<u8>, &Member)> = members
        .others()
        .filter(|m| !m.address.is_unspecified())
        .map(|m| {
            (
                Sha256::digest(format!("{}{}", members.me, m.id).as_bytes()).to_vec(),
                m,
            )
        })
        .collect();
    others.sort_by(|a, b| a.0.cmp(&b.0));
    others
        .into_iter()
        .take(MAX_CONNECT_TO)
        .map(|(_, m)| m)
        .collect()
}

fn tinc_conf(paths: &Paths, settings: &Settings, members: &Members) -> Result<String, TincError> {
    #[derive(Serialize)]
    struct Conf<'a> {
        name: String,
        mode: &'a str,
        interface: &'a str,
        port: u16,
        private_key: String,
        connect_to: Vec<String>,
    }
    let mut connect_to: Vec<String> = connect_to(members).iter().map(|m| m.tinc_name()).collect();
    connect_to.sort();
    let conf = Conf {
        name: members.me().tinc_name(),
        mode: match settings.mode {
            TincMode::Switch => "switch",
            TincMode::Router => "router",
        },
        interface: &paths.netname,
        port: settings.port,
        private_key: paths.private_key().display().to_string(),
        connect_to,
    };
    Ok(render_template("tinc.conf", TINC_CONF, &conf)?)
}

fn host_file(m: &Member, mode: TincMode) -> Result<String, TincError> {
    #[derive(Serialize)]
    struct Host<'a> {
        address: IpAddr,
        port: u16,
        router: bool,
        vpn: Ipv4Addr,
        pubkey: &'a str,
    }
    // Every field was validated in `members`: the address parsed as an IP, the key is PEM only.
    let host = Host {
        address: m.address,
        port: m.tinc_port,
        // Router mode routes by each member's subnet; switch mode learns MACs instead.
        router: mode == TincMode::Router,
        vpn: m.vpn,
        pubkey: m.pubkey.trim_end(),
    };
    Ok(render_template("tinc-host", HOST, &host)?)
}

fn tinc_up(settings: &Settings, me: &Member) -> Result<String, TincError> {
    #[derive(Serialize)]
    struct Up {
        agent_exe: String,
        root: String,
        vpn: Ipv4Addr,
        prefix: u8,
        mac: String,
    }
    let up = Up {
        agent_exe: settings.agent_exe.display().to_string(),
        root: settings.root.display().to_string(),
        vpn: me.vpn,
        prefix: settings.vpn_prefix,
        mac: crate::os::network::mac_for(&me.id),
    };
    Ok(render_template("tinc-up", TINC_UP, &up)?)
}

/// tincd as a supervised program.
pub fn tincd(tincd: &Path, paths: &Paths) -> crate::os::supervisor::Program {
    let confdir = paths.confdir.to_string_lossy().into_owned();
    let mut p = crate::os::supervisor::Program::new("tincd", tincd)
        .arg("-c")
        .arg(&confdir)
        .arg(format!("--pidfile={}", paths.pidfile.display()))
        // Stay in the foreground as our child; log to our stderr (the journal).
        .arg("-D")
        // More detail for chasing a VPN problem: CLOUDY_TINCD_DEBUG=3.
        .arg(format!(
            "-d{}",
            std::env::var("CLOUDY_TINCD_DEBUG")
                .ok()
                .and_then(|v| v.parse::<u8>().ok())
                .unwrap_or(1)
        ));
    // Reread tinc.conf and hosts/, then connect to new members now, not after tincd's retry
    // backoff.
    p.reload = vec![Signal::SIGHUP, Signal::SIGALRM];
    p.marker = Some(confdir);
    p.pidfile = Some(paths.pidfile.clone());
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::members::tests::member;

    fn setup() -> (tempfile::TempDir, Paths, Settings) {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        let paths = Paths::new(&sys, "cloudy");
        let settings = Settings {
            mode: TincMode::Switch,
            port: 655,
            vpn_prefix: 16,
            agent_exe: "/usr/bin/cloudy-agent".into(),
            root: "/".into(),
        };
        (dir, paths, settings)
    }

    /// A node upgraded from names with 8 hex digits of the id: its old host files are dropped
    /// (a host file for a name nobody has would let its key holder in), tincd restarts under
    /// the new Name, and a second id with the same 8-digit prefix gets a file of its own.
    #[test]
    fn old_short_names_are_replaced() {
        let (_d, paths, settings) = setup();
        let hosts = paths.confdir.join("hosts");
        std::fs::create_dir_all(&hosts).unwrap();
        std::fs::write(
            paths.confdir.join("tinc.conf"),
            "Name = one_aaaaaaaa\nConnectTo = two_bbbbbbbb\n",
        )
        .unwrap();
        std::fs::write(hosts.join("one_aaaaaaaa"), "old").unwrap();
        std::fs::write(hosts.join("two_bbbbbbbb"), "old").unwrap();
        let mut ms = Members::new(member('a', "one"));
        let two = member('b', "two");
        let mut twin = crate::mesh::members::tests::member('c', "two");
        twin.id = format!("{}{}", "b".repeat(8), "c".repeat(24));
        ms.merge(vec![
            two.clone(),
            crate::mesh::members::tests::signed_as(twin.clone(), 'c'),
        ]);
        let r = render(&paths, &settings, &ms).unwrap();
        assert!(r.restart, "a new Name takes a restart");
        let mut names: Vec<String> = std::fs::read_dir(&hosts)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [ms.me().tinc_name(), two.tinc_name(), twin.tinc_name()],
            "old files gone, one file per member"
        );
    }

    #[test]
    fn render_writes_only_changes_and_drops_strangers() {
        let (_d, paths, settings) = setup();
        let mut ms = Members::new(member('a', "one"));
        ms.merge(vec![member('b', "two")]);
        let r = render(&paths, &settings, &ms).unwrap();
        assert_eq!(
            r,
            Rendered {
                reload: true,
                restart: true
            }
        );
        let conf = std::fs::read_to_string(paths.confdir.join("tinc.conf")).unwrap();
        assert!(
            conf.contains(&format!("Name = one_{}\n", "a".repeat(32)))
                && conf.contains(&format!("ConnectTo = two_{}\n", "b".repeat(32))),
            "{conf}"
        );
        assert!(conf.contains("Mode = switch\n"));
        let host =
            std::fs::read_to_string(paths.confdir.join(format!("hosts/two_{}", "b".repeat(32))))
                .unwrap();
        assert!(
            host.starts_with("Address = 192.0.2.1 655\n")
                && host.ends_with("-----END RSA PUBLIC KEY-----\n")
        );
        let up = std::fs::read_to_string(paths.confdir.join("tinc-up")).unwrap();
        assert!(
            up.contains(&format!("net up \"$INTERFACE\" {}/16", ms.me().vpn)),
            "{up}"
        );
        assert_eq!(
            render(&paths, &settings, &ms).unwrap(),
            Rendered::default(),
            "idempotent"
        );
        std::fs::write(paths.confdir.join("hosts/intruder"), "Address = 6.6.6.6\n").unwrap();
        assert!(render(&paths, &settings, &ms).unwrap().reload);
        assert!(!paths.confdir.join("hosts/intruder").exists());
    }

    #[test]
    fn connect_to_is_bounded_and_stable() {
        let mut ms = Members::new(member('0', "me"));
        let others: Vec<_> = "123456789abcdef".chars().map(|c| member(c, "n")).collect();
        ms.merge(others);
        let a: Vec<String> = connect_to(&ms).iter().map(|m| m.id.clone()).collect();
        assert_eq!(a.len(), MAX_CONNECT_TO);
        let b: Vec<String> = connect_to(&ms).iter().map(|m| m.id.clone()).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn keys_made_once_with_real_tincd() {
        let Some(tincd) = find_tincd() else {
            eprintln!("SKIP keys_made_once_with_real_tincd: no tincd (apt-get install tinc)");
            return;
        };
        let (_d, paths, _) = setup();
        std::fs::create_dir_all(paths.key_dir.join(".keygen-999")).unwrap();
        let k1 = ensure_keys(&paths, &tincd).unwrap();
        assert!(k1.starts_with("-----BEGIN RSA PUBLIC KEY-----\n"));
        let priv1 = std::fs::read(paths.private_key()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(paths.private_key())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(ensure_keys(&paths, &tincd).unwrap(), k1);
        assert_eq!(
            std::fs::read(paths.private_key()).unwrap(),
            priv1,
            "never regenerated"
        );
        let left: Vec<_> = std::fs::read_dir(&paths.key_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "scratch removed: {left:?}");
        std::fs::remove_file(paths.public_key()).unwrap();
        assert!(matches!(
            ensure_keys(&paths, &tincd),
            Err(TincError::PubMissing { .. })
        ));
    }

    pub fn find_tincd() -> Option<PathBuf> {
        ["/usr/sbin/tincd", "/usr/local/sbin/tincd"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    }
}
