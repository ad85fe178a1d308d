//! Recipes (`recipes/*.toml`): what goes into an image, independent of the board.

use serde::Deserialize;
use std::path::{Path, PathBuf};

use crate::config::{self, ConfigError};

pub const RECIPE_VERSION: u32 = 1;

/// What to do about the Debian security suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// The build fails if the suite's index cannot be used.
    Required,
    /// Use it when the mirror serves a good index; otherwise build on and record why not.
    Optional,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zstd,
    Xz,
    Gzip,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Gzip => "gzip",
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Squashfs {
    pub compression: Compression,
    pub level: Option<u32>,
}

impl Default for Squashfs {
    fn default() -> Self {
        Squashfs {
            compression: Compression::Zstd,
            level: None,
        }
    }
}

impl Squashfs {
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if let Some(level) = self.level {
            let max = match self.compression {
                Compression::Zstd => 22,
                Compression::Gzip => 9,
                Compression::Xz => {
                    return Err(ConfigError::invalid(
                        path,
                        "squashfs.level",
                        "mksquashfs has no level for xz",
                        "remove `level` or use compression = \"zstd\"",
                    ));
                }
            };
            if level == 0 || level > max {
                return Err(ConfigError::invalid(
                    path,
                    "squashfs.level",
                    format!("{level} is out of range for {}", self.compression.name()),
                    format!("use 1-{max}"),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    pub timeout_s: u64,
}

impl Default for Verify {
    fn default() -> Self {
        Verify { timeout_s: 300 }
    }
}

impl Verify {
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if self.timeout_s < 30 {
            return Err(ConfigError::invalid(
                path,
                "verify.timeout_s",
                "below 30 s: no emulated boot is that fast",
                "use 300",
            ));
        }
        Ok(())
    }
}

/// A Python application from PyPI in a venv of its own (Tahoe-LAFS is not in Debian).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pip {
    /// Absolute path of the venv on the node, e.g. "/opt/cloudy/tahoe-lafs".
    pub venv: String,
    /// Every distribution pinned (`name==version` per line, as `pip freeze` writes it),
    /// relative to the recipe's directory. Installed with `--no-deps --only-binary=:all:`, so
    /// the list is the whole closure and nothing is compiled in the image.
    pub requirements: PathBuf,
    /// Debian architectures to install it on: those where every pin has a wheel on PyPI or
    /// in `build`. Two entries may share a venv on different arches (e.g. PyPI's compiled
    /// wheels on amd64, Debian's compiled packages elsewhere).
    pub arches: Vec<String>,
    /// Debian `python3-*` packages for dependencies PyPI has no wheel of (left out of the
    /// requirements); the venv then sees the system's site-packages.
    #[serde(default)]
    pub debian: Vec<String>,
    /// Pins of `requirements` that PyPI has no wheel of for these arches and that are built
    /// on the host instead, from their pinned source release, with the agent's cross
    /// toolchain (e.g. pycddl, a Rust extension).
    #[serde(default)]
    pub build: Vec<PipBuild>,
    /// The suite's Python (`3.11` in bookworm): wheels are fetched for it.
    #[serde(default = "default_python")]
    pub python: String,
}

/// A pin built into a wheel on the host: `maturin build` of its PyPI source release.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipBuild {
    /// The distribution's name as `requirements` pins it; the pinned version is built.
    pub name: String,
    /// sha256 of the source release (`<name>-<version>.tar.gz` on PyPI), as PyPI lists it.
    pub sdist_sha256: String,
}

fn default_python() -> String {
    "3.11".into()
}

impl Pip {
    pub fn applies_to(&self, debian_arch: &str) -> bool {
        self.arches.iter().any(|a| a == debian_arch)
    }

