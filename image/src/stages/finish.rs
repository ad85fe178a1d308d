//! finish: checksums and the manifest that says what is in the image and how it was
//! made.

use serde::Serialize;
use std::path::Path;

use crate::cache;
use crate::progress::StageTime;
use crate::stages::bootstrap::Package;

#[derive(Debug, Clone, Serialize)]
pub struct Output {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentInfo {
    pub target: String,
    pub toolchain: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub cloudy_image: &'static str,
    pub board: String,
    pub board_sha256: String,
    pub recipe: String,
    pub recipe_sha256: String,
    pub seed_sha256: String,
    pub suite: String,
    pub arch: String,
    pub mirror: String,
    /// "used", "off", or "skipped: <why>": an image built without security updates says so.
    pub security: String,
    pub source_date_epoch: u64,
    pub kernel_package: String,
    pub bootstrap_key: String,
    pub agent: AgentInfo,
    pub units_enabled: Vec<String>,
    pub packages: Vec<Package>,
    /// What the recipe's `[[pip]]` entries installed from PyPI (arch "pypi/<arch>").
    pub pypi: Vec<Package>,
    pub outputs: Vec<Output>,
    pub stages: Vec<StageTime>,
    pub built_at_unix: u64,
}

/// Size and sha256 of `path`, named relative to the output directory `dir`.
pub fn describe(path: &Path, dir: &Path) -> std::io::Result<Output> {
    Ok(Output {
        file: path.strip_prefix(dir).unwrap_or(path).display().to_string(),
        size: std::fs::metadata(path)?.len(),
        sha256: cache::sha256_file(path)?,
    })
}

/// `SHA256SUMS` in the format `sha256sum -c` reads.
pub fn write_sums(dir: &Path, outputs: &[Output]) -> std::io::Result<()> {
    let text: String = outputs
        .iter()
        .map(|o| format!("{}  {}\n", o.sha256, o.file))
        .collect();
    cache::write_atomic(&dir.join("SHA256SUMS"), text.as_bytes())
}

pub fn write_manifest(dir: &Path, m: &Manifest) -> std::io::Result<()> {
    let mut json = serde_json::to_vec_pretty(m).map_err(std::io::Error::other)?;
    json.push(b'\n');
    cache::write_atomic(&dir.join("manifest.json"), &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_sha256sum_compatible() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.iso"), b"abc").unwrap();
        let o = describe(&d.path().join("a.iso"), d.path()).unwrap();
        assert_eq!(
            o.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        write_sums(d.path(), &[o]).unwrap();
        let st = std::process::Command::new("sha256sum")
            .arg("-c")
            .arg("SHA256SUMS")
            .current_dir(d.path())
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stdout)
        );
    }
}
