//! The user's seed (`cloudy.toml`): what this node should be. Read from the boot medium or the
//! kernel command line, layered over the image's defaults in `/etc/cloudy/agent.toml`.
//!
//! A broken seed never stops a node from booting: it is reported and the defaults are used.

use serde::Deserialize;
use std::path::{Path, PathBuf};

use crate::system::System;

/// The only seed format this agent understands; a seed says which one it was written for.
pub const SEED_VERSION: u32 = 1;

/// Places a seed is looked for, first found wins. The defaults file is read first and the
/// chosen seed layered over it.
pub const DEFAULTS_PATH: &str = "/etc/cloudy/agent.toml";
pub const SEED_PATHS: &[&str] = &[
    // SD card images: the FAT firmware partition, editable from any OS.
    "/boot/firmware/cloudy.toml",
    // Live ISO (live-boot mounts the medium here) and PXE bundles.
    "/run/live/medium/cloudy/cloudy.toml",
];

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: key `{key}`: {problem}; fix: {fix}")]
    Invalid {
        file: String,
        key: String,
        problem: String,
        fix: String,
    },
}

/// Port of the join service (member lists exchanged under the community key).
pub const DEFAULT_JOIN_PORT: u16 = 6655;
/// Tinc's registered port, as the original Cloudy used.
pub const DEFAULT_TINC_PORT: u16 = 655;
pub const DEFAULT_NETNAME: &str = "cloudy";
pub const DEFAULT_VPN_SUBNET: &str = "10.99.0.0/16";
/// Shorter keys are guessable by anyone who sees a boot partition over a shoulder.
pub const MIN_COMMUNITY_KEY: usize = 16;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    pub version: u32,
    #[serde(default)]
    pub node: Node,
    pub community: Option<Community>,
    pub network: Option<Network>,
    pub tinc: Option<Tinc>,
    pub services: Option<Services>,
    pub dashboard: Option<Dashboard>,
    pub ssh: Option<Ssh>,
    /// Live streaming: a source (`source = ...`) or a peer relaying a stream.
    pub streaming: Option<crate::streaming::Config>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Hostname of the node; also its name in the community.
    pub name: Option<String>,
}

