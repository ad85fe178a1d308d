//! The QEMU command that stands in for a board: used by the verify stage and by `boot`.

use std::path::{Path, PathBuf};

use std::process::Command;

use crate::board::Board;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Software emulation: works everywhere, and the only choice where /dev/kvm cannot run
    /// Debian kernels (see README).
    Tcg,
    Kvm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Boot {
    Bios,
    /// OVMF (amd64 boards).
    Uefi,
}

pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// What the VM boots from.
pub enum Media<'a> {
    Cdrom(&'a Path),
    /// A disk image, opened with `-snapshot`: booting must not change a built image.
    Disk(&'a Path),
    /// Network boot from a PXE bundle served by QEMU's own TFTP server, starting with
    /// `bootfile` (an iPXE script); the guest also reaches the loopback HTTP server on port
    /// `http` as http://10.0.2.100 (`http::GUEST_ADDR`).
    Pxe {
        root: PathBuf,
        bootfile: String,
        http: u16,
    },
}

pub struct Vm<'a> {
    pub board: &'a Board,
    pub media: Media<'a>,
    pub accel: Accel,
    pub boot: Boot,
    /// Kernel, initrd and command line passed directly (used by `boot` to add options).
    pub direct: Option<(PathBuf, PathBuf, String)>,
    /// A writable disk besides the boot media (the target of a PXE install).
    pub disk: Option<&'a Path>,
}

impl Vm<'_> {
    /// QEMU with the serial console on stdio and no display; the guest's network is QEMU's
    /// user mode with `restrict=on`, so it reaches nothing outside.
    pub fn command(&self) -> Command {
        let q = &self.board.qemu;
        let mut c = Command::new(&q.system);
        c.args([
            "-accel",
            match self.accel {
                Accel::Tcg => "tcg",
                Accel::Kvm => "kvm",
            },
        ])
        .args([
            "-machine",
            &q.machine,
            "-cpu",
            &q.cpu,
            "-m",
            &q.memory_mib.to_string(),
            "-smp",
            "2",
        ])
        .args(["-display", "none", "-no-reboot"]);
        match &self.media {
            Media::Pxe {
                root,
                bootfile,
                http,
            } => {
                // restrict=on still allows guestfwd: the guest reaches that one loopback port.
                c.args(["-nic", &format!("user,model=virtio-net-pci,restrict=on,tftp={},bootfile={bootfile},guestfwd=tcp:{}:80-tcp:127.0.0.1:{http}", root.display(), crate::http::GUEST_ADDR)]);
                c.args(["-boot", "n"]);
            }
            _ => {
                c.args(["-nic", "user,model=virtio-net-pci,restrict=on"]);
            }
        }
        match self.media {
            Media::Pxe { .. } => {}
            Media::Cdrom(iso) => {
                c.arg("-cdrom").arg(iso);
            }
            Media::Disk(img) => {
                c.arg("-drive")
                    .arg(format!("file={},format=raw,if=virtio", img.display()))
                    .arg("-snapshot");
            }
        }
        if self.boot == Boot::Uefi {
            c.arg("-bios").arg(OVMF);
        }
        if let Some(disk) = self.disk {
            c.arg("-drive")
                .arg(format!("file={},format=raw,if=virtio", disk.display()));
        }
        if let Some((kernel, initrd, append)) = &self.direct {
            c.arg("-kernel")
                .arg(kernel)
                .arg("-initrd")
                .arg(initrd)
                .args(["-append", append]);
        }
        c
    }
}
