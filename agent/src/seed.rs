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
    Read { file: String, source: std::io::Error },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: key `{key}`: {problem}; fix: {fix}")]
    Invalid { file: String, key: String, problem: String, fix: String },
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    pub version: u32,
    #[serde(default)]
    pub node: Node,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Hostname of the node; also its name in the community.
    pub name: Option<String>,
}

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
        if let Some(name) = &self.node.name {
            if let Err(problem) = check_hostname(name) {
                return Err(SeedError::Invalid {
                    file: file.into(),
                    key: "node.name".into(),
                    problem,
                    fix: "use 1-63 lowercase letters, digits and '-', not starting or ending with '-'"
                        .into(),
                });
            }
        }
        Ok(())
    }

    /// `other` wins wherever it says something.
    pub fn layer(mut self, other: Seed) -> Seed {
        if other.node.name.is_some() {
            self.node.name = other.node.name;
        }
        self
    }
}

pub fn check_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("{} characters (1-63 allowed)", name.len()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
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
    let text = std::fs::read_to_string(path).map_err(|source| SeedError::Read { file: file.clone(), source })?;
    Seed::parse(&file, &text)
}

/// `cloudy.seed=PATH` on the kernel command line names a seed file on the node.
pub fn cmdline_seed(cmdline: &str) -> Option<String> {
    cmdline.split_whitespace().find_map(|w| w.strip_prefix("cloudy.seed=")).map(str::to_string)
}

/// Loads defaults and the first seed found. Never fails: errors are collected for the console.
pub fn load(sys: &System, cmdline: &str) -> Loaded {
    let mut loaded = Loaded { seed: Seed { version: SEED_VERSION, ..Seed::default() }, ..Loaded::default() };
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
            Err(e) => loaded.errors.push(format!("{e} (booting on the image defaults)")),
        }
    }
    loaded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/seeds").join(name)
    }

    #[test]
    fn good_fixtures_parse() {
        for f in ["good-minimal.toml", "good-named.toml"] {
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
        ] {
            let err = read_file(&fixture(f)).expect_err(f).to_string();
            assert!(err.contains(key), "{f}: error {err:?} does not name {key}");
            assert!(err.contains(f), "{f}: error {err:?} does not name the file");
        }
    }

    #[test]
    fn broken_seed_falls_back_to_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        sys.write_atomic(DEFAULTS_PATH, b"version = 1\n[node]\nname = \"cloudy\"\n", 0o644).unwrap();
        sys.write_atomic(SEED_PATHS[1], b"version = 1\n[node]\nname = \"Bad Name\"\n", 0o644).unwrap();
        let loaded = load(&sys, "");
        assert_eq!(loaded.seed.node.name.as_deref(), Some("cloudy"));
        assert_eq!(loaded.errors.len(), 1);
        assert!(loaded.errors[0].contains("node.name"));
    }

    #[test]
    fn seed_layers_over_defaults_and_cmdline_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        sys.write_atomic(DEFAULTS_PATH, b"version = 1\n[node]\nname = \"cloudy\"\n", 0o644).unwrap();
        sys.write_atomic("/seed/mine.toml", b"version = 1\n[node]\nname = \"pi-test\"\n", 0o644).unwrap();
        let loaded = load(&sys, "quiet cloudy.seed=/seed/mine.toml console=ttyS0");
        assert_eq!(loaded.seed.node.name.as_deref(), Some("pi-test"));
        assert!(loaded.errors.is_empty());
    }
}
