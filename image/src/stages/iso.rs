//! iso: a hybrid ISO (CD, USB stick, VM) with live-boot: ISOLINUX for BIOS, GRUB for
//! UEFI, the kernel console on the board's serial port as well as the screen.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::board::{Board, Firmware};
use crate::cache;
use crate::cmd::{self, CmdError, Log};
use crate::progress::Step;

#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("no kernel or initrd under {0}/boot\n  fix: the board's kernel_package must install a kernel; delete the cache entry and rebuild")]
    NoKernel(String),
    #[error("{0}")]
    Cmd(#[from] CmdError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

pub const VOLUME_ID: &str = "CLOUDY";

pub struct Inputs<'a> {
    pub board: &'a Board,
    pub rootfs: &'a Path,
    pub base_squashfs: &'a Path,
    pub layer_squashfs: &'a Path,
    pub epoch: u64,
    /// False for a PXE bundle's medium: the kernel and initrd come over PXE, and every byte
    /// of the medium is fetched into RAM.
    pub with_kernel: bool,
}

/// Kernel command line of the live system. The serial console is named last so that it is
/// /dev/console: the agent's ready line goes there, where the verify stage reads it.
pub fn cmdline(board: &Board) -> String {
    format!("boot=live console=tty0 console={} quiet", board.console)
}

/// The menu entry that installs the medium to a disk: the PXE bundle's installer
/// (overlay/usr/lib/cloudy/install-to-disk), which copies the live system's layers from the
/// medium. `auto` picks the only empty disk and refuses (writing nothing) when there is none
/// or more than one.
pub const INSTALL_TITLE: &str = "Install Cloudy to disk";

pub fn install_cmdline(board: &Board) -> String {
    format!("{} cloudy.install=auto", cmdline(board))
}

/// The menu entry that keeps the node's state on the USB stick the ISO was written to: the agent
/// makes a partition in the stick's free space on the first boot (agent/src/os/stick.rs) and
/// later boots find it by its label, from any entry.
pub const PERSIST_TITLE: &str = "Cloudy (keep state on this USB stick)";

pub fn persist_cmdline(board: &Board) -> String {
    format!("{} cloudy.persist=1", cmdline(board))
}

/// Seconds the boot menus wait before booting the live system: long enough to choose
/// "Install Cloudy to disk" (type `install` at ISOLINUX's prompt, arrow keys in GRUB).
pub const MENU_TIMEOUT_S: u32 = 3;

pub fn kernel_and_initrd(rootfs: &Path) -> Result<(PathBuf, PathBuf), IsoError> {
    let boot = rootfs.join("boot");
    match (
        cache::newest_with_prefix(&boot, "vmlinuz-"),
        cache::newest_with_prefix(&boot, "initrd.img-"),
    ) {
        (Some(k), Some(i)) => Ok((k, i)),
        _ => Err(IsoError::NoKernel(rootfs.display().to_string())),
    }
}

/// Stages the medium's tree under `work`, then writes the ISO to `out` by way of its temporary
/// name.
pub fn make(inp: &Inputs, work: &Path, out: &Path, log: &Log, step: &Step) -> Result<(), IsoError> {
    let stage = work.join("iso-tree");
    stage_live(inp, &stage)?;
    let boot = BootEntry::of(inp.board);
    let mut args = xorriso_args(out);
    if inp.with_kernel && inp.board.firmware.contains(&Firmware::Bios) {
        stage_isolinux(&stage, &boot)?;
        args.extend(BIOS_BOOT_ARGS.map(String::from));
    }
    let efi = efi_targets(inp);
    if !efi.is_empty() {
        stage_grub_efi(&efi, &stage, work, &boot, inp.epoch, log, step)?;
        args.extend(UEFI_BOOT_ARGS.map(String::from));
    }
    write_iso(args, &stage, inp.epoch, out, log, step)
}

