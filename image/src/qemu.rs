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

/// A guest TCP port reachable from the host as 127.0.0.1:`host` (QEMU's `hostfwd`): how a
/// test reaches a booted SD image's SSH (or any port), which has no other way in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostForward {
    pub host: u16,
    pub guest: u16,
}

impl HostForward {
    fn nic_option(&self) -> String {
        format!(",hostfwd=tcp:127.0.0.1:{}-:{}", self.host, self.guest)
    }
}

impl Vm<'_> {
    /// QEMU with the serial console on stdio and no display; the guest's network is QEMU's
    /// user mode with `restrict=on`, so it reaches nothing outside.
    pub fn command(&self) -> Command {
        self.command_forwarding(&[])
    }

    /// As [`Vm::command`], with `forwards` open from the host's loopback into the guest.
    /// `restrict=on` stays: the guest still reaches nothing outside, and only the host's
    /// loopback reaches these ports.
    pub fn command_forwarding(&self, forwards: &[HostForward]) -> Command {
        let fwd: String = forwards.iter().map(HostForward::nic_option).collect();
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
                c.args(["-nic", &format!("user,model=virtio-net-pci,restrict=on,tftp={},bootfile={bootfile},guestfwd=tcp:{}:80-tcp:127.0.0.1:{http}{fwd}", root.display(), crate::http::GUEST_ADDR)]);
                c.args(["-boot", "n"]);
            }
            _ => {
                c.args([
                    "-nic",
                    &format!("user,model=virtio-net-pci,restrict=on{fwd}"),
                ]);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A host forward opens one loopback port into the guest and keeps restrict=on.
    #[test]
    fn host_forwards_go_on_the_restricted_nic() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("hardware");
        let (b, _) = Board::load(&root.join("rpi3.toml")).unwrap();
        let img = Path::new("/tmp/x.img");
        let vm = Vm {
            board: &b,
            media: Media::Disk(img),
            accel: Accel::Tcg,
            boot: Boot::Bios,
            direct: None,
            disk: None,
        };
        let nic = |c: &Command| {
            let a: Vec<String> = c
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let i = a.iter().position(|x| x == "-nic").unwrap();
            a[i + 1].clone()
        };
        assert_eq!(nic(&vm.command()), "user,model=virtio-net-pci,restrict=on");
        let c = vm.command_forwarding(&[HostForward {
            host: 40022,
            guest: 22,
        }]);
        assert_eq!(
            nic(&c),
            "user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22"
        );
    }
}
