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
    /// An SD card image on a QEMU Raspberry Pi machine's SD controller, through a copy-on-write
    /// overlay (see [`raspi_sd`]), booted with `dtb`.
    RaspiSd {
        overlay: PathBuf,
        dtb: PathBuf,
    },
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
        ])
        .args(["-display", "none", "-no-reboot"]);
        // A Pi Zero or 1 has one core, and QEMU's model of it refuses a second.
        if raspi_dtb(&q.machine).is_none() {
            c.args(["-smp", "2"]);
        }
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
            Media::RaspiSd { .. } => {
                // No PCI and no Ethernet on the SoC: a USB network adapter, as on a Pi Zero.
                c.args(["-netdev", &format!("user,id=net0,restrict=on{fwd}")]);
                c.args(["-device", "usb-net,netdev=net0"]);
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
            Media::RaspiSd {
                ref overlay,
                ref dtb,
            } => {
                c.arg("-drive")
                    .arg(format!("if=sd,format=qcow2,file={}", overlay.display()))
                    .arg("-dtb")
                    .arg(dtb);
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

/// The device tree of the board QEMU's Raspberry Pi `machine` models, or None for any other
/// machine.
pub fn raspi_dtb(machine: &str) -> Option<&'static str> {
    match machine {
        "raspi0" => Some("bcm2835-rpi-zero.dtb"),
        "raspi1ap" => Some("bcm2835-rpi-a-plus.dtb"),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RaspiError {
    #[error("{program} failed for {path}: {detail}\n  fix: {fix}")]
    Tool {
        program: &'static str,
        path: String,
        detail: String,
        fix: &'static str,
    },
}

/// What a QEMU Raspberry Pi machine boots `image` (a raw SD image) from, made in `scratch`:
/// a qcow2 overlay over the image (QEMU's SD card must be a power of two in size, and the
/// built image must not change) and the board's device tree `dtb` as QEMU needs it
/// ([`raspi_device_tree`]).
pub fn raspi_sd(image: &Path, dtb: &Path, scratch: &Path) -> Result<Media<'static>, RaspiError> {
    let size = std::fs::metadata(image)
        .map_err(|e| RaspiError::Tool {
            program: "stat",
            path: image.display().to_string(),
            detail: e.to_string(),
            fix: "build the image first",
        })?
        .len()
        .next_power_of_two();
    let overlay = scratch.join("sdcard.qcow2");
    let _ = std::fs::remove_file(&overlay);
    run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(image)
            .arg(&overlay)
            .arg(size.to_string()),
        "qemu-img",
        &overlay,
        "apt-get install qemu-utils",
    )?;
    Ok(Media::RaspiSd {
        overlay,
        dtb: raspi_device_tree(dtb, scratch)?,
    })
}

/// A copy of the board's device tree `dtb` in `scratch` without the power management block's
/// second register range (the ASB bridge): QEMU does not model it, and Debian's kernel faults
/// on its first read in bcm2835_power_probe and panics before it mounts anything. Without that
/// range the kernel leaves the SoC's power domains to the firmware, whose mailbox QEMU does
/// answer. Everything else is the board's own device tree.
pub fn raspi_device_tree(dtb: &Path, scratch: &Path) -> Result<PathBuf, RaspiError> {
    let patched = scratch.join("qemu.dtb");
    std::fs::copy(dtb, &patched).map_err(|e| RaspiError::Tool {
        program: "cp",
        path: dtb.display().to_string(),
        detail: e.to_string(),
        fix: "check the firmware partition holds the board's device trees",
    })?;
    let node = "/soc/watchdog@7e100000";
    let fix = "apt-get install device-tree-compiler (make deps)";
    let reg = Command::new("fdtget")
        .args(["-t", "x"])
        .arg(&patched)
        .args([node, "reg"])
        .output();
    let reg = match reg {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => {
            return Err(RaspiError::Tool {
                program: "fdtget",
                path: patched.display().to_string(),
                detail: String::from_utf8_lossy(&o.stderr).trim().to_string(),
                fix,
            })
        }
        Err(e) => {
            return Err(RaspiError::Tool {
                program: "fdtget",
                path: patched.display().to_string(),
                detail: e.to_string(),
                fix,
            })
        }
    };
    let cells: Vec<&str> = reg.split_whitespace().collect();
    if cells.len() > 2 {
        run(
            Command::new("fdtput")
                .args(["-t", "x"])
                .arg(&patched)
                .args([node, "reg"])
                .args(&cells[..2]),
            "fdtput",
            &patched,
            fix,
        )?;
        run(
            Command::new("fdtput")
                .args(["-t", "s"])
                .arg(&patched)
                .args([node, "reg-names", "pm"]),
            "fdtput",
            &patched,
            fix,
        )?;
    }
    Ok(patched)
}

fn run(
    c: &mut Command,
    program: &'static str,
    path: &Path,
    fix: &'static str,
) -> Result<(), RaspiError> {
    let failed = |detail: String| RaspiError::Tool {
        program,
        path: path.display().to_string(),
        detail,
        fix,
    };
    let out = c.output().map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
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

    fn board(name: &str) -> Board {
        let hw = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hardware");
        Board::find(&hw, name).unwrap().0
    }

    fn args(c: &Command) -> Vec<String> {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// QEMU's raspi0 takes one core and no PCI: no `-smp 2`, no virtio NIC; the card goes on
    /// the SD controller with the device tree beside it.
    #[test]
    fn raspi_command_has_one_core_a_usb_nic_and_an_sd_card() {
        let b = board("rpi1");
        let vm = Vm {
            board: &b,
            media: Media::RaspiSd {
                overlay: "/s/sdcard.qcow2".into(),
                dtb: "/s/qemu.dtb".into(),
            },
            accel: Accel::Tcg,
            boot: Boot::Bios,
            direct: None,
            disk: None,
        };
        let a = args(&vm.command()).join(" ");
        assert!(a.contains("-machine raspi0 -cpu arm1176 -m 512"), "{a}");
        assert!(!a.contains("-smp"), "{a}");
        assert!(a.contains("-device usb-net,netdev=net0"), "{a}");
        assert!(!a.contains("virtio"), "{a}");
        assert!(
            a.contains("-drive if=sd,format=qcow2,file=/s/sdcard.qcow2 -dtb /s/qemu.dtb"),
            "{a}"
        );
        // Other boards keep their two cores.
        let b3 = board("rpi3");
        let vm = Vm {
            board: &b3,
            media: Media::Disk(Path::new("/x.img")),
            accel: Accel::Tcg,
            boot: Boot::Bios,
            direct: None,
            disk: None,
        };
        assert!(args(&vm.command()).join(" ").contains("-smp 2"));
    }

    /// The QEMU copy of the device tree loses only the ASB range; the overlay is a power of two
    /// and the image is left as it was. Needs dtc and qemu-img (the build set of ci/deps.sh).
    #[test]
    fn raspi_sd_overlays_the_card_and_drops_the_asb_range() {
        let d = tempfile::tempdir().unwrap();
        let dts = d.path().join("t.dts");
        std::fs::write(
            &dts,
            "/dts-v1/;\n/ { #address-cells = <1>; #size-cells = <1>;\n soc { #address-cells = <1>; #size-cells = <1>;\n  watchdog@7e100000 { compatible = \"brcm,bcm2835-pm\"; reg = <0x7e100000 0x114>, <0x7e00a000 0x24>; reg-names = \"pm\", \"asb\"; };\n  serial@7e201000 { reg = <0x7e201000 0x200>; };\n };\n};\n",
        )
        .unwrap();
        let dtb = d.path().join("t.dtb");
        let st = Command::new("dtc")
            .args(["-q", "-I", "dts", "-O", "dtb", "-o"])
            .arg(&dtb)
            .arg(&dts)
            .status()
            .expect("dtc (device-tree-compiler)");
        assert!(st.success());
        let img = d.path().join("card.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(100 << 20)
            .unwrap();
        let scratch = d.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let Media::RaspiSd { overlay, dtb: q } = raspi_sd(&img, &dtb, &scratch).unwrap() else {
            panic!("not an SD card")
        };
        let get = |prop: &str, ty: &str| {
            let o = Command::new("fdtget")
                .args(["-t", ty])
                .arg(&q)
                .args(["/soc/watchdog@7e100000", prop])
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        };
        assert_eq!(get("reg", "x"), "7e100000 114");
        assert_eq!(get("reg-names", "s"), "pm");
        let info = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&overlay)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["virtual-size"], 128u64 << 20);
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 100 << 20);
        // A device tree already without the range is taken as it is.
        let again = d.path().join("again");
        std::fs::create_dir(&again).unwrap();
        raspi_sd(&img, &q, &again).unwrap();
    }
}
