//! The user's seed (`cloudy.toml`): what this node should be. Read from the boot medium or the
//! kernel command line, layered over the image's defaults in `/etc/cloudy/agent.toml`.
//! One file per section, each with its own checks; this file ties them together.
//!
//! A broken seed never stops a node from booting: it is reported and the defaults are used.

pub mod community;
pub mod dashboard;
pub mod invalid;
pub mod network;
pub mod node;
pub mod services;
pub mod ssh;
pub mod storage;
pub mod streaming;
pub mod tinc;
pub mod update;
pub mod wifi;

use serde::Deserialize;
use std::path::{Path, PathBuf};

pub use community::{Community, DEFAULT_EXCHANGE_PORT, MIN_COMMUNITY_KEY};
pub use dashboard::{Dashboard, DEFAULT_DASHBOARD_HTTPS_PORT, DEFAULT_DASHBOARD_PORT};
pub use invalid::Invalid;
pub use network::Network;
pub use node::Node;
pub use services::{Publish, Services};
pub use ssh::Ssh;
pub use storage::{Storage, DATA_LABEL};
pub use tinc::{Tinc, TincMode, DEFAULT_NETNAME, DEFAULT_TINC_PORT, DEFAULT_VPN_SUBNET};
pub use update::Update;
pub use wifi::Wifi;

use crate::names::parse_cidr;

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

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    pub version: u32,
    #[serde(default)]
    pub node: Node,
    pub community: Option<Community>,
    pub network: Option<Network>,
    /// The Wi-Fi network to join (`wpa_supplicant` under systemd-networkd).
    pub wifi: Option<Wifi>,
    pub tinc: Option<Tinc>,
    pub services: Option<Services>,
    pub dashboard: Option<Dashboard>,
    pub ssh: Option<Ssh>,
    /// Live streaming: a source (`source = ...`) or a peer relaying a stream.
    pub streaming: Option<streaming::Config>,
    /// Where a live node keeps its state across reboots.
    pub storage: Option<Storage>,
    /// Signed A/B updates: where from, which channel, when.
    pub update: Option<Update>,
}

impl Seed {
    /// Errors name the file, the line and column and the key, and never quote the seed's text:
    /// a source line near an error may hold the community key or the dashboard hash, and the
    /// error reaches the console, the journal, the ready line, `status` and the dashboard.
    pub fn parse(file: &str, text: &str) -> Result<Seed, SeedError> {
        Seed::parse_unredacted(file, text).map_err(|e| redact(e, &secret_values(text)))
    }