/// What both boot loaders need: the serial port and speed, and the kernel command line.
struct BootEntry {
    serial_unit: u32,
    speed: String,
    cmdline: String,
    install: String,
    persist: String,
}

impl BootEntry {
    fn of(board: &Board) -> BootEntry {
        let serial_unit = board
            .console_device()
            .trim_start_matches("ttyS")
            .parse::<u32>()
            .unwrap_or(0);
        let speed = board
            .console
            .split(',')
            .nth(1)
            .map(|s| s.trim_end_matches(|c: char| c.is_alphabetic()))
            .unwrap_or("115200")
            .to_string();
        BootEntry {
            serial_unit,
            speed,
            cmdline: cmdline(board),
            install: install_cmdline(board),
            persist: persist_cmdline(board),
        }
    }
}

/// The live/ directory live-boot looks for, and the seed directory users find on the medium.
fn stage_live(inp: &Inputs, stage: &Path) -> Result<(), IsoError> {
    cache::remove_any(stage).map_err(|e| io("removing", stage, e))?;
    let live = stage.join("live");
    mkdir(&live)?;
    if inp.with_kernel {
        let (kernel, initrd) = kernel_and_initrd(inp.rootfs)?;
        link_or_copy(&kernel, &live.join("vmlinuz"))?;
        link_or_copy(&initrd, &live.join("initrd.img"))?;
    }
    link_or_copy(inp.base_squashfs, &live.join("filesystem.squashfs"))?;
    link_or_copy(inp.layer_squashfs, &live.join("cloudy.squashfs"))?;
    // live-boot stacks the images in this order, the last on top.
    write(
        &live.join("filesystem.module"),
        "filesystem.squashfs\ncloudy.squashfs\n",
    )?;
    // A written ISO is read-only: the seed goes in before, with customise.
    write(&stage.join("cloudy/README.txt"), README_TXT)?;
    write(&stage.join("cloudy/cloudy.toml.example"), SEED_EXAMPLE)
}

/// Every section and key of a seed, commented out: laid beside the seed on every medium.
pub const SEED_EXAMPLE: &str = include_str!("cloudy.toml.example");

const README_TXT: &str =
    "This folder holds the node's seed, cloudy.toml, which the node reads at boot.\n\
An ISO cannot be changed once written to a stick or disc: put your seed in the image file before\n\
writing it, with `cloudy-image customise cloudy.iso --seed my.toml` (see the Cloudy README).\n\
cloudy.toml.example beside this file lists every section and key, commented.\n";

/// xorriso's arguments up to the boot options: it writes to the temporary name, renamed when done.
fn xorriso_args(out: &Path) -> Vec<String> {
    vec![
        "-as".into(),
        "mkisofs".into(),
        "-o".into(),
        cache::tmp_path(out).display().to_string(),
        "-iso-level".into(),
        "3".into(),
        "-full-iso9660-filenames".into(),
        "-joliet".into(),
        "-rational-rock".into(),
        "-volid".into(),
        VOLUME_ID.into(),
        "-appid".into(),
        "Cloudy community-cloud node".into(),
    ]
}

const BIOS_BOOT_ARGS: [&str; 10] = [
    "-isohybrid-mbr",
    "/usr/lib/ISOLINUX/isohdpfx.bin",
    "-eltorito-boot",
    "isolinux/isolinux.bin",
    "-eltorito-catalog",
    "isolinux/boot.cat",
    "-no-emul-boot",
    "-boot-load-size",
    "4",
    "-boot-info-table",
];

const UEFI_BOOT_ARGS: [&str; 5] = [
    "-eltorito-alt-boot",
    "-e",
    "boot/grub/efi.img",
    "-no-emul-boot",
    "-isohybrid-gpt-basdat",
];