    /// The pinned version of `name` in `requirements` (names compared as pip does:
    /// case-insensitive, `-`, `_` and `.` alike).
    pub fn pinned_version<'t>(requirements: &'t str, name: &str) -> Option<&'t str> {
        requirements
            .lines()
            .filter_map(|l| l.trim().split_once("=="))
            .find(|(n, _)| normalise(n) == normalise(name))
            .map(|(_, v)| v.trim())
    }

    /// `i`: the entry's index in the recipe's `[[pip]]` list, for the key in errors.
    fn validate(&self, path: &Path, i: usize) -> Result<(), ConfigError> {
        let ok = self.venv.starts_with("/opt/")
            && !self.venv.contains("..")
            && self
                .venv
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_.-".contains(c));
        if !ok {
            return Err(ConfigError::invalid(
                path,
                &format!("pip[{i}].venv"),
                format!("`{}` is not a plain path under /opt", self.venv),
                "e.g. venv = \"/opt/cloudy/tahoe-lafs\"",
            ));
        }
        if !(self.python.starts_with("3.") && self.python[2..].parse::<u32>().is_ok()) {
            return Err(ConfigError::invalid(
                path,
                &format!("pip[{i}].python"),
                format!("`{}` is not a Python 3 version", self.python),
                "the suite's Python, e.g. python = \"3.11\" for bookworm",
            ));
        }
        for (j, d) in self.debian.iter().enumerate() {
            if !valid_package_name(d) {
                return Err(ConfigError::invalid(
                    path,
                    &format!("pip[{i}].debian[{j}]"),
                    format!("`{d}` is not a Debian package name"),
                    "e.g. \"python3-netifaces\"",
                ));
            }
        }
        for (j, b) in self.build.iter().enumerate() {
            let name_ok = !b.name.is_empty()
                && b.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !name_ok {
                return Err(ConfigError::invalid(
                    path,
                    &format!("pip[{i}].build[{j}].name"),
                    format!("`{}` is not a distribution name", b.name),
                    "name a pin of the entry's requirements, e.g. name = \"pycddl\"",
                ));
            }
            let hash_ok = b.sdist_sha256.len() == 64
                && b.sdist_sha256
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
            if !hash_ok {
                return Err(ConfigError::invalid(
                    path,
                    &format!("pip[{i}].build[{j}].sdist_sha256"),
                    format!(
                        "`{}` is not a sha256 (64 lowercase hex digits)",
                        b.sdist_sha256
                    ),
                    "copy the source release's sha256 from its PyPI page (\"Download files\")",
                ));
            }
        }
        for (j, a) in self.arches.iter().enumerate() {
            if !crate::board::DEBIAN_ARCHES.contains(&a.as_str()) {
                return Err(ConfigError::invalid(
                    path,
                    &format!("pip[{i}].arches[{j}]"),
                    format!("`{a}` is not an architecture Cloudy builds"),
                    format!("use some of {:?}", crate::board::DEBIAN_ARCHES),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub version: u32,
    pub name: String,
    pub suite: String,
    pub mirror: String,
    /// Where `<suite>-security` is served; derived from `mirror` when it ends in `/debian`.
    pub security_mirror: Option<String>,
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    pub security: Security,
    pub source_date_epoch: u64,
    #[serde(default)]
    pub packages: Vec<String>,
    /// More packages for one image format only, e.g. `{ iso = ["ffmpeg"] }`: what makes a
    /// desktop's live stick a stream source would make an SD card much bigger.
    #[serde(default)]
    pub packages_by_format: std::collections::BTreeMap<crate::board::Format, Vec<String>>,
    #[serde(default)]
    pub enable: Vec<String>,
    /// Relative to the recipe's directory.
    pub seed: PathBuf,
    #[serde(default)]
    pub squashfs: Squashfs,
    #[serde(default)]
    pub verify: Verify,
    #[serde(default)]
    pub pip: Vec<Pip>,
    /// The release this recipe builds and the community's update keys (README "Updates").
    #[serde(default)]
    pub update: Update,
}

/// `[update]`: which release an image is, and who may publish the next one.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    /// The release version written into every image (`/usr/lib/cloudy/release.json`) and
    /// carried by its bundles; `cloudy-image build --release-version` overrides it.
    #[serde(default = "default_release")]
    pub release: String,
    /// K: how many distinct keys of `keys` must sign a manifest before a node installs it.
    #[serde(default = "default_threshold")]
    pub threshold: usize,
    /// The community's N update keys: base64 ed25519 public keys (`cloudy-image keys new`).
    /// None: the nodes take no updates (and say so).
    #[serde(default)]
    pub keys: Vec<String>,
    /// RAUC's keyring: the PEM certificate of `cloudy-image keys new --rauc`, relative to the
    /// recipe's directory; laid at /etc/rauc/keyring.pem.
    #[serde(default)]
    pub rauc_keyring: Option<PathBuf>,
}

impl Default for Update {
    fn default() -> Self {
        Update {
            release: default_release(),
            threshold: default_threshold(),
            keys: Vec::new(),
            rauc_keyring: None,
        }
    }
}

fn default_release() -> String {
    "0.0.0".into()
}

fn default_threshold() -> usize {
    1
}

impl Update {
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        check_release(&self.release).map_err(|why| {
            ConfigError::invalid(
                path,
                "update.release",
                why,
                "one to four dot-separated numbers, e.g. release = \"1.0.0\"",
            )
        })?;
        if !self.keys.is_empty() {
            cloudy_model::update::UpdateKeys::new(self.threshold, &self.keys).map_err(|e| {
                ConfigError::invalid(
                    path,
                    "update.keys",
                    e.to_string(),
                    "list the public keys `cloudy-image keys new` printed, and a threshold between 1 and their number",
                )
            })?;
        }
        Ok(())
    }
}

/// Whether `v` is a release version the nodes can compare (cloudy_model::update::Version).
pub fn check_release(v: &str) -> Result<(), String> {
    v.parse::<cloudy_model::update::Version>()
        .map(|_| ())
        .map_err(|_| format!("`{v}` is not a release version"))
}

fn default_components() -> Vec<String> {
    vec!["main".into()]
}

/// A loaded recipe with where it came from: errors and the manifest name the file.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub recipe: Recipe,
    pub path: PathBuf,
    pub text: String,
    pub seed_text: String,
    /// The text of each `[[pip]] requirements` file, in `recipe.pip` order.
    pub pip_requirements: Vec<String>,
    /// `[update] rauc_keyring`'s PEM text, read and checked.
    pub rauc_keyring: Option<String>,
}

impl Recipe {
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let (recipe, text): (Recipe, String) = config::load(path, RECIPE_VERSION, "recipe")?;
        recipe.validate(path)?;
        let seed_path = recipe.seed_path(path);
        let seed_text = std::fs::read_to_string(&seed_path).map_err(|e| {
            ConfigError::invalid(
                path,
                "seed",
                format!("cannot read {}: {e}", seed_path.display()),
                "point `seed` at a seed file next to the recipe",
            )
        })?;
        let mut pip_requirements = Vec::new();
        for (i, p) in recipe.pip.iter().enumerate() {
            let file = path
                .parent()
                .unwrap_or(Path::new("."))
                .join(&p.requirements);
            let key = format!("pip[{i}].requirements");
            let text = std::fs::read_to_string(&file).map_err(|e| {
                ConfigError::invalid(
                    path,
                    &key,
                    format!("cannot read {}: {e}", file.display()),
                    "point it at a `pip freeze` list next to the recipe",
                )
            })?;
            if let Err((line, why)) = check_requirements(&text) {
                return Err(ConfigError::invalid(
                    path,
                    &key,
                    format!("{} line {line}: {why}", file.display()),
                    "write one `name==version` per line (as `pip freeze` does); no options, URLs or ranges",
                ));
            }
            for (j, b) in p.build.iter().enumerate() {
                if Pip::pinned_version(&text, &b.name).is_none() {
                    return Err(ConfigError::invalid(
                        path,
                        &format!("pip[{i}].build[{j}].name"),
                        format!("`{}` is not pinned in {}", b.name, file.display()),
                        "build only a pin of the entry's requirements (its version is the one built)",
                    ));
                }
            }
            pip_requirements.push(text);
        }
        let rauc_keyring = match &recipe.update.rauc_keyring {
            None => None,
            Some(rel) => {
                let file = path.parent().unwrap_or(Path::new(".")).join(rel);
                let pem = std::fs::read_to_string(&file).map_err(|e| {
                    ConfigError::invalid(
                        path,
                        "update.rauc_keyring",
                        format!("cannot read {}: {e}", file.display()),
                        "point it at the .cert.pem `cloudy-image keys new --rauc` wrote",
                    )
                })?;
                if !pem.contains("-----BEGIN CERTIFICATE-----") || pem.contains("PRIVATE KEY") {
                    return Err(ConfigError::invalid(
                        path,
                        "update.rauc_keyring",
                        format!("{} is not a PEM certificate (or holds a private key)", file.display()),
                        "name the .cert.pem file, never the .key.pem: the keyring goes into every image",
                    ));
                }
                Some(pem)
            }
        };
        Ok(Loaded {
            recipe,
            path: path.to_path_buf(),
            text,
            seed_text,
            pip_requirements,
            rauc_keyring,
        })
    }

    pub fn security_mirror(&self) -> String {
        self.security_mirror
            .clone()
            .unwrap_or_else(|| match self.mirror.strip_suffix("/debian") {
                Some(base) => format!("{base}/debian-security"),
                None => "http://deb.debian.org/debian-security".to_string(),
            })
    }

    pub fn seed_path(&self, recipe_path: &Path) -> PathBuf {
        recipe_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&self.seed)
    }

    /// Checks what serde cannot; the first error found names the file, the key and the fix.
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.check_mirror(path)?;
        self.check_suite(path)?;
        self.check_packages(path)?;
        self.check_packages_by_format(path)?;
        self.check_enable(path)?;
        self.squashfs.validate(path)?;
        for (i, p) in self.pip.iter().enumerate() {
            p.validate(path, i)?;
            // One venv is one installation: on any arch only one entry may make it.
            for earlier in &self.pip[..i] {
                if let Some(a) = p
                    .arches
                    .iter()
                    .find(|a| earlier.venv == p.venv && earlier.applies_to(a))
                {
                    return Err(ConfigError::invalid(
                        path,
                        &format!("pip[{i}].arches"),
                        format!(
                            "{} is installed on {a} by an earlier [[pip]] entry too",
                            p.venv
                        ),
                        "give entries that share a venv disjoint `arches`",
                    ));
                }
            }
        }
        self.update.validate(path)?;
        self.verify.validate(path)
    }

    fn check_mirror(&self, path: &Path) -> Result<(), ConfigError> {
        if !(self.mirror.starts_with("http://")
            || self.mirror.starts_with("https://")
            || self.mirror.starts_with("file:/"))
        {
            return Err(ConfigError::invalid(
                path,
                "mirror",
                format!("`{}` is not an http(s) or file URL", self.mirror),
                "e.g. mirror = \"http://deb.debian.org/debian\"",
            ));
        }
        Ok(())
    }

    fn check_suite(&self, path: &Path) -> Result<(), ConfigError> {
        if self.suite.is_empty()
            || !self
                .suite
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(ConfigError::invalid(
                path,
                "suite",
                format!("`{}` is not a suite name", self.suite),
                "e.g. suite = \"bookworm\"",
            ));
        }
        Ok(())
    }

    fn check_packages(&self, path: &Path) -> Result<(), ConfigError> {
        for (i, p) in self.packages.iter().enumerate() {
            if !valid_package_name(p) {
                return Err(ConfigError::invalid(
                    path,
                    &format!("packages[{i}]"),
                    format!("`{p}` is not a Debian package name"),
                    "use lowercase letters, digits and + - . (e.g. \"tinc\")",
                ));
            }
        }
        Ok(())
    }

    fn check_packages_by_format(&self, path: &Path) -> Result<(), ConfigError> {
        for (format, list) in &self.packages_by_format {
            for (i, p) in list.iter().enumerate() {
                if !valid_package_name(p) {
                    let f = serde_json::to_value(format)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default();
                    return Err(ConfigError::invalid(
                        path,
                        &format!("packages_by_format.{f}[{i}]"),
                        format!("`{p}` is not a Debian package name"),
                        "use lowercase letters, digits and + - . (e.g. \"ffmpeg\")",
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_enable(&self, path: &Path) -> Result<(), ConfigError> {
        for (i, u) in self.enable.iter().enumerate() {
            if u.contains('/')
                || !(u.ends_with(".service") || u.ends_with(".socket") || u.ends_with(".timer"))
            {
                return Err(ConfigError::invalid(
                    path,
                    &format!("enable[{i}]"),
                    format!("`{u}` is not a systemd unit name"),
                    "name a unit like \"ssh.service\"",
                ));
            }
        }
        Ok(())
    }
}

/// Each line a strict pin: pip then installs exactly the listed files, and nothing in the list
/// can point pip at another index, a URL or a local path.
pub fn check_requirements(text: &str) -> Result<(), (usize, String)> {
    let mut any = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, version)) = line.split_once("==") else {
            return Err((n + 1, format!("`{line}` is not pinned with ==")));
        };
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        let version_ok = !version.is_empty()
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+!".contains(c));
        if !name_ok || !version_ok {
            return Err((n + 1, format!("`{line}` is not `name==version`")));
        }
        any = true;
    }
    if any {
        Ok(())
    } else {
        Err((1, "no requirement in the file".into()))
    }
}

/// A distribution name as PyPI compares it (PEP 503).
pub fn normalise(name: &str) -> String {
    name.to_ascii_lowercase().replace(['_', '.'], "-")
}

/// Debian policy 5.6.1: lowercase alphanumerics and + - ., at least two characters, starting
/// alphanumeric. Checked here so a typo is named before a two-minute bootstrap.
pub fn valid_package_name(p: &str) -> bool {
    p.len() >= 2
        && p.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && p.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/recipes")
    }

    #[test]
    fn shipped_recipe_and_good_fixture_load() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        Recipe::load(&repo.join("recipes/cloudy.toml")).unwrap();
        let l = Recipe::load(&fixtures().join("good.toml")).unwrap();
        assert_eq!(l.recipe.security, Security::Required);
        assert_eq!(l.recipe.squashfs.compression, Compression::Zstd);
    }

    #[test]
    fn bad_recipes_name_file_key_and_fix() {
        for (file, needle) in [
            ("bad-unknown-key.toml", "pakages"),
            ("bad-version.toml", "version"),
            ("bad-package-name.toml", "packages[1]"),
            ("bad-mirror.toml", "mirror"),
            ("bad-security.toml", "security"),
            ("bad-seed-missing.toml", "seed"),
            ("bad-level.toml", "squashfs.level"),
        ] {
            let err = Recipe::load(&fixtures().join(file))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{file}: {err}");
            assert!(
                err.contains(file),
                "{file}: error does not name the file: {err}"
            );
            assert!(err.contains("fix:"), "{file}: error gives no fix: {err}");
        }
    }

    #[test]
    fn requirements_must_be_strict_pins() {
        assert!(check_requirements("# pinned\ntahoe-lafs==1.20.0\nzope.interface==8.7\n").is_ok());
        for bad in [
            "tahoe-lafs>=1.20",
            "--index-url http://evil/ \n",
            "x==1 ; sh",
            "git+https://x/y==1",
            "",
            "a==1\nhttps://x/a.whl",
        ] {
            assert!(check_requirements(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// A recipe in a temporary directory with `pip` appended and a requirements file beside it.
    fn with_pip(pip: &str) -> Result<Loaded, ConfigError> {
        let d = tempfile::tempdir().unwrap();
        let good = std::fs::read_to_string(fixtures().join("good.toml")).unwrap();
        std::fs::copy(fixtures().join("seed.toml"), d.path().join("seed.toml")).unwrap();
        std::fs::write(
            d.path().join("req.txt"),
            "tahoe-lafs==1.20.0\npycddl==0.6.4\n",
        )
        .unwrap();
        let path = d.path().join("pip.toml");
        std::fs::write(&path, format!("{good}\n{pip}")).unwrap();
        Recipe::load(&path)
    }

    const SHA: &str = "6946ba4377b5470bd637434fa9b26d596de8ff2cc9c5473483b81418a525397a";

    #[test]
    fn pip_build_entries_name_a_pin_and_its_source_hash() {
        let l = with_pip(&format!(
            "[[pip]]\nvenv = \"/opt/t\"\nrequirements = \"req.txt\"\narches = [\"i386\"]\nbuild = [{{ name = \"PyCDDL\", sdist_sha256 = \"{SHA}\" }}]\n"
        ))
        .unwrap();
        let b = &l.recipe.pip[0].build[0];
        assert_eq!(
            Pip::pinned_version(&l.pip_requirements[0], &b.name),
            Some("0.6.4")
        );
        for (pip, needle) in [
            (
                format!("build = [{{ name = \"zfec\", sdist_sha256 = \"{SHA}\" }}]"),
                "pip[0].build[0].name",
            ),
            (
                "build = [{ name = \"pycddl\", sdist_sha256 = \"6946\" }]".to_string(),
                "pip[0].build[0].sdist_sha256",
            ),
            (
                format!("build = [{{ name = \"pycddl\", sha256 = \"{SHA}\" }}]"),
                "sha256",
            ),
        ] {
            let err = with_pip(&format!(
                "[[pip]]\nvenv = \"/opt/t\"\nrequirements = \"req.txt\"\narches = [\"i386\"]\n{pip}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains(needle), "{pip}: {err}");
            assert!(
                err.contains("fix:") || err.contains("unknown field"),
                "{err}"
            );
        }
    }

    #[test]
    fn entries_sharing_a_venv_need_disjoint_arches() {
        let entry = |arches: &str| {
            format!("[[pip]]\nvenv = \"/opt/t\"\nrequirements = \"req.txt\"\narches = [{arches}]\n")
        };
        let ok = with_pip(&format!(
            "{}{}",
            entry("\"amd64\""),
            entry("\"i386\", \"arm64\"")
        ));
        assert!(ok.is_ok(), "{:?}", ok.err());
        let err = with_pip(&format!(
            "{}{}",
            entry("\"amd64\""),
            entry("\"i386\", \"amd64\"")
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("pip[1].arches") && err.contains("amd64"),
            "{err}"
        );
    }

    #[test]
    fn shipped_recipe_puts_tahoe_on_every_arch() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let l = Recipe::load(&repo.join("recipes/cloudy.toml")).unwrap();
        for arch in crate::board::DEBIAN_ARCHES {
            let entries: Vec<_> = l
                .recipe
                .pip
                .iter()
                .zip(&l.pip_requirements)
                .filter(|(p, _)| p.venv == "/opt/cloudy/tahoe-lafs" && p.applies_to(arch))
                .collect();
            assert_eq!(entries.len(), 1, "one Tahoe venv entry for {arch}");
            assert_eq!(
                Pip::pinned_version(entries[0].1, "tahoe-lafs"),
                Some("1.20.0"),
                "{arch} runs the same Tahoe release"
            );
        }
    }

    fn with_update(update: &str, files: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        let d = tempfile::tempdir().unwrap();
        let good = std::fs::read_to_string(fixtures().join("good.toml")).unwrap();
        std::fs::copy(fixtures().join("seed.toml"), d.path().join("seed.toml")).unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        let path = d.path().join("update.toml");
        std::fs::write(&path, format!("{good}\n[update]\n{update}")).unwrap();
        Recipe::load(&path)
    }

    #[test]
    fn update_section_is_checked_and_defaults_to_no_updates() {
        let l = Recipe::load(&fixtures().join("good.toml")).unwrap();
        assert_eq!(l.recipe.update.release, "0.0.0");
        assert!(l.recipe.update.keys.is_empty() && l.rauc_keyring.is_none());
        let key = "4HokgP0JOc6kKbCBMLP7jAhT/nv8kspK4Td7bXfcjW8=";
        let cert = "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n";
        let l = with_update(
            &format!("release = \"1.0.1\"\nkeys = [\"{key}\"]\nrauc_keyring = \"c.pem\"\n"),
            &[("c.pem", cert)],
        )
        .unwrap();
        assert_eq!(l.recipe.update.threshold, 1);
        assert_eq!(l.rauc_keyring.as_deref(), Some(cert));
        for (update, files, needle) in [
            ("release = \"1.x\"\n", vec![], "update.release"),
            ("keys = [\"nope\"]\n", vec![], "update.keys"),
            (
                &*format!("threshold = 2\nkeys = [\"{key}\"]\n"),
                vec![],
                "threshold 2",
            ),
            (
                "rauc_keyring = \"missing.pem\"\n",
                vec![],
                "update.rauc_keyring",
            ),
            (
                "rauc_keyring = \"k.pem\"\n",
                vec![("k.pem", "-----BEGIN PRIVATE KEY-----\n")],
                "never the .key.pem",
            ),
            ("relase = \"1.0\"\n", vec![], "relase"),
        ] {
            let e = with_update(update, &files).unwrap_err().to_string();
            assert!(
                e.contains(needle) && e.contains("update.toml"),
                "{update}: {e}"
            );
        }
    }

    #[test]
    fn package_names() {
        assert!(valid_package_name("linux-image-686-pae"));
        assert!(valid_package_name("g++"));
        assert!(!valid_package_name("Tinc"));
        assert!(!valid_package_name("tinc; rm -rf /"));
        assert!(!valid_package_name("x"));
    }
}