    fn parse_unredacted(file: &str, text: &str) -> Result<Seed, SeedError> {
        let partial = Seed::sections_unredacted(file, text)?;
        match partial.errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(partial.seed),
        }
    }

    /// The seed section by section: every section that is valid, and an error for each one that
    /// is not (left out, so the image's default for it stands). Only a seed that cannot be read
    /// as a whole (TOML syntax, a missing or foreign version) is an `Err`: then nothing of it is
    /// trustworthy. A typo in `[dashboard]` must not cost the node its `[ssh]` keys and its
    /// `[community]`, or nobody can reach it to fix the typo.
    pub fn parse_sections(file: &str, text: &str) -> Result<Partial, SeedError> {
        let secrets = secret_values(text);
        match Seed::sections_unredacted(file, text) {
            Ok(mut p) => {
                p.errors = p.errors.into_iter().map(|e| redact(e, &secrets)).collect();
                Ok(p)
            }
            Err(e) => Err(redact(e, &secrets)),
        }
    }

    fn sections_unredacted(file: &str, text: &str) -> Result<Partial, SeedError> {
        // Check the version before the schema so an old or future seed gets the right message.
        let raw: toml::Table = toml::from_str(text).map_err(|e| parse_error(file, text, &e))?;
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
        // The spanned document, so each section's errors still name their line in `text`.
        let doc = toml_edit::ImDocument::parse(text).map_err(|e| SeedError::Parse {
            file: file.into(),
            message: format!("line unknown: {}", e.message()),
        })?;
        let mut p = Partial {
            seed: Seed {
                version: SEED_VERSION,
                ..Seed::default()
            },
            errors: Vec::new(),
            skipped: Vec::new(),
        };
        for (name, item) in doc.as_table().iter() {
            let at = doc
                .as_table()
                .get_key_value(name)
                .and_then(|(k, _)| k.span())
                .map(|s| s.start);
            let s = Section {
                file,
                text,
                name,
                item,
                at,
            };
            let r = match name {
                "version" => Ok(()),
                "node" => s.read(Node::validate).map(|v| p.seed.node = v),
                "community" => s
                    .read(Community::validate)
                    .map(|v| p.seed.community = Some(v)),
                "network" => s.read(Network::validate).map(|v| p.seed.network = Some(v)),
                "wifi" => s.read(Wifi::validate).map(|v| p.seed.wifi = Some(v)),
                "tinc" => s.read(Tinc::validate).map(|v| p.seed.tinc = Some(v)),
                "services" => s
                    .read(Services::validate)
                    .map(|v| p.seed.services = Some(v)),
                "streaming" => s
                    .read(streaming::Config::validate)
                    .map(|v| p.seed.streaming = Some(v)),
                "dashboard" => s
                    .read(Dashboard::validate)
                    .map(|v| p.seed.dashboard = Some(v)),
                "ssh" => s.read(Ssh::validate).map(|v| p.seed.ssh = Some(v)),
                "storage" => s.read(Storage::validate).map(|v| p.seed.storage = Some(v)),
                "update" => s.read(Update::validate).map(|v| p.seed.update = Some(v)),
                _ => Err(s.error(
                    at,
                    &format!(
                        "unknown section `{name}`; fix: use one of {}",
                        SECTIONS.join(", ")
                    ),
                )),
            };
            if let Err(e) = r {
                p.errors.push(e);
                p.skipped.push(name.to_string());
            }
        }
        Ok(p)
    }

    /// Every section's checks, in the order of the file.
    pub fn validate(&self, file: &str) -> Result<(), SeedError> {
        let sections = [
            Some(self.node.validate()),
            self.community.as_ref().map(Community::validate),
            self.network.as_ref().map(Network::validate),
            self.wifi.as_ref().map(Wifi::validate),
            self.tinc.as_ref().map(Tinc::validate),
            self.services.as_ref().map(Services::validate),
            self.streaming.as_ref().map(streaming::Config::validate),
            self.dashboard.as_ref().map(Dashboard::validate),
            self.ssh.as_ref().map(Ssh::validate),
            self.storage.as_ref().map(Storage::validate),
            self.update.as_ref().map(Update::validate),
        ];
        for r in sections.into_iter().flatten() {
            r.map_err(|i| SeedError::Invalid {
                file: file.into(),
                key: i.key.into(),
                problem: i.problem,
                fix: i.fix,
            })?;
        }
        Ok(())
    }

    /// `other` wins wherever it says something: `node` key by key, other sections whole, so a
    /// seed's `[network]` never mixes with half of the image's.
    pub fn layer(mut self, other: Seed) -> Seed {
        if other.node.name.is_some() {
            self.node.name = other.node.name;
        }
        if other.node.location.is_some() {
            self.node.location = other.node.location;
        }
        if other.node.contact.is_some() {
            self.node.contact = other.node.contact;
        }
        macro_rules! section {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        section!(
            community, network, wifi, tinc, services, dashboard, ssh, streaming, storage, update
        );
        self
    }

    /// The services `[services] enable` names.
    pub fn enabled(&self) -> Vec<String> {
        self.services
            .as_ref()
            .map(|s| s.enable.clone())
            .unwrap_or_default()
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

    pub fn dashboard_https_port(&self) -> u16 {
        self.dashboard
            .as_ref()
            .and_then(|d| d.https_port)
            .unwrap_or(DEFAULT_DASHBOARD_HTTPS_PORT)
    }

    pub fn dashboard_ui_port(&self) -> u16 {
        self.dashboard
            .as_ref()
            .map_or(DEFAULT_DASHBOARD_HTTPS_PORT + 1, Dashboard::ui_port)
    }

    pub fn exchange_port(&self) -> u16 {
        self.community
            .as_ref()
            .and_then(|c| c.port)
            .unwrap_or(DEFAULT_EXCHANGE_PORT)
    }
}

impl Seed {
    /// Warnings about a valid seed (see `Community::warnings`), for `seed check`.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = self
            .community
            .as_ref()
            .map(Community::warnings)
            .unwrap_or_default();
        // At 2293e0e `interface = "wlan0"` passed silently on images that could not join any
        // Wi-Fi: a wireless link without [wifi] (and none stored from an earlier seed) stays
        // down.
        let iface = self.network.as_ref().and_then(|n| n.interface.as_deref());
        if let Some(i) = iface.filter(|i| i.starts_with("wl")) {
            if self.wifi.is_none() {
                w.push(format!(
                    "network.interface {i:?} is a wireless link but the seed has no [wifi]: the node joins no Wi-Fi network on it; fix: add [wifi] with ssid, psk and country"
                ));
            }
        }
        w
    }
}

