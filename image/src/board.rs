//! Board definitions (`hardware/<board>.toml`): what hardware an image is for and how QEMU
//! stands in for it.

use serde::Deserialize;
use std::path::{Path, PathBuf};

use crate::config::{self, ConfigError};

pub const BOARD_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    I386,
    Amd64,
    Armhf,
    Arm64,
    /// ARMv5TE and up, soft-float ABI: the only Debian port that runs on the ARMv6 Pi 1 and
    /// Zero (armhf needs ARMv7).
    Armel,
}

/// Every `Arch::debian()` name, for recipe keys that list architectures.
pub const DEBIAN_ARCHES: &[&str] = &["i386", "amd64", "armhf", "arm64", "armel"];

impl Arch {
    /// Debian's name, as mmdebstrap and dpkg use it.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::I386 => "i386",
            Arch::Amd64 => "amd64",
            Arch::Armhf => "armhf",
            Arch::Arm64 => "arm64",
            Arch::Armel => "armel",
        }
    }

    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::I386 => "i686-unknown-linux-gnu",
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
            Arch::Armhf => "armv7-unknown-linux-gnueabihf",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
            // ARMv6, soft-float calling convention: Debian armel's ABI, and every instruction
            // runs on the Pi 1 and Zero's ARM1176.
            Arch::Armel => "arm-unknown-linux-gnueabi",
        }
    }

    /// The target C library the linker needs (crt files), and its Debian package.
    pub fn cross_libc(self) -> (&'static str, &'static str) {
        match self {
            Arch::I386 => (
                "cross-libc:/usr/i686-linux-gnu/lib/crti.o",
                "libc6-dev-i386-cross",
            ),
            Arch::Amd64 => ("libc:/usr/lib/x86_64-linux-gnu/crti.o", "libc6-dev"),
            Arch::Armhf => (
                "cross-libc:/usr/arm-linux-gnueabihf/lib/crti.o",
                "libc6-dev-armhf-cross",
            ),
            Arch::Arm64 => (
                "cross-libc:/usr/aarch64-linux-gnu/lib/crti.o",
                "libc6-dev-arm64-cross",
            ),
            Arch::Armel => (
                "cross-libc:/usr/arm-linux-gnueabi/lib/crti.o",
                "libc6-dev-armel-cross",
            ),
        }
    }

    /// The cross gcc used as linker, and the Debian package that has it.
    pub fn linker(self) -> (&'static str, &'static str) {
        match self {
            Arch::I386 => ("i686-linux-gnu-gcc", "gcc-i686-linux-gnu"),
            Arch::Amd64 => ("x86_64-linux-gnu-gcc", "gcc"),
            Arch::Armhf => ("arm-linux-gnueabihf-gcc", "gcc-arm-linux-gnueabihf"),
            Arch::Arm64 => ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
            Arch::Armel => ("arm-linux-gnueabi-gcc", "gcc-arm-linux-gnueabi"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Live hybrid ISO (CD, USB stick, VM).
    Iso,
    /// SD card image: FAT firmware partition + ext4 root (Raspberry Pi).
    Sdcard,
    /// PXE bundle: kernel, initrd, the live ISO, an iPXE script and a pxelinux config.
    Pxe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Firmware {
    Bios,
    UefiIa32,
    UefiX64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitramfsPolicy {
    Most,
    Netboot,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Qemu {
    pub system: String,
    pub machine: String,
    pub cpu: String,
    pub memory_mib: u32,
    /// The serial console under emulation when it differs from the board's (e.g. `virt`'s
    /// ttyAMA0 standing in for a Pi's mini UART).
    pub console: Option<String>,
}

/// SD card layout (format = "sdcard").
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Sdcard {
    /// Size of the FAT firmware partition.
    pub boot_mib: u32,
    /// Device trees the firmware partition must carry for this board.
    pub dtbs: Vec<String>,
    /// Extra kernel command line options in cmdline.txt.
    #[serde(default)]
    pub cmdline: String,
    /// Size of each of the two root slots (A/B updates; README "Pi slots").
    #[serde(default = "default_slot_mib")]
    pub slot_mib: u32,
    /// Size of the data partition in the image; it grows to the end of the card on first boot.
    #[serde(default = "default_data_mib")]
    pub data_mib: u32,
}

fn default_slot_mib() -> u32 {
    2560
}

fn default_data_mib() -> u32 {
    256
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    pub version: u32,
    pub name: String,
    pub description: String,
    pub arch: Arch,
    pub kernel_package: String,
    /// The end of `uname -r` on a node that booted this board's kernel.
    pub kernel_flavour: String,
    pub format: Format,
    /// Boot firmware of ISO images.
    #[serde(default)]
    pub firmware: Vec<Firmware>,
    pub console: String,
    /// Debian packages this board needs besides its kernel (e.g. raspi-firmware).
    #[serde(default)]
    pub packages: Vec<String>,
    /// Archive components besides the recipe's (e.g. non-free-firmware).
    #[serde(default)]
    pub components: Vec<String>,
    /// When set, the initramfs holds only these modules (and what they need): a full one takes
    /// minutes to build under qemu-user emulation.
    pub initramfs_modules: Option<Vec<String>>,
    /// initramfs-tools' MODULES policy when no list is given: `most` (default) or `netboot`
    /// (network drivers only: a small initrd that loads fast over TFTP).
    pub initramfs: Option<InitramfsPolicy>,
    pub sdcard: Option<Sdcard>,
    pub qemu: Qemu,
}

impl Board {
    /// Loads `hardware/<name>.toml`; an unknown name lists the boards there are.
    pub fn find(hardware_dir: &Path, name: &str) -> Result<(Board, PathBuf, String), ConfigError> {
        let path = hardware_dir.join(format!("{name}.toml"));
        if name.contains('/') || !path.exists() {
            return Err(ConfigError::UnknownBoard {
                name: name.to_string(),
                file: path.display().to_string(),
                known: list(hardware_dir).join(", "),
            });
        }
        let (board, text) = Board::load(&path)?;
        Ok((board, path, text))
    }

    pub fn load(path: &Path) -> Result<(Board, String), ConfigError> {
        let (board, text): (Board, String) = config::load(path, BOARD_VERSION, "board")?;
        board.validate(path)?;
        Ok((board, text))
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if self.name != stem {
            return Err(ConfigError::invalid(
                path,
                "name",
                format!("`{}` differs from the file name", self.name),
                format!("name the board `{stem}` or rename the file"),
            ));
        }
        if matches!(self.format, Format::Iso | Format::Pxe) && self.firmware.is_empty() {
            return Err(ConfigError::invalid(
                path,
                "firmware",
                "empty",
                "list at least one of bios, uefi-ia32, uefi-x64",
            ));
        }
        if self.format == Format::Sdcard && self.sdcard.is_none() {
            return Err(ConfigError::invalid(
                path,
                "sdcard",
                "missing for format = \"sdcard\"",
                "add an [sdcard] section with boot_mib and dtbs",
            ));
        }
        if let Some(sd) = &self.sdcard {
            if sd.boot_mib < 64 {
                return Err(ConfigError::invalid(
                    path,
                    "sdcard.boot_mib",
                    "below 64 MiB: kernel, initrd and firmware do not fit",
                    "use 256",
                ));
            }
        }
        if self.firmware.contains(&Firmware::UefiX64) && self.arch != Arch::Amd64 {
            return Err(ConfigError::invalid(
                path,
                "firmware",
                "uefi-x64 needs arch amd64",
                "use uefi-ia32 for i386 boards",
            ));
        }
        if !self.console.starts_with("tty") {
            return Err(ConfigError::invalid(
                path,
                "console",
                format!("`{}` is not a console device", self.console),
                "write it as on the kernel command line, e.g. ttyS0,115200n8",
            ));
        }
        if self.qemu.memory_mib < 256 {
            return Err(ConfigError::invalid(
                path,
                "qemu.memory_mib",
                "below 256 MiB: a live system does not fit",
                "use 1024",
            ));
        }
        Ok(())
    }

    /// The console device alone (`ttyS0`), for getty and QEMU.
    pub fn console_device(&self) -> &str {
        self.console.split(',').next().unwrap_or(&self.console)
    }

    /// The serial console under QEMU, in kernel syntax.
    pub fn emulated_console(&self) -> &str {
        self.qemu.console.as_deref().unwrap_or(&self.console)
    }

    /// Whether the host runs this board's binaries natively (else through qemu-user).
    pub fn is_foreign(&self) -> bool {
        !matches!(self.arch, Arch::I386 | Arch::Amd64)
    }
}

pub fn list(hardware_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(hardware_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            if p.extension()? != "toml" {
                return None;
            }
            Some(p.file_stem()?.to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf()
    }

    #[test]
    fn every_shipped_board_loads() {
        let names = list(&repo().join("hardware"));
        assert!(names.contains(&"pc-686-pae".to_string()));
        for n in names {
            Board::find(&repo().join("hardware"), &n).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
    }

    #[test]
    fn unknown_board_lists_known_ones() {
        let err = Board::find(&repo().join("hardware"), "pc-z80")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pc-z80") && err.contains("pc-686-pae"),
            "{err}"
        );
    }

    #[test]
    fn bad_board_fixtures_name_the_key() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/boards");
        for (file, needle) in [
            ("bad-unknown-key.toml", "bootloader"),
            ("bad-arch.toml", "arch"),
            ("bad-version.toml", "version"),
            ("bad-uefi.toml", "firmware"),
        ] {
            let err = Board::load(&dir.join(file)).unwrap_err().to_string();
            assert!(err.contains(needle), "{file}: {err}");
            assert!(
                err.contains(file),
                "{file}: error does not name the file: {err}"
            );
            assert!(err.contains("fix:"), "{file}: error gives no fix: {err}");
        }
    }
}
