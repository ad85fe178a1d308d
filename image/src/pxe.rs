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
use crate::iso;

#[derive(Debug, thiserror::Error)]
pub enum PxeError {
    #[error("{0}")]
    Iso(#[from] iso::IsoError),
    #[error("{what} {path}: {source}\n  fix: pxelinux files come from the Debian packages pxelinux and syslinux-common (make deps)")]
    Io { what: &'static str, path: String, source: std::io::Error },
}

/// The live medium inside the bundle, fetched by live-boot.
pub const LIVE_ISO: &str = "cloudy.iso";

/// Kernel options of a PXE boot. `tftp:///` means "the server this machine booted from"
/// (live-boot fills in the DHCP next-server), so the bundle works on any TFTP server.
pub fn cmdline(board: &Board, install: Option<&str>) -> String {
    let base = iso::cmdline(board).replacen("boot=live", &format!("boot=live fetch=tftp:///{LIVE_ISO}"), 1);
    match install {
        Some(disk) => format!("{base} cloudy.install={disk}"),
        None => base,
    }
}

/// The disk a pxelinux `install` entry writes to; iPXE users set `cloudy_install` instead.
const DEFAULT_INSTALL_DISK: &str = "/dev/sda";

pub fn make(board: &Board, rootfs: &Path, live_iso: &Path, out: &Path, epoch: u64) -> Result<(), PxeError> {
    let tmp = cache::tmp_path(out);
    cache::remove_any(&tmp).map_err(|e| io("removing", &tmp, e))?;
    fs::create_dir_all(tmp.join("pxelinux.cfg")).map_err(|e| io("creating", &tmp, e))?;
    let (kernel, initrd) = iso::kernel_and_initrd(rootfs)?;
    link(&kernel, &tmp.join("vmlinuz"))?;
    link(&initrd, &tmp.join("initrd.img"))?;
    link(live_iso, &tmp.join(LIVE_ISO))?;
    // Copies, not links: the bundle's file times are set below, and these are the host's.
    copy(Path::new("/usr/lib/PXELINUX/pxelinux.0"), &tmp.join("pxelinux.0"))?;
    copy(Path::new("/usr/lib/syslinux/modules/bios/ldlinux.c32"), &tmp.join("ldlinux.c32"))?;

    let live = cmdline(board, None);
    let install = |disk: &str| cmdline(board, Some(disk));
    write(
        &tmp.join("boot.ipxe"),
        &format!(
            "#!ipxe\n\
             # Cloudy network boot for {board} (live). To install to a disk instead, set\n\
             # cloudy_install first, e.g. `set cloudy_install /dev/sda` before chaining this script.\n\
             isset ${{cloudy_install}} && goto install ||\n\
             kernel vmlinuz initrd=initrd.img {live}\n\
             initrd initrd.img\n\
             boot\n\
             :install\n\
             kernel vmlinuz initrd=initrd.img {install_ipxe}\n\
             initrd initrd.img\n\
             boot\n",
            board = board.name,
            install_ipxe = install("${cloudy_install}"),
        ),
    )?;
    let unit = board.console_device().trim_start_matches("ttyS").parse::<u32>().unwrap_or(0);
    write(
        &tmp.join("pxelinux.cfg/default"),
        &format!(
            "SERIAL {unit} 115200\nDEFAULT live\nPROMPT 0\nTIMEOUT 0\n\n\
             LABEL live\n  KERNEL vmlinuz\n  INITRD initrd.img\n  APPEND {live}\n\n\
             LABEL install\n  KERNEL vmlinuz\n  INITRD initrd.img\n  APPEND {}\n",
            install(DEFAULT_INSTALL_DISK)
        ),
    )?;
    write(
        &tmp.join("README.txt"),
        &format!(
            "Cloudy PXE bundle for {}.\n\nServe this directory over TFTP. iPXE: boot boot.ipxe (set cloudy_install=/dev/XXX\n\
             first to install to that disk). PXELINUX: pxelinux.0, entries `live` (default) and\n\
             `install` ({DEFAULT_INSTALL_DISK}). The live system is {LIVE_ISO}; put a seed in it with\n\
             `cloudy-image customise {LIVE_ISO} --seed cloudy.toml`.\n",
            board.name
        ),
    )?;
    cache::set_tree_mtime(&tmp, epoch).map_err(|e| io("setting times under", &tmp, e))?;
    cache::publish(&tmp, out).map_err(|e| io("renaming", &tmp, e))
}

fn link(from: &Path, to: &Path) -> Result<(), PxeError> {
    if fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    copy(from, to)
}

fn copy(from: &Path, to: &Path) -> Result<(), PxeError> {
    fs::copy(from, to).map(|_| ()).map_err(|e| io("copying", from, e))
}

fn write(p: &Path, s: &str) -> Result<(), PxeError> {
    fs::write(p, s).map_err(|e| io("writing", p, e))
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> PxeError {
    PxeError::Io { what, path: path.display().to_string(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_and_install_cmdlines() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("hardware");
        let (b, _) = Board::load(&root.join("pxe-686-pae.toml")).unwrap();
        let live = cmdline(&b, None);
        assert!(live.starts_with("boot=live fetch=tftp:///cloudy.iso "), "{live}");
        assert!(!live.contains("cloudy.install"));
        assert!(cmdline(&b, Some("/dev/vda")).ends_with("cloudy.install=/dev/vda"));
    }
}