/// True for a key whose value must never be shown: the community key, the dashboard hash and
/// anything named like a secret.
pub fn is_secret_key(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "key",
        "secret",
        "password",
        "passwd",
        "token",
        "hash",
        "credential",
        "private",
        "psk",
        "passphrase",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// A TOML error as `line L, column C: [key `a.b`: ]problem`, without the source snippet toml
/// puts in its `Display`. A problem about a secret key's value is not shown at all (serde's
/// type errors quote the value).
fn parse_error(file: &str, text: &str, e: &toml::de::Error) -> SeedError {
    error_at(file, text, e.message(), e.span().map(|s| s.start))
}

fn error_at(file: &str, text: &str, problem: &str, at: Option<usize>) -> SeedError {
    let problem = problem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let mut message = String::new();
    if let Some(start) = at {
        let (line, column) = line_column(text, start);
        message.push_str(&format!("line {line}, column {column}: "));
        if let Some(path) = key_at(text, start) {
            message.push_str(&format!("key `{}`: ", path.join(".")));
            if path.iter().any(|k| is_secret_key(k)) {
                message.push_str("invalid value (not shown: the key holds a secret)");
                return SeedError::Parse {
                    file: file.into(),
                    message,
                };
            }
        }
    } else {
        message.push_str("line unknown: ");
    }
    message.push_str(&problem);
    SeedError::Parse {
        file: file.into(),
        message,
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut at = offset.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// The dotted key whose key or value covers byte `pos`, when the text is valid TOML (errors of
/// the schema, after the syntax passed).
fn key_at(text: &str, pos: usize) -> Option<Vec<String>> {
    use toml_edit::{Item, TableLike, Value};
    fn in_table(t: &dyn TableLike, pos: usize, path: &mut Vec<String>) -> bool {
        for (k, item) in t.iter() {
            path.push(k.to_string());
            let on_key = t
                .get_key_value(k)
                .and_then(|(key, _)| key.span())
                .is_some_and(|s| s.contains(&pos));
            if on_key || in_item(item, pos, path) {
                return true;
            }
            path.pop();
        }
        false
    }
    fn in_item(item: &Item, pos: usize, path: &mut Vec<String>) -> bool {
        match item {
            Item::Value(v) => in_value(v, pos, path),
            Item::Table(t) => in_table(t, pos, path),
            Item::ArrayOfTables(a) => a.iter().any(|t| in_table(t, pos, path)),
            Item::None => false,
        }
    }
    fn in_value(v: &Value, pos: usize, path: &mut Vec<String>) -> bool {
        if !v.span().is_some_and(|s| s.contains(&pos)) {
            return false;
        }
        match v {
            Value::InlineTable(t) => {
                in_table(t, pos, path);
            }
            Value::Array(a) => {
                a.iter().any(|x| in_value(x, pos, path));
            }
            _ => {}
        }
        true
    }
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut path = Vec::new();
    in_table(doc.as_table(), pos, &mut path).then_some(path)
}

/// Every value the seed's text holds under a secret-named key: from the parsed document when it
/// parses, and from `name = value` fragments of single lines otherwise (a broken seed).
fn secret_values(text: &str) -> Vec<String> {
    fn collect(v: &toml::Value, secret: bool, out: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    collect(v, secret || is_secret_key(k), out);
                }
            }
            toml::Value::Array(a) => a.iter().for_each(|v| collect(v, secret, out)),
            toml::Value::String(s) if secret => out.push(s.clone()),
            v if secret => out.push(v.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(t) = toml::from_str::<toml::Table>(text) {
        collect(&toml::Value::Table(t), false, &mut out);
    }
    for line in text.lines() {
        for part in line.split([',', '{', '}']) {
            let Some((k, v)) = part.split_once('=') else {
                continue;
            };
            let name = k.trim().rsplit('.').next().unwrap_or("");
            if !is_secret_key(name.trim_matches(|c| c == '"' || c == '\'' || c == ' ')) {
                continue;
            }
            let v = v.trim();
            out.push(v.to_string());
            out.push(v.trim_matches(|c| c == '"' || c == '\'').to_string());
        }
    }
    out.retain(|v| !v.trim().is_empty());
    // Longest first, so a value containing another is removed whole.
    out.sort_by_key(|v| std::cmp::Reverse(v.len()));
    out.dedup();
    out
}

/// `e` with every secret value (and its escaped form, as serde quotes strings) replaced.
fn redact(e: SeedError, secrets: &[String]) -> SeedError {
    let clean = |s: String| {
        secrets.iter().fold(s, |s, v| {
            let escaped = format!("{v:?}");
            let s = s.replace(&escaped, "\"(secret)\"");
            if v.chars().count() >= 4 {
                s.replace(v.as_str(), "(secret)")
            } else {
                // A short value would match ordinary words: only where it stands quoted.
                ["`", "'", "\""].iter().fold(s, |s, q| {
                    s.replace(&format!("{q}{v}{q}"), &format!("{q}(secret){q}"))
                })
            }
        })
    };
    match e {
        SeedError::Parse { file, message } => SeedError::Parse {
            file,
            message: clean(message),
        },
        SeedError::Invalid {
            file,
            key,
            problem,
            fix,
        } => SeedError::Invalid {
            file,
            key,
            problem: clean(problem),
            fix,
        },
        e @ SeedError::Read { .. } => e,
    }
}

/// The seed's sections, as the README documents them.
const SECTIONS: &[&str] = &[
    "node",
    "community",
    "network",
    "wifi",
    "tinc",
    "services",
    "streaming",
    "dashboard",
    "ssh",
    "storage",
    "update",
];

/// A seed read section by section (`Seed::parse_sections`).
#[derive(Debug, Default)]
pub struct Partial {
    /// The valid sections; a bad one is absent.
    pub seed: Seed,
    /// One error per bad section, in the order of the file.
    pub errors: Vec<SeedError>,
    /// The names of the bad sections (their secrets were not taken: see the agent's scrub).
    pub skipped: Vec<String>,
}

/// One top-level item of the seed, read on its own.
struct Section<'a> {
    file: &'a str,
    text: &'a str,
    name: &'a str,
    item: &'a toml_edit::Item,
    /// Where its key starts in `text`, for errors that carry no span of their own.
    at: Option<usize>,
}

impl Section<'_> {
    fn read<T: serde::de::DeserializeOwned>(
        &self,
        validate: impl Fn(&T) -> Result<(), Invalid>,
    ) -> Result<T, SeedError> {
        use serde::de::IntoDeserializer;
        let value = self.item.clone().into_value().map_err(|_| {
            self.error(
                self.at,
                &format!("`{}` must be a table, like [{}]", self.name, self.name),
            )
        })?;
        let v = T::deserialize(value.into_deserializer())
            .map_err(|e| self.error(e.span().map(|s| s.start).or(self.at), e.message()))?;
        validate(&v).map_err(|i| SeedError::Invalid {
            file: self.file.into(),
            key: i.key.into(),
            problem: i.problem,
            fix: i.fix,
        })?;
        Ok(v)
    }

    fn error(&self, at: Option<usize>, problem: &str) -> SeedError {
        error_at(self.file, self.text, problem, at)
    }
}

/// What was loaded, from where, and what went wrong on the way.
#[derive(Debug, Default)]
pub struct Loaded {
    pub seed: Seed,
    pub source: Option<PathBuf>,
    pub errors: Vec<String>,
    /// The sections of the seed at `source` that were refused and left out.
    pub skipped: Vec<String>,
}

pub fn read_file(path: &Path) -> Result<Seed, SeedError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SeedError::Read {
        file: file.clone(),
        source,
    })?;
    Seed::parse(&file, &text)
}