fn stage_isolinux(stage: &Path, boot: &BootEntry) -> Result<(), IsoError> {
    let d = stage.join("isolinux");
    mkdir(&d)?;
    // Copies, not links: the staged tree's file times are set before xorriso runs, and these
    // files are the host's.
    copy(
        Path::new("/usr/lib/ISOLINUX/isolinux.bin"),
        &d.join("isolinux.bin"),
    )?;
    copy(
        Path::new("/usr/lib/syslinux/modules/bios/ldlinux.c32"),
        &d.join("ldlinux.c32"),
    )?;
    let (cfg, menu) = isolinux_cfg(boot);
    write(&d.join("boot.txt"), &menu)?;
    write(&d.join("isolinux.cfg"), &cfg)
}

/// isolinux.cfg and the menu text it displays. A prompt rather than menu.c32: it reads the
/// same on the serial console as on a screen.
fn isolinux_cfg(boot: &BootEntry) -> (String, String) {
    let BootEntry {
        serial_unit,
        speed,
        cmdline,
        install,
        persist,
    } = boot;
    let menu = format!(
        "\nCloudy. Boots the live system in {MENU_TIMEOUT_S} s, or type a label and Enter:\n  \
         cloudy    Cloudy (live)\n  install   {INSTALL_TITLE} (the only empty disk; erases it)\n  \
         persist   {PERSIST_TITLE}\n"
    );
    let cfg = format!(
        "serial {serial_unit} {speed}\ndefault cloudy\ndisplay boot.txt\nprompt 1\ntimeout {}\n\
         label cloudy\n  kernel /live/vmlinuz\n  append initrd=/live/initrd.img {cmdline}\n\
         label install\n  kernel /live/vmlinuz\n  append initrd=/live/initrd.img {install}\n\
         label persist\n  kernel /live/vmlinuz\n  append initrd=/live/initrd.img {persist}\n",
        MENU_TIMEOUT_S * 10
    );
    (cfg, menu)
}

/// GRUB's menu (UEFI): the live system by default, and the install entry.
fn grub_cfg(boot: &BootEntry) -> String {
    let BootEntry {
        serial_unit,
        speed,
        cmdline,
        install,
        persist,
    } = boot;
    format!(
        "serial --unit={serial_unit} --speed={speed}\nterminal_input console serial\nterminal_output console serial\n\
         set timeout={MENU_TIMEOUT_S}\nmenuentry \"Cloudy\" {{\n  linux /live/vmlinuz {cmdline}\n  initrd /live/initrd.img\n}}\n\
         menuentry \"{INSTALL_TITLE}\" {{\n  linux /live/vmlinuz {install}\n  initrd /live/initrd.img\n}}\n\
         menuentry \"{PERSIST_TITLE}\" {{\n  linux /live/vmlinuz {persist}\n  initrd /live/initrd.img\n}}\n"
    )
}

/// A GRUB image format and the removable-media file name UEFI firmware of that kind boots.
type EfiTarget = (&'static str, &'static str);

/// The UEFI firmwares the medium boots on; none without a kernel.
fn efi_targets(inp: &Inputs) -> Vec<EfiTarget> {
    inp.board
        .firmware
        .iter()
        .filter(|_| inp.with_kernel)
        .filter_map(|f| match f {
            Firmware::UefiX64 => Some(("x86_64-efi", "BOOTX64.EFI")),
            Firmware::UefiIa32 => Some(("i386-efi", "BOOTIA32.EFI")),
            Firmware::Bios => None,
        })
        .collect()
}

/// boot/grub/grub.cfg, and boot/grub/efi.img holding a GRUB binary per UEFI target.
fn stage_grub_efi(
    efi: &[EfiTarget],
    stage: &Path,
    work: &Path,
    boot: &BootEntry,
    epoch: u64,
    log: &Log,
    step: &Step,
) -> Result<(), IsoError> {
    let grub = stage.join("boot/grub");
    mkdir(&grub)?;
    write(&grub.join("grub.cfg"), &grub_cfg(boot))?;
    let efi_files = grub_mkimage(efi, work, log, step)?;
    make_efi_img(&grub.join("efi.img"), &efi_files, epoch, log, step)
}

