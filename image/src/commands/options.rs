//! What every command works with: the board, recipe, output and cache, and where a board's
//! outputs go (one build per output directory at a time).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use crate::qemu::{Accel, Boot};
use crate::stages::agent::Builder;

#[derive(Debug, Clone)]
pub struct Options {
    pub board: String,
    pub recipe: PathBuf,
    pub out: PathBuf,
    pub cache: PathBuf,
    /// The checkout: `hardware/`, `overlay/` and the agent's source.
    pub source: PathBuf,
    pub verify: bool,
    pub accel: Accel,
    pub boot: Boot,
    pub agent_builder: Builder,
    /// Rebuild the base squashfs instead of taking it from the cache (the rootfs is still
    /// taken from the cache); used to show the output is reproducible.
    pub rebuild: bool,
    /// `--release-version`: the release written into the image (and its bundle) instead of
    /// the recipe's `[update] release`.
    pub release: Option<String>,
}

pub fn board_dir(out: &Path, board: &str) -> PathBuf {
    out.join(board)
}

pub fn iso_path(out: &Path, board: &str) -> PathBuf {
    board_dir(out, board).join(format!("cloudy-{board}.iso"))
}

/// One build per output directory at a time.
pub fn lock(path: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    if nix::fcntl::flock(f.as_raw_fd(), nix::fcntl::FlockArg::LockExclusiveNonblock).is_err() {
        bail!(
            "another build is running in {}\n  fix: wait for it, or use another --out",
            path.parent().unwrap_or(path).display()
        );
    }
    Ok(f)
}