/// As [`read_file`], section by section (see [`Seed::parse_sections`]).
pub fn read_sections(path: &Path) -> Result<Partial, SeedError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SeedError::Read {
        file: file.clone(),
        source,
    })?;
    Seed::parse_sections(&file, &text)
}

/// `cloudy.seed=PATH` on the kernel command line names a seed file on the node.
pub fn cmdline_seed(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cloudy.seed="))
        .map(str::to_string)
}

/// Maps an absolute node path (`/etc/cloudy/agent.toml`) under `root` (`/` on a node, a
/// private tree in tests).
fn under(root: &Path, node_path: &str) -> PathBuf {
    root.join(node_path.trim_start_matches('/'))
}

/// Loads defaults and the first seed found under `root`. Never fails: errors are collected for
/// the console.
pub fn load(root: &Path, cmdline: &str) -> Loaded {
    let mut loaded = Loaded {
        seed: Seed {
            version: SEED_VERSION,
            ..Seed::default()
        },
        ..Loaded::default()
    };
    let defaults = under(root, DEFAULTS_PATH);
    if defaults.exists() {
        match read_file(&defaults) {
            Ok(s) => loaded.seed = s,
            Err(e) => loaded.errors.push(e.to_string()),
        }
    }
    let mut candidates: Vec<PathBuf> = SEED_PATHS.iter().map(|p| under(root, p)).collect();
    if let Some(p) = cmdline_seed(cmdline) {
        candidates.push(under(root, &p));
    }
    if let Some(path) = candidates.into_iter().find(|p| p.exists()) {
        match read_sections(&path) {
            Ok(p) => {
                loaded.seed = std::mem::take(&mut loaded.seed).layer(p.seed);
                loaded.source = Some(path);
                loaded.skipped = p.skipped;
                loaded.errors.extend(p.errors.iter().map(|e| {
                    format!("{e} (this section skipped: the image's default for it applies; the seed's other sections apply)")
                }));
            }
            Err(e) => loaded.errors.push(format!(
                "{e} (the seed as a whole cannot be read: none of it applies, booting on the image defaults)"
            )),
        }
    }
    loaded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, node_path: &str, text: &str) {
        let p = under(root, node_path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/seeds")
            .join(name)
    }

    /// At 2293e0e `enable = ["tahoe-lafs"]` (the name `join` uses) was an unknown service.
    #[test]
    fn enable_takes_every_name_of_a_kind_and_keeps_the_kinds_own() {
        let s = Seed::parse(
            "s.toml",
            "version = 1\n[services]\nenable = [\"tahoe-lafs\", \"tahoe-storage\", \"syncthing\"]\n",
        )
        .unwrap();
        assert_eq!(
            s.services.unwrap().enable,
            ["tahoe-introducer", "tahoe-storage", "syncthing"]
        );
        let e = Seed::parse("s.toml", "version = 1\n[services]\nenable = [\"ftp\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown service \"ftp\""), "{e}");
        assert!(e.contains("tahoe-introducer (or tahoe-lafs)"), "{e}");
    }

    /// At 2293e0e a `[community]` without a key passed `seed check` silently.
    #[test]
    fn a_community_without_a_key_is_valid_but_warned_about() {
        let s = Seed::parse("s.toml", "version = 1\n[community]\nname = \"home\"\n").unwrap();
        let w = s.warnings();
        assert_eq!(w.len(), 1);
        assert!(
            // Issue 15: no longer "stays alone"; it waits for a member's approval.
            w[0].contains("waits as a pending node") && w[0].contains("fix:"),
            "{w:?}"
        );
        let s = Seed::parse(
            "s.toml",
            "version = 1\n[community]\nname = \"home\"\nkey = \"correct horse battery staple 42\"\n",
        )
        .unwrap();
        assert!(s.warnings().is_empty());
        assert!(Seed::parse("s.toml", "version = 1\n")
            .unwrap()
            .warnings()
            .is_empty());
    }

    /// Issue 18: at 2293e0e `network.interface = "wlan0"` passed `seed check` without a word,
    /// though nothing could join a Wi-Fi network.
    #[test]
    fn a_wireless_interface_without_wifi_is_warned_about() {
        let s = Seed::parse("s.toml", "version = 1\n[network]\ninterface = \"wlan0\"\n").unwrap();
        let w = s.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("[wifi]") && w[0].contains("fix:"), "{w:?}");
        let s = Seed::parse(
            "s.toml",
            "version = 1\n[network]\ninterface = \"wlan0\"\n[wifi]\nssid = \"a\"\npsk = \"12345678\"\ncountry = \"ES\"\n",
        )
        .unwrap();
        assert!(s.warnings().is_empty());
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
        assert_eq!(s.exchange_port(), 6655);
    }

    #[test]
    fn broken_seed_falls_back_to_defaults() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            DEFAULTS_PATH,
            "version = 1\n[node]\nname = \"cloudy\"\n",
        );
        write(
            dir.path(),
            SEED_PATHS[1],
            "version = 1\n[node]\nname = \"Bad Name\"\n",
        );
        let loaded = load(dir.path(), "");
        assert_eq!(loaded.seed.node.name.as_deref(), Some("cloudy"));
        assert_eq!(loaded.errors.len(), 1);
        assert!(loaded.errors[0].contains("node.name"));
    }

    const ONE_BAD_SECTION: &str = "version = 1

