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
        Squashfs { compression: Compression::Zstd, level: None }
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
    #[serde(default)]
    pub enable: Vec<String>,
    /// Relative to the recipe's directory.
    pub seed: PathBuf,
    #[serde(default)]
    pub squashfs: Squashfs,
    #[serde(default)]
    pub verify: Verify,
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
}

impl Recipe {
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let (recipe, text): (Recipe, String) = config::load(path, RECIPE_VERSION, "recipe")?;
        recipe.validate(path)?;
        let seed_path = recipe.seed_path(path);
        let seed_text = std::fs::read_to_string(&seed_path).map_err(|e| {
            ConfigError::invalid(path, "seed", format!("cannot read {}: {e}", seed_path.display()), "point `seed` at a seed file next to the recipe")
        })?;
        Ok(Loaded { recipe, path: path.to_path_buf(), text, seed_text })
    }

    pub fn security_mirror(&self) -> String {
        self.security_mirror.clone().unwrap_or_else(|| match self.mirror.strip_suffix("/debian") {
            Some(base) => format!("{base}/debian-security"),
            None => "http://deb.debian.org/debian-security".to_string(),
        })
    }

    pub fn seed_path(&self, recipe_path: &Path) -> PathBuf {
        recipe_path.parent().unwrap_or(Path::new(".")).join(&self.seed)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if !(self.mirror.starts_with("http://") || self.mirror.starts_with("https://") || self.mirror.starts_with("file:/")) {
            return Err(ConfigError::invalid(path, "mirror", format!("`{}` is not an http(s) or file URL", self.mirror), "e.g. mirror = \"http://deb.debian.org/debian\""));
        }
        if self.suite.is_empty() || !self.suite.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(ConfigError::invalid(path, "suite", format!("`{}` is not a suite name", self.suite), "e.g. suite = \"bookworm\""));
        }
        for (i, p) in self.packages.iter().enumerate() {
            if !valid_package_name(p) {
                return Err(ConfigError::invalid(path, &format!("packages[{i}]"), format!("`{p}` is not a Debian package name"), "use lowercase letters, digits and + - . (e.g. \"tinc\")"));
            }
        }
        for (i, u) in self.enable.iter().enumerate() {
            if u.contains('/') || !(u.ends_with(".service") || u.ends_with(".socket") || u.ends_with(".timer")) {
                return Err(ConfigError::invalid(path, &format!("enable[{i}]"), format!("`{u}` is not a systemd unit name"), "name a unit like \"ssh.service\""));
            }
        }
        if let Some(level) = self.squashfs.level {
            let max = match self.squashfs.compression {
                Compression::Zstd => 22,
                Compression::Gzip => 9,
                Compression::Xz => {
                    return Err(ConfigError::invalid(path, "squashfs.level", "mksquashfs has no level for xz", "remove `level` or use compression = \"zstd\""));
                }
            };
            if level == 0 || level > max {
                return Err(ConfigError::invalid(path, "squashfs.level", format!("{level} is out of range for {}", self.squashfs.compression.name()), format!("use 1-{max}")));
            }
        }
        if self.verify.timeout_s < 30 {
            return Err(ConfigError::invalid(path, "verify.timeout_s", "below 30 s: no emulated boot is that fast", "use 300"));
        }
        Ok(())
    }
}

/// Debian policy 5.6.1: lowercase alphanumerics and + - ., at least two characters, starting
/// alphanumeric. Checked here so a typo is named before a two-minute bootstrap.
pub fn valid_package_name(p: &str) -> bool {
    p.len() >= 2
        && p.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
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
            let err = Recipe::load(&fixtures().join(file)).unwrap_err().to_string();
            assert!(err.contains(needle), "{file}: {err}");
            assert!(err.contains(file), "{file}: error does not name the file: {err}");
            assert!(err.contains("fix:"), "{file}: error gives no fix: {err}");
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