/// The microcloud this node belongs to. Without it the node stays alone (no VPN, no peers).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Community {
    pub name: String,
    /// Shared secret of the community. Moved into /var/lib/cloudy on first boot and removed
    /// from the boot medium; a later seed may omit it.
    pub key: Option<String>,
    /// `host:port` of join services of existing members, for members not on the same LAN.
    #[serde(default)]
    pub peers: Vec<String>,
    /// Port this node's join service listens on.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Force the primary interface (e.g. `wlan0`) instead of the default route's.
    pub interface: Option<String>,
    /// Static IPv4 or IPv6 address with prefix, e.g. `192.168.1.20/24`.
    pub address: Option<String>,
    /// Default gateway for the static address.
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TincMode {
    /// One virtual layer 2 for the whole community, so mDNS crosses the VPN.
    #[default]
    Switch,
    Router,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tinc {
    pub netname: Option<String>,
    pub port: Option<u16>,
    pub mode: Option<TincMode>,
    /// IPv4 range VPN addresses are chosen from, e.g. `10.99.0.0/16`.
    pub subnet: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Services {
    #[serde(default)]
    pub enable: Vec<String>,
    /// Services run by something else on this node that the agent only announces (until the
    /// agent runs them itself): published while something listens on the port.
    #[serde(default)]
    pub publish: Vec<Publish>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    #[serde(rename = "type")]
    pub kind: String,
    pub port: u16,
    #[serde(default)]
    pub description: String,
    /// Typed fields of the service type (e.g. `device_id` for syncthing).
    #[serde(default)]
    pub fields: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Dashboard {
    /// Argon2 PHC string (`cloudy-agent seed hash-password`, or Debian's `argon2` tool with
    /// `-id -e`); moved into /var/lib/cloudy like the key. Without it a password is generated
    /// on first boot and shown once on the console.
    pub password_hash: Option<String>,
    /// TCP port of the dashboard on the node's addresses (default 8080).
    pub port: Option<u16>,
}

/// The dashboard's port when the seed names none.
pub const DEFAULT_DASHBOARD_PORT: u16 = 8080;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    #[serde(default)]
    pub authorized_keys: Vec<String>,
}

/// Services the agent knows how to run; anything else in a seed is a typo.
pub const KNOWN_SERVICES: &[&str] = &[
    "tahoe-introducer",
    "tahoe-storage",
    "streaming",
    "syncthing",
];

impl Seed {
    pub fn parse(file: &str, text: &str) -> Result<Seed, SeedError> {
        // Check the version before the schema so an old or future seed gets the right message.
        let raw: toml::Table = toml::from_str(text).map_err(|e| SeedError::Parse {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        match raw.get("version") {
            Some(toml::Value::Integer(v)) if *v == i64::from(SEED_VERSION) => {}
            Some(v) => {
                return Err(SeedError::Invalid {
                    file: file.into(),
                    key: "version".into(),
                    problem: format!("unsupported seed version {v}"),
                    fix: format!("write `version = {SEED_VERSION}`"),
                })
            }
            None => {
                return Err(SeedError::Invalid {
                    file: file.into(),
                    key: "version".into(),
                    problem: "missing".into(),
                    fix: format!("add `version = {SEED_VERSION}` at the top"),
                })
            }
        }
        let seed: Seed = toml::from_str(text).map_err(|e| SeedError::Parse {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        seed.validate(file)?;
        Ok(seed)
    }

    pub fn validate(&self, file: &str) -> Result<(), SeedError> {
        let bad = |key: &str, problem: String, fix: &str| SeedError::Invalid {
            file: file.into(),
            key: key.into(),
            problem,
            fix: fix.into(),
        };
        const NAME_FIX: &str =
            "use 1-63 lowercase letters, digits and '-', not starting or ending with '-'";
        if let Some(name) = &self.node.name {
            check_hostname(name).map_err(|p| bad("node.name", p, NAME_FIX))?;
        }
        if let Some(c) = &self.community {
            check_hostname(&c.name).map_err(|p| bad("community.name", p, NAME_FIX))?;
            if let Some(key) = &c.key {
                if key.chars().count() < MIN_COMMUNITY_KEY {
                    return Err(bad(
                        "community.key",
                        format!("{} characters is too short", key.chars().count()),
                        "use at least 16 random characters, e.g. from `openssl rand -base64 24`",
                    ));
                }
            }
            for p in &c.peers {
                check_endpoint(p).map_err(|e| {
                    bad(
                        "community.peers",
                        format!("{p:?}: {e}"),
                        "write each peer as \"host:port\", e.g. \"10.1.2.3:6655\"",
                    )
                })?;
            }
            if c.port == Some(0) {
                return Err(bad(
                    "community.port",
                    "0 is not a port".into(),
                    "leave it out for 6655",
                ));
            }
        }
        if let Some(n) = &self.network {
            if let Some(i) = &n.interface {
                check_ifname(i).map_err(|p| {
                    bad(
                        "network.interface",
                        p,
                        "name an interface like eth0 or wlan0",
                    )
                })?;
            }
            if let Some(a) = &n.address {
                parse_cidr(a).map_err(|p| {
                    bad(
                        "network.address",
                        p,
                        "write address/prefix, e.g. \"192.168.1.20/24\"",
                    )
                })?;
            }
            if let Some(g) = &n.gateway {
                g.parse::<std::net::IpAddr>().map_err(|e| {
                    bad(
                        "network.gateway",
                        format!("{g:?}: {e}"),
                        "write an IP address",
                    )
                })?;
                if n.address.is_none() {
                    return Err(bad(
                        "network.gateway",
                        "set without network.address".into(),
                        "add network.address or remove the gateway",
                    ));
                }
            }
        }
        if let Some(t) = &self.tinc {
            if let Some(n) = &t.netname {
                check_netname(n).map_err(|p| {
                    bad("tinc.netname", p, "use 1-15 lowercase letters, digits, '_'")
                })?;
            }
            if t.port == Some(0) {
                return Err(bad(
                    "tinc.port",
                    "0 is not a port".into(),
                    "leave it out for 655",
                ));
            }
            if let Some(s) = &t.subnet {
                match parse_cidr(s) {
                    Ok((std::net::IpAddr::V4(_), p)) if (8..=30).contains(&p) => {}
                    Ok(_) => {
                        return Err(bad(
                            "tinc.subnet",
                            format!("{s:?} is not an IPv4 range of /8 to /30"),
                            "e.g. \"10.99.0.0/16\"",
                        ))
                    }
                    Err(p) => return Err(bad("tinc.subnet", p, "e.g. \"10.99.0.0/16\"")),
                }
            }
        }
        if let Some(s) = &self.services {
            if let Some(x) = s
                .enable
                .iter()
                .find(|x| !KNOWN_SERVICES.contains(&x.as_str()))
            {
                return Err(bad(
                    "services.enable",
                    format!("unknown service {x:?}"),
                    &format!("choose from {}", KNOWN_SERVICES.join(", ")),
                ));
            }
            if s.publish.len() > crate::catalog::MAX_PER_NODE {
                return Err(bad(
                    "services.publish",
                    format!("{} services", s.publish.len()),
                    "publish at most 64",
                ));
            }
            for p in &s.publish {
                // The same checks a record from the network gets, on a stand-in record.
                let probe = crate::services::declared_record(p, &crate::services::Context::probe());
                if let Err(e) = probe.validate() {
                    return Err(bad(
                        "services.publish",
                        format!("{} port {}: {e}", p.kind, p.port),
                        "use a type of [a-z0-9-], a port 1-65535, a description of at most 160 characters, and only the fields of that type",
                    ));
                }
            }
        }
        if let Some(s) = &self.streaming {
            s.validate()
                .map_err(|(key, problem, fix)| bad(key, problem, fix))?;
        }
        if let Some(d) = &self.dashboard {
            if let Some(h) = &d.password_hash {
                if !crate::identity::is_password_hash(h) {
                    return Err(bad(
                        "dashboard.password_hash",
                        "not an Argon2 PHC hash (a plain password is never accepted)".into(),
                        "paste the output of `cloudy-agent seed hash-password` (or `argon2 SALT -id -e`)",
                    ));
                }
            }
            if d.port == Some(0) {
                return Err(bad(
                    "dashboard.port",
                    "0 is not a port".into(),
                    "leave it out for 8080",
                ));
            }
        }
        if let Some(s) = &self.ssh {
            for k in &s.authorized_keys {
                let kind = k.split_whitespace().next().unwrap_or("");
                let ok = (kind.starts_with("ssh-")
                    || kind.starts_with("ecdsa-")
                    || kind.starts_with("sk-"))
                    && k.split_whitespace().count() >= 2
                    && !k.contains('\n');
                if !ok {
                    return Err(bad(
                        "ssh.authorized_keys",
                        format!(
                            "{:?} is not a public key line",
                            k.chars().take(24).collect::<String>()
                        ),
                        "paste one line of ~/.ssh/id_ed25519.pub per key",
                    ));
                }
            }
        }
        Ok(())
    }

    /// `other` wins wherever it says something: `node` key by key, other sections whole, so a
    /// seed's `[network]` never mixes with half of the image's.
    pub fn layer(mut self, other: Seed) -> Seed {
        if other.node.name.is_some() {
            self.node.name = other.node.name;
        }
        macro_rules! section {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        section!(community, network, tinc, services, dashboard, ssh, streaming);
        self
    }

    pub fn netname(&self) -> &str {
        self.tinc
            .as_ref()
            .and_then(|t| t.netname.as_deref())
            .unwrap_or(DEFAULT_NETNAME)
    }

    pub fn tinc_port(&self) -> u16 {
        self.tinc
            .as_ref()
            .and_then(|t| t.port)
            .unwrap_or(DEFAULT_TINC_PORT)
    }

    pub fn tinc_mode(&self) -> TincMode {
        self.tinc.as_ref().and_then(|t| t.mode).unwrap_or_default()
    }

    pub fn vpn_subnet(&self) -> (std::net::Ipv4Addr, u8) {
        let s = self
            .tinc
            .as_ref()
            .and_then(|t| t.subnet.as_deref())
            .unwrap_or(DEFAULT_VPN_SUBNET);
        match parse_cidr(s) {
            Ok((std::net::IpAddr::V4(a), p)) => (a, p),
            _ => (std::net::Ipv4Addr::new(10, 99, 0, 0), 16),
        }
    }

    pub fn dashboard_port(&self) -> u16 {
        self.dashboard
            .as_ref()
            .and_then(|d| d.port)
            .unwrap_or(DEFAULT_DASHBOARD_PORT)
    }

    pub fn join_port(&self) -> u16 {
        self.community
            .as_ref()
            .and_then(|c| c.port)
            .unwrap_or(DEFAULT_JOIN_PORT)
    }
}

/// `ip/prefix`, prefix within the family's width.
pub fn parse_cidr(s: &str) -> Result<(std::net::IpAddr, u8), String> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} has no /prefix"))?;
    let ip: std::net::IpAddr = a.parse().map_err(|e| format!("{a:?}: {e}"))?;
    let p: u8 = p
        .parse()
        .map_err(|_| format!("prefix {p:?} is not a number"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if p > max {
        return Err(format!("prefix /{p} is longer than {max}"));
    }
    Ok((ip, p))
}

/// `host:port` or `[v6]:port`; resolution waits until the network is up.
pub fn check_endpoint(s: &str) -> Result<(), String> {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = s.rsplit_once(':').ok_or("no :port")?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or("port is not 1-65535")?;
    if host.is_empty()
        || host.len() > 253
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err("host is not a name or address".into());
    }
    Ok(())
}

pub fn check_ifname(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 15
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "{s:?} is not an interface name (1-15 letters, digits, '-', '_', '.')"
        ));
    }
    Ok(())
}

/// The netname is also the VPN interface's name, so it carries the interface limits.
pub fn check_netname(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 15
        || !s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!(
            "{s:?} is not 1-15 lowercase letters, digits or '_'"
        ));
    }
    Ok(())
}

pub fn check_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("{} characters (1-63 allowed)", name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!("character {c:?} is not allowed in a hostname"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("starts or ends with '-'".into());
    }
    Ok(())
}

/// What was loaded, from where, and what went wrong on the way.
#[derive(Debug, Default)]
pub struct Loaded {
    pub seed: Seed,
    pub source: Option<PathBuf>,
    pub errors: Vec<String>,
}

pub fn read_file(path: &Path) -> Result<Seed, SeedError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SeedError::Read {
        file: file.clone(),
        source,
    })?;
    Seed::parse(&file, &text)
}

