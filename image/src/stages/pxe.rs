//! PXE bundles: what a TFTP server hands a network-booting machine. The live system is the
//! board's ISO, fetched whole into RAM by live-boot (`fetch=`), so the bundle carries the same
//! two layers and the same seed place (`/cloudy/cloudy.toml` inside it) as the ISO.
//!
//! Two modes from one bundle: live (default), and install (`cloudy.install=<disk>` on the
//! kernel command line: the live system writes itself to that disk and reboots into it).

use std::fs;
use std::path::Path;

use crate::board::Board;
use crate::cache;
use crate::stages::iso;

#[derive(Debug, thiserror::Error)]
pub enum PxeError {
    #[error("{0}")]
    Iso(#[from] iso::IsoError),
    #[error("{what} {path}: {source}\n  fix: pxelinux files come from the Debian packages pxelinux and syslinux-common (make deps)")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// The live medium inside the bundle, fetched by live-boot.
pub const LIVE_ISO: &str = "cloudy.iso";

/// The bundle's files, relative to its directory, as the build lists them in SHA256SUMS.
pub const BUNDLE_FILES: &[&str] = &[
    "vmlinuz",
    "initrd.img",
    LIVE_ISO,
    "boot.ipxe",
    "pxelinux.0",
    "ldlinux.c32",
    "pxelinux.cfg/default",
];
/// Where live-boot fetches the live ISO by default: `tftp:///` means "the server this machine
/// booted from" (live-boot fills in the DHCP next-server), so the bundle works on any TFTP
/// server. iPXE users can fetch over HTTP instead (`cloudy_http`), about ten times faster.
pub const TFTP_FETCH: &str = "tftp:///cloudy.iso";

/// Kernel options of a PXE boot fetching the live ISO from `fetch`.
pub fn cmdline(board: &Board, fetch: &str, install: Option<&str>) -> String {
    let base = iso::cmdline(board).replacen("boot=live", &format!("boot=live fetch={fetch}"), 1);
    match install {
        Some(disk) => format!("{base} cloudy.install={disk}"),
        None => base,
    }
}

/// The disk a pxelinux `install` entry writes to; iPXE users set `cloudy_install` instead.
const DEFAULT_INSTALL_DISK: &str = "/dev/sda";

pub fn make(
    board: &Board,
    rootfs: &Path,
    live_iso: &Path,
    out: &Path,
    epoch: u64,
) -> Result<(), PxeError> {
    let tmp = cache::tmp_path(out);
    cache::remove_any(&tmp).map_err(|e| io("removing", &tmp, e))?;
    fs::create_dir_all(tmp.join("pxelinux.cfg")).map_err(|e| io("creating", &tmp, e))?;
    let (kernel, initrd) = iso::kernel_and_initrd(rootfs)?;
    link(&kernel, &tmp.join("vmlinuz"))?;
    link(&initrd, &tmp.join("initrd.img"))?;
    link(live_iso, &tmp.join(LIVE_ISO))?;
    // Copies, not links: the bundle's file times are set below, and these are the host's.
    copy(
        Path::new("/usr/lib/PXELINUX/pxelinux.0"),
        &tmp.join("pxelinux.0"),
    )?;
    copy(
        Path::new("/usr/lib/syslinux/modules/bios/ldlinux.c32"),
        &tmp.join("ldlinux.c32"),
    )?;

    let ipxe_live = cmdline(board, "${cloudy_fetch}", None);
    let ipxe_install = cmdline(board, "${cloudy_fetch}", Some("${cloudy_install}"));
    write(
        &tmp.join("boot.ipxe"),
        &format!(
            "#!ipxe\n\
             # Cloudy network boot for {board} (live). To install to a disk instead, set\n\
             # cloudy_install first, e.g. `set cloudy_install /dev/sda` before chaining this script.\n\
             # To fetch the live system over HTTP (much faster than TFTP), serve this directory\n\
             # there too and set cloudy_http to its URL, e.g. `set cloudy_http http://10.0.0.1/cloudy`.\n\
             set cloudy_fetch {TFTP_FETCH}\n\
             isset ${{cloudy_http}} && set cloudy_fetch ${{cloudy_http}}/{LIVE_ISO} ||\n\
             isset ${{cloudy_install}} && goto install ||\n\
             kernel vmlinuz initrd=initrd.img {ipxe_live}\n\
             initrd initrd.img\n\
             boot\n\
             :install\n\
             kernel vmlinuz initrd=initrd.img {install_ipxe}\n\
             initrd initrd.img\n\
             boot\n",
            board = board.name,
            install_ipxe = ipxe_install,
        ),
    )?;
    let live = cmdline(board, TFTP_FETCH, None);
    let unit = board
        .console_device()
        .trim_start_matches("ttyS")
        .parse::<u32>()
        .unwrap_or(0);
    write(
        &tmp.join("pxelinux.cfg/default"),
        &format!(
            "SERIAL {unit} 115200\nDEFAULT live\nPROMPT 0\nTIMEOUT 0\n\n\
             LABEL live\n  KERNEL vmlinuz\n  INITRD initrd.img\n  APPEND {live}\n\n\
             LABEL install\n  KERNEL vmlinuz\n  INITRD initrd.img\n  APPEND {}\n",
            cmdline(board, TFTP_FETCH, Some(DEFAULT_INSTALL_DISK))
        ),
    )?;
    write(
        &tmp.join("README.txt"),
        &format!(
            "Cloudy PXE bundle for {}.\n\nServe this directory over TFTP. iPXE: boot boot.ipxe (set cloudy_install=/dev/XXX\n\
             first to install to that disk; set cloudy_http=http://server/dir, where this directory is\n\
             also served over HTTP, to fetch {LIVE_ISO} over HTTP: much faster). PXELINUX: pxelinux.0, entries `live` (default) and\n\
             `install` ({DEFAULT_INSTALL_DISK}). The live system is {LIVE_ISO}; put a seed in it with\n\
             `cloudy-image customise {LIVE_ISO} --seed cloudy.toml`.\n",
            board.name
        ),
    )?;
    cache::set_tree_mtime(&tmp, epoch).map_err(|e| io("setting times under", &tmp, e))?;
    cache::publish(&tmp, out).map_err(|e| io("renaming", &tmp, e))
}

/// A TFTP root for a test boot: the bundle's files (linked) plus `script`, an iPXE script that
/// sets `vars` and chains the bundle's own boot.ipxe, so what is tested is the shipped script.
pub fn test_root(
    bundle: &Path,
    root: &Path,
    script: &str,
    vars: &[(&str, &str)],
) -> Result<(), PxeError> {
    cache::remove_any(root).map_err(|e| io("removing", root, e))?;
    fs::create_dir_all(root).map_err(|e| io("creating", root, e))?;
    for e in fs::read_dir(bundle).map_err(|e| io("reading", bundle, e))? {
        let e = e.map_err(|e| io("reading", bundle, e))?;
        if e.path().is_file() {
            link(&e.path(), &root.join(e.file_name()))?;
        }
    }
    let mut text = String::from("#!ipxe\n");
    for (k, v) in vars {
        text.push_str(&format!("set {k} {v}\n"));
    }
    text.push_str("chain boot.ipxe\n");
    write(&root.join(script), &text)
}

fn link(from: &Path, to: &Path) -> Result<(), PxeError> {
    if fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    copy(from, to)
}

fn copy(from: &Path, to: &Path) -> Result<(), PxeError> {
    fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| io("copying", from, e))
}

fn write(p: &Path, s: &str) -> Result<(), PxeError> {
    fs::write(p, s).map_err(|e| io("writing", p, e))
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> PxeError {
    PxeError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_and_install_cmdlines() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("hardware");
        let (b, _) = Board::load(&root.join("pxe-686-pae.toml")).unwrap();
        let live = cmdline(&b, TFTP_FETCH, None);
        assert!(
            live.starts_with("boot=live fetch=tftp:///cloudy.iso "),
            "{live}"
        );
        assert!(!live.contains("cloudy.install"));
        assert!(cmdline(&b, TFTP_FETCH, Some("/dev/vda")).ends_with("cloudy.install=/dev/vda"));
    }
}
