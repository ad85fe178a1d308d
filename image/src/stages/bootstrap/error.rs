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
    #[error("building the {name} {version} wheel for {target} failed:\n{detail}\n  fix: check the log above; the source release's crates come from crates.io (network needed once, pinned by its Cargo.lock)")]
    WheelBuild {
        name: String,
        version: String,
        target: String,
        detail: String,
    },
    #[error("cannot build the {name} wheel: {detail}\n  file: {recipe}, key `pip` (build)\n  fix: run `make deps` (Debian's rustc-web and cross gcc), or drop the arch from that entry's `arches`")]
    WheelToolchain {
        name: String,
        recipe: String,
        detail: String,
    },
    #[error("cannot fetch maturin {version} (pinned by hash in image/src/stages/bootstrap/wheel.rs):\n{detail}\n  fix: check that PyPI is reachable; if PyPI replaced that file, update MATURIN_VERSION and MATURIN_SHA256 there")]
    Maturin { version: String, detail: String },
    #[error("cannot fetch the source release {file} from PyPI: {detail}\n  file: {recipe}, key `pip` (build)\n  fix: check that PyPI is reachable and that the pinned version has a source release")]
    Sdist {
        file: String,
        recipe: String,
        detail: String,
    },
    #[error("{file} from PyPI has sha256 {got}, the recipe pins {want}: refusing to build it\n  file: {recipe}, key `pip` (build.sdist_sha256)\n  fix: if the pin was changed on purpose, copy the sha256 from the release's PyPI page")]
    SdistChecksum {
        file: String,
        got: String,
        want: String,
        recipe: String,
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
