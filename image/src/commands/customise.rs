//! `cloudy-image customise IMAGE --seed FILE`: a user's seed written into a built image without
//! rebuilding it, where the node looks for it at boot: `/cloudy/cloudy.toml` on an ISO,
//! `cloudy.toml` on an SD card's FAT partition.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache;
use crate::cmd::{self, CmdError, Log};
use crate::progress::Step;
use crate::stages::sdcard::{self, SdError};
use crate::{bmap, compress};

#[derive(Debug, thiserror::Error)]
pub enum SeedImageError {
    #[error("{0}\n  fix: correct the seed (`cloudy-agent seed check FILE` says the same), then run customise again; the image was not touched")]
    BadSeed(String),
    #[error("{0}: not a Cloudy image (expected .iso, .img or .img.xz)")]
    UnknownKind(String),
    #[error("{0}")]
    Sd(#[from] SdError),
    #[error("{0}")]
    Cmd(#[from] CmdError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// `cloudy-image customise`: writes the seed, then updates `SHA256SUMS` beside the image.
pub fn run(image: &Path, seed: &Path) -> anyhow::Result<()> {
    let changed = write(image, seed, &Log::sink())?;
    update_sums(&changed)?;
    for f in &changed {
        eprintln!(
            "cloudy-image: wrote the seed {} into {}",
            seed.display(),
            f.display()
        );
    }
    Ok(())
}

/// Validates `seed` and writes it into `image` (replaced atomically). Returns the files
/// changed, for SHA256SUMS.
pub fn write(image: &Path, seed: &Path, log: &Log) -> Result<Vec<PathBuf>, SeedImageError> {
    let text = fs::read_to_string(seed).map_err(|e| io("reading", seed, e))?;
    crate::seed::check(&seed.display().to_string(), &text).map_err(SeedImageError::BadSeed)?;
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let step = Step::hidden();
    if name.ends_with(".iso") {
        let tmp = cache::tmp_path(image);
        let _ = fs::remove_file(&tmp);
        let mut c = Command::new("xorriso");
        c.arg("-indev")
            .arg(image)
            .arg("-outdev")
            .arg(&tmp)
            .args(["-boot_image", "any", "replay", "-map"])
            .arg(seed)
            .arg("/cloudy/cloudy.toml")
            .args(["-chmod", "0644", "/cloudy/cloudy.toml", "--", "-commit"]);
        cmd::run(&mut c, log, &step)?;
        fs::rename(&tmp, image).map_err(|e| io("renaming", &tmp, e))?;
        Ok(vec![image.to_path_buf()])
    } else if name.ends_with(".img") {
        sd_write(image, seed, log)?;
        refresh_bmap(image)?;
        Ok(vec![image.to_path_buf()])
    } else if let Some(stem) = name.strip_suffix(".xz").filter(|s| s.ends_with(".img")) {
        // Work on a decompressed copy; the .img.xz is replaced only when all went well.
        let raw = image.with_file_name(format!(".{stem}.customise"));
        decompress(image, &raw, log)?;
        sd_write(&raw, seed, log)?;
        compress::xz(&raw, image, compress::SD_PRESET).map_err(|e| io("compressing", image, e))?;
        let bmap_path = image.with_file_name(format!("{}.bmap", stem));
        cache::write_atomic(
            &bmap_path,
            bmap::make(&raw)
                .map_err(|e| io("mapping", &raw, e))?
                .as_bytes(),
        )
        .map_err(|e| io("writing", &bmap_path, e))?;
        let _ = fs::remove_file(&raw);
        Ok(vec![image.to_path_buf(), bmap_path])
    } else {
        Err(SeedImageError::UnknownKind(image.display().to_string()))
    }
}

/// `xz -dc` straight into a file: no shell, so any path is safe.
fn decompress(xz: &Path, to: &Path, log: &Log) -> Result<(), SeedImageError> {
    let out = fs::File::create(to).map_err(|e| io("creating", to, e))?;
    log.line(&format!("$ xz -dc -T0 {} > {}", xz.display(), to.display()));
    let st = Command::new("xz")
        .args(["-dc", "-T0"])
        .arg(xz)
        .stdout(out)
        .status()
        .map_err(|source| CmdError::Spawn {
            program: "xz".into(),
            source,
        })?;
    if !st.success() {
        let _ = fs::remove_file(to);
        return Err(CmdError::Failed {
            command: format!("xz -dc {}", xz.display()),
            status: st.to_string(),
            tail: String::new(),
        }
        .into());
    }
    Ok(())
}

fn sd_write(img: &Path, seed: &Path, log: &Log) -> Result<(), SeedImageError> {
    let (_, off) = sdcard::layout(img)?;
    let mut c = Command::new("mcopy");
    c.args(["-o", "-i", &format!("{}@@{off}", img.display())])
        .arg(seed)
        .arg("::/cloudy.toml")
        .env("MTOOLS_SKIP_CHECK", "1");
    cmd::run(&mut c, log, &Step::hidden())?;
    Ok(())
}

/// A raw .img next to its .bmap gets a fresh map (its checksums changed).
fn refresh_bmap(img: &Path) -> Result<(), SeedImageError> {
    let p = img.with_extension("img.bmap");
    if p.exists() {
        cache::write_atomic(
            &p,
            bmap::make(img)
                .map_err(|e| io("mapping", img, e))?
                .as_bytes(),
        )
        .map_err(|e| io("writing", &p, e))?;
    }
    Ok(())
}

/// Rewrites the lines naming `files` in the `SHA256SUMS` beside them or one level up (a PXE
/// bundle's files are listed as `pxe/<name>`).
pub fn update_sums(files: &[PathBuf]) -> std::io::Result<()> {
    let Some(parent) = files.first().and_then(|f| f.parent()) else {
        return Ok(());
    };
    for dir in [Some(parent), parent.parent()].into_iter().flatten() {
        let sums = dir.join("SHA256SUMS");
        let Ok(text) = fs::read_to_string(&sums) else {
            continue;
        };
        let mut out = String::new();
        for line in text.lines() {
            let name = line.split_once("  ").map(|(_, n)| n).unwrap_or("");
            match files.iter().find(|f| same_file(f, &dir.join(name))) {
                Some(f) => out.push_str(&format!("{}  {name}\n", cache::sha256_file(f)?)),
                None => out.push_str(&format!("{line}\n")),
            }
        }
        return cache::write_atomic(&sums, out.as_bytes());
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> SeedImageError {
    SeedImageError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_seed_refused_before_touching_the_image() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("x.iso");
        fs::write(&img, b"not touched").unwrap();
        let seed = d.path().join("s.toml");
        fs::write(&seed, "version = 1\n[node]\nname = \"Bad Name!\"\n").unwrap();
        let err = write(&img, &seed, &Log::sink()).unwrap_err().to_string();
        assert!(err.contains("node.name") && err.contains("fix:"), "{err}");
        assert_eq!(fs::read(&img).unwrap(), b"not touched");
    }

    #[test]
    fn xz_decompresses_to_a_path_with_a_quote() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("it's.img");
        fs::write(&src, vec![7u8; 100_000]).unwrap();
        let xz = d.path().join("it's.img.xz");
        compress::xz(&src, &xz, 1).unwrap();
        let back = d.path().join("o'back.img");
        decompress(&xz, &back, &Log::sink()).unwrap();
        assert_eq!(fs::read(&back).unwrap(), vec![7u8; 100_000]);
    }
}