const GRUB_MODULES: [&str; 15] = [
    "part_gpt",
    "part_msdos",
    "fat",
    "iso9660",
    "linux",
    "normal",
    "configfile",
    "search",
    "search_fs_file",
    "serial",
    "terminal",
    "echo",
    "test",
    "all_video",
    "boot",
];

/// Builds each target's GRUB binary in `work`, with the early config that finds this medium's
/// tree; returns the files with their names on the EFI image.
fn grub_mkimage(
    efi: &[EfiTarget],
    work: &Path,
    log: &Log,
    step: &Step,
) -> Result<Vec<(PathBuf, &'static str)>, IsoError> {
    let early = work.join("grub-early.cfg");
    write(&early, "search --no-floppy --set=root --file /live/cloudy.squashfs\nset prefix=($root)/boot/grub\nconfigfile ($root)/boot/grub/grub.cfg\n")?;
    let mut efi_files = Vec::new();
    for (format, name) in efi {
        let f = work.join(name);
        let mut c = Command::new("grub-mkimage");
        c.args(["-O", format, "-o"])
            .arg(&f)
            .args(["-p", "/boot/grub", "-c"])
            .arg(&early)
            .args(GRUB_MODULES);
        cmd::run(&mut c, log, step)?;
        efi_files.push((f, *name));
    }
    Ok(efi_files)
}

/// The El Torito EFI image: a FAT holding the GRUB binaries under EFI/BOOT.
fn make_efi_img(
    img: &Path,
    efi_files: &[(PathBuf, &str)],
    epoch: u64,
    log: &Log,
    step: &Step,
) -> Result<(), IsoError> {
    let size_kib: u64 = efi_files
        .iter()
        .map(|(f, _)| fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum::<u64>()
        / 1024
        + 512;
    // Fixed volume serial and times: the same inputs give the same ISO bytes.
    let serial = format!("{:08x}", epoch as u32);
    let mut c = Command::new("mkfs.vfat");
    c.args(["-C", "--invariant", "-i", &serial, "-n", "EFIBOOT"])
        .arg(img)
        .arg(size_kib.to_string());
    c.env("SOURCE_DATE_EPOCH", epoch.to_string());
    cmd::run(&mut c, log, step)?;
    let img_s = img.display().to_string();
    mtools(
        &["mmd", "-i", &img_s, "::/EFI", "::/EFI/BOOT"],
        &[],
        epoch,
        log,
        step,
    )?;
    for (f, name) in efi_files {
        cache::set_tree_mtime(f, epoch).map_err(|e| io("touching", f, e))?;
        mtools(
            &["mcopy", "-m", "-i", &img_s],
            &[f, Path::new(&format!("::/EFI/BOOT/{name}"))],
            epoch,
            log,
            step,
        )?;
    }
    Ok(())
}

fn mtools(
    args: &[&str],
    extra: &[&Path],
    epoch: u64,
    log: &Log,
    step: &Step,
) -> Result<(), IsoError> {
    let mut c = Command::new(args[0]);
    c.args(&args[1..])
        .args(extra)
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("MTOOLS_SKIP_CHECK", "1");
    cmd::run(&mut c, log, step)?;
    Ok(())
}

/// Runs xorriso on the staged tree, writing the temporary name, then renames it to `out`.
fn write_iso(
    mut args: Vec<String>,
    stage: &Path,
    epoch: u64,
    out: &Path,
    log: &Log,
    step: &Step,
) -> Result<(), IsoError> {
    args.push(stage.display().to_string());
    cache::set_tree_mtime(stage, epoch).map_err(|e| io("setting times under", stage, e))?;
    let mut c = Command::new("xorriso");
    c.args(&args).env("SOURCE_DATE_EPOCH", epoch.to_string());
    let _ = cache::remove_any(&cache::tmp_path(out));
    cmd::run(&mut c, log, step)?;
    cache::publish(&cache::tmp_path(out), out).map_err(|e| io("renaming", out, e))?;
    Ok(())
}

fn mkdir(p: &Path) -> Result<(), IsoError> {
    fs::create_dir_all(p).map_err(|e| io("creating", p, e))
}

fn write(p: &Path, s: &str) -> Result<(), IsoError> {
    if let Some(d) = p.parent() {
        mkdir(d)?;
    }
    fs::write(p, s).map_err(|e| io("writing", p, e))
}

fn copy(from: &Path, to: &Path) -> Result<(), IsoError> {
    fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| io("copying", from, e))
}