[node]
name = \"pi-kitchen\"

[community]
name = \"sants\"
key = \"correct horse battery staple 42\"

[dashboard]
prot = 8443

[ssh]
authorized_keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleExampleExampleExampleExampleExa me@laptop\"]
";

    /// Issue 18 defect 4. At 2293e0e a typo in `[dashboard]` threw the whole seed away
    /// (`seed: (none; image defaults)`), `[ssh]` and `[community]` with it, so the node could
    /// not be reached to fix the typo. Now the bad section alone is skipped and named.
    #[test]
    fn one_bad_section_skips_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            DEFAULTS_PATH,
            "version = 1\n[node]\nname = \"cloudy\"\n[dashboard]\nport = 8080\n",
        );
        write(dir.path(), SEED_PATHS[0], ONE_BAD_SECTION);
        let loaded = load(dir.path(), "");
        assert_eq!(
            loaded.source.as_deref(),
            Some(under(dir.path(), SEED_PATHS[0]).as_path())
        );
        let s = &loaded.seed;
        assert_eq!(s.node.name.as_deref(), Some("pi-kitchen"));
        let c = s.community.as_ref().expect("[community] applied");
        assert_eq!(c.name, "sants");
        assert_eq!(
            s.ssh.as_ref().expect("[ssh] applied").authorized_keys.len(),
            1
        );
        // The bad section is left out: the image's default for it stands.
        assert_eq!(s.dashboard_port(), 8080);
        assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
        let e = &loaded.errors[0];
        assert!(e.contains("line 11") && e.contains("dashboard.prot"), "{e}");
        assert!(
            e.contains("unknown field `prot`") && e.contains("port"),
            "{e}"
        );
        assert!(e.contains("section skipped"), "{e}");
        assert_eq!(loaded.skipped, ["dashboard"]);
        assert!(!e.contains("correct horse"), "{e}");
    }

    /// Every bad section is reported, each with its line; a section the agent does not know is
    /// one of them.
    #[test]
    fn every_bad_section_is_reported_in_file_order() {
        let p = Seed::parse_sections(
            "s.toml",
            "version = 1\n[node]\nname = \"Bad Name\"\n[wlan]\nssid = \"x\"\n[tinc]\nmode = \"bridge\"\n[network]\ninterface = \"eth1\"\n",
        )
        .unwrap();
        let errors: Vec<String> = p.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("node.name"), "{errors:?}");
        assert!(
            errors[1].contains("line 4")
                && errors[1].contains("unknown section `wlan`")
                && errors[1].contains("wifi"),
            "{errors:?}"
        );
        assert!(
            errors[2].contains("tinc.mode") && errors[2].contains("line 7"),
            "{errors:?}"
        );
        assert_eq!(p.seed.network.unwrap().interface.as_deref(), Some("eth1"));
        assert!(p.seed.tinc.is_none() && p.seed.node.name.is_none());
        // `seed check` (Seed::parse) still refuses the file, with the first error.
        assert!(Seed::parse("s.toml", "version = 1\n[wlan]\n").is_err());
    }

    /// A seed that is not TOML at all, or of another version, cannot be read section by
    /// section: nothing of it applies, and the error says so in words.
    #[test]
    fn a_seed_that_does_not_parse_falls_back_whole_and_says_so() {
        for text in [
            "version = 1\n[ssh]\nauthorized_keys = [\"ssh-ed25519 AAAA\"\n[community\n",
            "version = 2\n[node]\nname = \"pi\"\n",
        ] {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), SEED_PATHS[1], text);
            let loaded = load(dir.path(), "");
            assert_eq!(loaded.source, None);
            assert_eq!(loaded.seed.node.name, None);
            assert_eq!(loaded.errors.len(), 1);
            let e = &loaded.errors[0];
            assert!(
                e.contains("the seed as a whole cannot be read") && e.contains("image defaults"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_wifi_section_parses_and_layers() {
        let s = Seed::parse(
            "s.toml",
            "version = 1\n[wifi]\nssid = \"Casa \\\"Nostra\\\"\"\npsk = \"correct horse\"\ncountry = \"ES\"\nhidden = true\n",
        )
        .unwrap();
        let w = s.wifi.clone().unwrap();
        assert_eq!(w.ssid, "Casa \"Nostra\"");
        assert!(w.hidden);
        assert_eq!(w.interface(), "wlan0");
        let over = Seed::default().layer(s);
        assert_eq!(over.wifi, Some(w));
        let e = Seed::parse("s.toml", "version = 1\n[wifi]\nssid = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing field `country`") && e.contains("line 2"),
            "{e}"
        );
    }

    #[test]
    fn seed_layers_over_defaults_and_cmdline_is_read() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            DEFAULTS_PATH,
            "version = 1\n[node]\nname = \"cloudy\"\n",
        );
        write(
            dir.path(),
            "/seed/mine.toml",
            "version = 1\n[node]\nname = \"pi-test\"\n",
        );
        let loaded = load(
            dir.path(),
            "quiet cloudy.seed=/seed/mine.toml console=ttyS0",
        );
        assert_eq!(loaded.seed.node.name.as_deref(), Some("pi-test"));
        assert!(loaded.errors.is_empty());
    }
}
