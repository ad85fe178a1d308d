//! Host tools the build runs, and the Debian package that brings each one. Checked up front so
//! a missing tool is named before any work is done.

use std::path::{Path, PathBuf};

use crate::board::{Board, Firmware, Format};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

const fn t(program: &'static str, package: &'static str) -> Tool {
    Tool { program, package }
}

#[derive(Debug, thiserror::Error)]
#[error("missing host tools: {}\n  fix: apt-get install {} (or run `make deps`)", .missing.iter().map(|t| t.program).collect::<Vec<_>>().join(", "), packages(.missing))]
pub struct MissingTools {
    pub missing: Vec<Tool>,
}

fn packages(tools: &[Tool]) -> String {
    let mut p: Vec<&str> = tools.iter().map(|t| t.package).collect();
    p.sort();
    p.dedup();
    p.join(" ")
}

/// Everything `build` needs for this board.
pub fn for_build(board: &Board, verify: bool, debian_rust: bool) -> Vec<Tool> {
    let mut tools = vec![
        t("mmdebstrap", "mmdebstrap"),
        t("arch-test", "arch-test"),
        t("mkfs.vfat", "dosfstools"),
        t("mcopy", "mtools"),
        t("mmd", "mtools"),
        t("dpkg-deb", "dpkg"),
        t("dpkg-query", "dpkg"),
        t("curl", "curl"),
    ];
    if debian_rust {
        // Debian's own cargo and rustc, not rustup's: the target std is Debian's.
        tools.push(t("debian-cargo:/usr/share/cargo/bin/cargo", "cargo-web"));
        tools.push(t("debian-rustc:/usr/bin/rustc", "rustc-web"));
        let (linker, linker_pkg) = board.arch.linker();
        tools.push(Tool {
            program: linker,
            package: linker_pkg,
        });
        let (libc, libc_pkg) = board.arch.cross_libc();
        tools.push(Tool {
            program: libc,
            package: libc_pkg,
        });
        if board.arch == crate::board::Arch::Armel {
            // Debian has no armel std of rustc-web: it is compiled from the source (agent.rs).
            tools.push(t(
                "rust-src:/usr/lib/rustlib/src/rust/library/Cargo.lock",
                "rust-web-src",
            ));
        }
    } else {
        tools.push(t("cross", "cross (cargo install cross; needs Docker)"));
    }
    match board.format {
        Format::Iso => tools.extend([t("mksquashfs", "squashfs-tools"), t("xorriso", "xorriso")]),
        Format::Pxe => tools.extend([
            t("mksquashfs", "squashfs-tools"),
            t("xorriso", "xorriso"),
            t("pxelinux:/usr/lib/PXELINUX/pxelinux.0", "pxelinux"),
        ]),
        Format::Sdcard => tools.extend([t("sfdisk", "fdisk"), t("mke2fs", "e2fsprogs")]),
    }
    if board.firmware.contains(&Firmware::Bios) {
        tools.push(t(
            "isohybrid-mbr:/usr/lib/ISOLINUX/isohdpfx.bin",
            "isolinux",
        ));
        tools.push(t("isolinux:/usr/lib/ISOLINUX/isolinux.bin", "isolinux"));
        tools.push(t(
            "ldlinux:/usr/lib/syslinux/modules/bios/ldlinux.c32",
            "syslinux-common",
        ));
    }
    if board.firmware.contains(&Firmware::UefiX64) {
        tools.push(t("grub-mkimage", "grub-common"));
        tools.push(t(
            "grub-x86_64-efi:/usr/lib/grub/x86_64-efi/linux.mod",
            "grub-efi-amd64-bin",
        ));
    }
    if board.firmware.contains(&Firmware::UefiIa32) {
        tools.push(t("grub-mkimage", "grub-common"));
        tools.push(t(
            "grub-i386-efi:/usr/lib/grub/i386-efi/linux.mod",
            "grub-efi-ia32-bin",
        ));
    }
    if verify {
        tools.extend(for_boot(board));
    }
    if board.is_foreign() {
        tools.push(t("qemu-user:/usr/libexec/qemu-binfmt", "qemu-user-static"));
    }
    tools
}

pub fn for_boot(board: &Board) -> Vec<Tool> {
    let pkg = match board.qemu.system.as_str() {
        "qemu-system-i386" | "qemu-system-x86_64" => "qemu-system-x86 (from bookworm-backports)",
        _ => "qemu-system-arm (from bookworm-backports)",
    };
    let mut tools = vec![
        Tool {
            program: leak(board.qemu.system.clone()),
            package: pkg,
        },
        t("timeout", "coreutils"),
    ];
    if crate::qemu::raspi_dtb(&board.qemu.machine).is_some() {
        // The SD card's overlay and the device tree's QEMU copy (qemu.rs, raspi_sd).
        tools.extend([
            t("qemu-img", "qemu-utils"),
            t("fdtget", "device-tree-compiler"),
            t("fdtput", "device-tree-compiler"),
        ]);
    }
    tools
}

fn leak(s: String) -> &'static str {
    // Board files are read once per run; a handful of bytes live for the process.
    Box::leak(s.into_boxed_str())
}

/// `name` is a program on PATH, or `label:/absolute/file` for a data file a tool needs.
pub fn find(tool: &Tool) -> Option<PathBuf> {
    if let Some((_, file)) = tool.program.split_once(':') {
        let p = PathBuf::from(file);
        return p.exists().then_some(p);
    }
    which(tool.program)
}

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

pub fn check(tools: &[Tool]) -> Result<(), MissingTools> {
    let mut missing: Vec<Tool> = tools
        .iter()
        .filter(|t| find(t).is_none())
        .copied()
        .collect();
    missing.dedup();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingTools { missing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_its_package() {
        let err = check(&[
            t("surely-not-a-program-xyz", "cloudy-fake-pkg"),
            t("sh", "dash"),
        ])
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("surely-not-a-program-xyz"), "{msg}");
        assert!(msg.contains("apt-get install cloudy-fake-pkg"), "{msg}");
        assert!(!msg.contains("dash"), "{msg}");
    }
}