/// `cloudy.seed=PATH` on the kernel command line names a seed file on the node.
pub fn cmdline_seed(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cloudy.seed="))
        .map(str::to_string)
}

/// Loads defaults and the first seed found. Never fails: errors are collected for the console.
pub fn load(sys: &System, cmdline: &str) -> Loaded {
    let mut loaded = Loaded {
        seed: Seed {
            version: SEED_VERSION,
            ..Seed::default()
        },
        ..Loaded::default()
    };
    let defaults = sys.path(DEFAULTS_PATH);
    if defaults.exists() {
        match read_file(&defaults) {
            Ok(s) => loaded.seed = s,
            Err(e) => loaded.errors.push(e.to_string()),
        }
    }
    let mut candidates: Vec<PathBuf> = SEED_PATHS.iter().map(|p| sys.path(p)).collect();
    if let Some(p) = cmdline_seed(cmdline) {
        candidates.push(sys.path(&p));
    }
    if let Some(path) = candidates.into_iter().find(|p| p.exists()) {
        match read_file(&path) {
            Ok(s) => {
                loaded.seed = std::mem::take(&mut loaded.seed).layer(s);
                loaded.source = Some(path);
            }
            Err(e) => loaded
                .errors
                .push(format!("{e} (booting on the image defaults)")),
        }
    }
    loaded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/seeds")
            .join(name)
    }

    #[test]
    fn good_fixtures_parse() {
        for f in [
            "good-minimal.toml",
            "good-named.toml",
            "good-full.toml",
            "good-services.toml",
            "good-streaming.toml",
        ] {
            read_file(&fixture(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }

    #[test]
    fn bad_fixtures_name_the_key() {
        for (f, key) in [
            ("bad-version.toml", "version"),
            ("bad-no-version.toml", "version"),
            ("bad-unknown-key.toml", "colour"),
            ("bad-hostname.toml", "node.name"),
            ("bad-syntax.toml", "line"),
            ("bad-community-key.toml", "community.key"),
            ("bad-community-no-name.toml", "name"),
            ("bad-peer.toml", "community.peers"),
            ("bad-address.toml", "network.address"),
            ("bad-tinc-mode.toml", "mode"),
            ("bad-tinc-subnet.toml", "tinc.subnet"),
            ("bad-password.toml", "dashboard.password_hash"),
            ("bad-dashboard-port.toml", "dashboard.port"),
            ("bad-ssh-key.toml", "ssh.authorized_keys"),
            ("bad-service.toml", "services.enable"),
            ("bad-service-publish.toml", "services.publish"),
            ("bad-streaming-source.toml", "streaming.source"),
        ] {
            let err = read_file(&fixture(f)).expect_err(f).to_string();
            assert!(err.contains(key), "{f}: error {err:?} does not name {key}");
            assert!(err.contains(f), "{f}: error {err:?} does not name the file");
        }
    }

    #[test]
    fn every_bad_fixture_is_listed() {
        // A fixture added without a line above would silently prove nothing.
        let listed = 17;
        let n = std::fs::read_dir(fixture(""))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("bad-")
            })
            .count();
        assert_eq!(n, listed);
    }

    #[test]
    fn full_seed_layers_sections_whole() {
        let full = read_file(&fixture("good-full.toml")).unwrap();
        let over = Seed::parse("x", "version = 1\n[network]\ninterface = \"eth1\"\n").unwrap();
        let s = full.clone().layer(over);
        assert_eq!(
            s.network.as_ref().unwrap().interface.as_deref(),
            Some("eth1")
        );
        assert_eq!(s.network.as_ref().unwrap().address, None);
        assert_eq!(s.community, full.community);
        assert_eq!(s.vpn_subnet(), (std::net::Ipv4Addr::new(10, 99, 0, 0), 16));
        assert_eq!(s.join_port(), 6655);
    }

    #[test]
    fn broken_seed_falls_back_to_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        sys.write_atomic(
            DEFAULTS_PATH,
            b"version = 1\n[node]\nname = \"cloudy\"\n",
            0o644,
        )
        .unwrap();
        sys.write_atomic(
            SEED_PATHS[1],
            b"version = 1\n[node]\nname = \"Bad Name\"\n",
            0o644,
        )
        .unwrap();
        let loaded = load(&sys, "");
        assert_eq!(loaded.seed.node.name.as_deref(), Some("cloudy"));
        assert_eq!(loaded.errors.len(), 1);
        assert!(loaded.errors[0].contains("node.name"));
    }

    #[test]
    fn seed_layers_over_defaults_and_cmdline_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        sys.write_atomic(
            DEFAULTS_PATH,
            b"version = 1\n[node]\nname = \"cloudy\"\n",
            0o644,
        )
        .unwrap();
        sys.write_atomic(
            "/seed/mine.toml",
            b"version = 1\n[node]\nname = \"pi-test\"\n",
            0o644,
        )
        .unwrap();
        let loaded = load(&sys, "quiet cloudy.seed=/seed/mine.toml console=ttyS0");
        assert_eq!(loaded.seed.node.name.as_deref(), Some("pi-test"));
        assert!(loaded.errors.is_empty());
    }
}
