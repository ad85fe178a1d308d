//! What can go wrong while bootstrapping a rootfs, each error naming the file, key and fix.

use std::path::Path;

use crate::cmd::CmdError;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("package `{package}` is not in {suite} for {arch}\n  file: {recipe}, key `packages` (or the board's kernel_package)\n  fix: correct the name (search with `apt-cache search`) or remove it")]
    UnknownPackage {
        package: String,
        suite: String,
        arch: String,
        recipe: String,
    },
    #[error("the mirror's {suite}-security index for {arch} is broken ({detail})\n  file: {recipe}, key `security` = \"required\"\n  fix: retry later, use another mirror, or set security = \"optional\" to build without it (the manifest records that)")]
    SecurityIndexBroken {
        suite: String,
        arch: String,
        detail: String,
        recipe: String,
    },
    #[error("mirror {mirror} is unreachable ({detail})\n  file: {recipe}, key `mirror`\n  fix: check the network or point `mirror` at a reachable Debian mirror")]
    MirrorUnreachable {
        mirror: String,
        detail: String,
        recipe: String,
    },
    #[error("no space left on the disk holding {dir}\n  fix: free space there or pass --cache/--out on a larger disk, then run the build again (it resumes)")]
    DiskFull { dir: String },
    #[error("cannot fetch a wheel of every pin for {venv} on {arch}:\n{detail}\n  file: {recipe}, key `pip` (requirements, arches)\n  fix: drop {arch} from that entry's `arches`, or move the pin without a wheel to a Debian python3-* package in `debian`")]
    Wheels {
        venv: String,
        arch: String,
        recipe: String,
        detail: String,
    },
    #[error("mmdebstrap failed: {0}")]
    Other(CmdError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

pub(crate) fn io(what: &'static str, path: &Path, source: std::io::Error) -> BootstrapError {
    BootstrapError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}