/// Big inputs are hard-linked from the cache when it is on the same filesystem.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), IsoError> {
    let _ = fs::remove_file(to);
    if fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| io("copying", from, e))
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> IsoError {
    IsoError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14: both boot menus offer "Install Cloudy to disk", which runs the PXE bundle's
    /// installer (`cloudy.install=`) in `auto` mode; the live system stays the default.
    #[test]
    fn both_menus_offer_install_to_disk() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("hardware");
        let (b, _) = Board::load(&root.join("pc-686-pae.toml")).unwrap();
        let boot = BootEntry::of(&b);
        let (cfg, menu) = isolinux_cfg(&boot);
        assert!(cfg.contains("default cloudy\n"), "{cfg}");
        let install = cfg.split("label install").nth(1).expect("install label");
        assert!(install.contains("cloudy.install=auto"), "{cfg}");
        assert!(install.contains("boot=live"), "{cfg}");
        let live = cfg.split("label install").next().unwrap();
        assert!(!live.contains("cloudy.install"), "{cfg}");
        assert!(!live.contains("cloudy.persist"), "{cfg}");
        assert!(menu.contains(INSTALL_TITLE), "{menu}");
        let grub = grub_cfg(&boot);
        let entries: Vec<&str> = grub.split("menuentry ").skip(1).collect();
        // Three since the USB stick entry (issue 14): live, install, keep state on the stick.
        assert_eq!(entries.len(), 3, "{grub}");
        assert!(entries[0].starts_with("\"Cloudy\"") && !entries[0].contains("cloudy.install"));
        assert!(entries[1].starts_with(&format!("\"{INSTALL_TITLE}\"")));
        assert!(entries[1].contains("cloudy.install=auto"), "{grub}");
        assert!(!entries[1].contains("cloudy.persist"), "{grub}");
    }

    /// Issue 14: "keep state on this USB stick" in both menus, the live system with
    /// `cloudy.persist=1`; it installs nothing.
    #[test]
    fn both_menus_offer_state_on_the_usb_stick() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("hardware");
        let (b, _) = Board::load(&root.join("pc-686-pae.toml")).unwrap();
        let boot = BootEntry::of(&b);
        let (cfg, menu) = isolinux_cfg(&boot);
        let persist = cfg.split("label persist\n").nth(1).expect("persist label");
        let append = persist.lines().find(|l| l.contains("append")).unwrap();
        assert!(
            append.contains("boot=live") && append.contains("cloudy.persist=1"),
            "{cfg}"
        );
        assert!(!append.contains("cloudy.install"), "{cfg}");
        assert!(
            menu.contains(&format!("persist   {PERSIST_TITLE}")),
            "{menu}"
        );
        assert!(
            cfg.contains("default cloudy\n"),
            "the live system stays the default"
        );
        let grub = grub_cfg(&boot);
        let entry = grub
            .split(&format!("menuentry \"{PERSIST_TITLE}\""))
            .nth(1)
            .expect("GRUB entry");
        let linux = entry.lines().find(|l| l.contains("linux ")).unwrap();
        assert!(
            linux.contains("boot=live") && linux.ends_with("cloudy.persist=1"),
            "{grub}"
        );
    }
}
