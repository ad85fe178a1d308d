//! SD card images without loop mounts: an MBR on a plain file (sfdisk), a FAT firmware
//! partition filled with mtools, ext4 filesystems made by `mke2fs` (`-d` fills them), copied in
//! at their offsets.
//!
//! The card has two root slots for A/B updates (README "Pi slots"): partition 2 is slot A
//! (`cloudy-a`, the system), 3 is slot B (`cloudy-b`, an empty filesystem until RAUC writes an
//! update into it), 4 the data partition (`cloudy-data`: `/var/lib/cloudy`, kept whichever slot
//! runs; it grows to the end of the card on first boot). The FAT partition holds each slot's
//! kernel, initramfs, device trees and cmdline.txt in `slot-a/` (and later `slot-b/`), and
//! `slot.txt`, the switch the firmware reads ([`crate::pi_boot`]).

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::board::{Board, Sdcard};
use crate::cache;
use crate::cmd::{self, CmdError, Log};
use crate::pi_boot;
use crate::progress::Step;

const MIB: u64 = 1 << 20;
/// Partitions start on 4 MiB boundaries (SD cards erase in blocks of that order).
const ALIGN: u64 = 4 * MIB;

#[derive(Debug, thiserror::Error)]
pub enum SdError {
    #[error("the firmware partition lacks {dtb}, needed by board {board}\n  fix: check hardware/{board}.toml `sdcard.dtbs` against the kernel package's device trees")]
    MissingDtb { board: String, dtb: String },
    #[error("no kernel or initrd in {0}\n  fix: the board needs raspi-firmware in `packages` (it copies them there)")]
    NoKernel(String),
    #[error(
        "{0}: no FAT firmware partition in the MBR\n  fix: pass an SD image built by cloudy-image"
    )]
    NoFat(String),
    #[error("the system needs {need_mib} MiB but a root slot has {slot_mib} MiB\n  fix: raise `sdcard.slot_mib` in hardware/{board}.toml (both slots get that size), or drop packages")]
    SlotTooSmall {
        board: String,
        need_mib: u64,
        slot_mib: u32,
    },
    #[error("{path}: {problem}\n  fix: {fix}")]
    Card {
        path: String,
        problem: String,
        fix: String,
    },
    #[error("{0}")]
    Cmd(#[from] CmdError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

pub struct Inputs<'a> {
    pub board: &'a Board,
    pub rootfs: &'a Path,
    pub layer: &'a Path,
    pub seed: &'a str,
    pub epoch: u64,
    /// MBR disk identifier; partitions are `<id>-01` (firmware), `<id>-02` and `<id>-03` (root
    /// slots A and B), `<id>-04` (data).
    pub disk_id: u32,
}

pub fn partuuid(disk_id: u32, part: u32) -> String {
    format!("{disk_id:08x}-{part:02}")
}

/// The MBR partition of root slot `A` or `B`.
pub fn slot_partition(bootname: char) -> u32 {
    if bootname == 'B' {
        3
    } else {
        2
    }
}

/// The data partition's number and the filesystem labels of the slots.
pub const DATA_PARTITION: u32 = 4;
pub fn slot_label(bootname: char) -> String {
    format!("cloudy-{}", bootname.to_ascii_lowercase())
}

/// Kernel command line in slot A's cmdline.txt: the root partition by PARTUUID, the board's
/// consoles, and the slot for RAUC (`rauc.slot=`, how it tells which slot is booted).
pub fn cmdline(board: &Board, disk_id: u32, console: &str) -> String {
    slot_cmdline(board, disk_id, console, 'A')
}

/// The command line slot `bootname` boots with.
pub fn slot_cmdline(board: &Board, disk_id: u32, console: &str, bootname: char) -> String {
    let extra = board
        .sdcard
        .as_ref()
        .map(|s| s.cmdline.as_str())
        .unwrap_or("");
    format!(
        "console=tty0 console={console} root=PARTUUID={} rw rootwait fsck.repair=yes rauc.slot={bootname} {extra}",
        partuuid(disk_id, slot_partition(bootname))
    )
    .split_whitespace()
    .collect::<Vec<_>>()
    .join(" ")
}

/// The kernel and initrd raspi-firmware placed on the firmware partition.
pub fn kernel_and_initrd(firmware: &Path) -> Result<(PathBuf, PathBuf), SdError> {
    match (
        cache::newest_with_prefix(firmware, "vmlinuz-"),
        cache::newest_with_prefix(firmware, "initrd.img-"),
    ) {
        (Some(k), Some(i)) => Ok((k, i)),
        _ => Err(SdError::NoKernel(firmware.display().to_string())),
    }
}

/// Builds the raw image at `out`; returns the firmware partition's staging directory.
pub fn make(
    inp: &Inputs,
    work: &Path,
    out: &Path,
    log: &Log,
    step: &Step,
) -> Result<PathBuf, SdError> {
    let sd = inp
        .board
        .sdcard
        .as_ref()
        .expect("validated: sdcard boards have [sdcard]");
    let firmware_src = inp.rootfs.join("boot/firmware");
    check_firmware(inp.board, sd, &firmware_src)?;
    let fat_dir = work.join("firmware");
    stage_firmware(inp, &firmware_src, &fat_dir, log, step)?;
    let root = work.join("sdroot");
    stage_root(inp, &root, log, step)?;

    let data = work.join("sddata");
    stage_data(&root, &data)?;

    let parts = Partitions::sized(inp.board, sd, &root)?;
    let fat_img = work.join("firmware.vfat");
    let root_img = work.join("root.ext4");
    let b_img = work.join("slot-b.ext4");
    let data_img = work.join("data.ext4");
    for p in [&fat_img, &root_img, &b_img, &data_img] {
        let _ = fs::remove_file(p);
    }
    make_fat(inp, &fat_dir, &fat_img, parts.fat_bytes, log, step)?;
    let ext4 = |dir: Option<&Path>, img: &Path, label: &str, bytes: u64, salt: u32| {
        make_ext4(inp, dir, img, label, bytes, salt, log, step)
    };
    ext4(
        Some(&root),
        &root_img,
        &slot_label('A'),
        parts.slot_bytes,
        0,
    )?;
    // An empty filesystem, so RAUC finds slot B by its label before the first update.
    ext4(None, &b_img, &slot_label('B'), parts.slot_bytes, 1)?;
    ext4(Some(&data), &data_img, DATA_LABEL, parts.data_bytes, 2)?;
    write_disk(
        inp.disk_id,
        &parts,
        &[
            (&fat_img, parts.fat_start()),
            (&root_img, parts.slot_start('A')),
            (&b_img, parts.slot_start('B')),
            (&data_img, parts.data_start()),
        ],
        out,
        log,
    )?;
    for p in [&fat_img, &root_img, &b_img, &data_img] {
        let _ = fs::remove_file(p);
    }
    let _ = fs::remove_dir_all(&root);
    let _ = fs::remove_dir_all(&data);
    Ok(fat_dir)
}

/// The data partition's filesystem label: the agent (and fstab here) look for it.
pub use cloudy_model::seed::DATA_LABEL;
/// The FAT partition's label (raspi-firmware's, which Debian's Pi images mount it by).
pub const FIRMWARE_LABEL: &str = "RASPIFIRM";

/// Fails early, naming the fix, when the kernel package left out what the board boots from.
fn check_firmware(board: &Board, sd: &Sdcard, firmware_src: &Path) -> Result<(), SdError> {
    for dtb in &sd.dtbs {
        if !firmware_src.join(dtb).exists() {
            return Err(SdError::MissingDtb {
                board: board.name.clone(),
                dtb: dtb.clone(),
            });
        }
    }
    kernel_and_initrd(firmware_src)?;
    Ok(())
}

/// Firmware partition: what raspi-firmware laid out, with the kernel, initramfs and device
/// trees moved into slot A's directory beside its cmdline.txt, config.txt pointing there
/// through slot.txt, and the user's seed.
fn stage_firmware(
    inp: &Inputs,
    firmware_src: &Path,
    fat_dir: &Path,
    log: &Log,
    step: &Step,
) -> Result<(), SdError> {
    let board = inp.board;
    cache::remove_any(fat_dir).map_err(|e| io("removing", fat_dir, e))?;
    cmd::run(
        Command::new("cp").arg("-a").arg(firmware_src).arg(fat_dir),
        log,
        step,
    )?;
    slot_a_files(fat_dir)?;
    write(
        &fat_dir.join(pi_boot::slot_dir('A')).join("cmdline.txt"),
        &(cmdline(board, inp.disk_id, &board.console) + "\n"),
    )?;
    let config = fat_dir.join("config.txt");
    let raspi = fs::read_to_string(&config).map_err(|e| io("reading", &config, e))?;
    write(&config, &pi_boot::slot_config(&raspi))?;
    write(
        &fat_dir.join(pi_boot::SLOT_FILE),
        &pi_boot::initial_slot_file(),
    )?;
    write(
        &fat_dir.join("cloudy.toml.example"),
        super::iso::SEED_EXAMPLE,
    )?;
    write(
        &fat_dir.join("cloudy.toml"),
        &format!("# Your Cloudy seed: edit it from any computer before the first boot.\n# Secrets in it are moved off this partition once the node has applied them.\n{}", inp.seed),
    )
}

/// Moves raspi-firmware's versioned kernel and initramfs, and the device trees, into `slot-a/`
/// under the fixed names config.txt gives for every slot.
fn slot_a_files(fat_dir: &Path) -> Result<(), SdError> {
    let (kernel, initrd) = kernel_and_initrd(fat_dir)?;
    let slot = fat_dir.join(pi_boot::slot_dir('A'));
    fs::create_dir_all(&slot).map_err(|e| io("creating", &slot, e))?;
    let mv = |from: &Path, name: &str| {
        fs::rename(from, slot.join(name)).map_err(|e| io("moving", from, e))
    };
    mv(&kernel, pi_boot::SLOT_KERNEL)?;
    mv(&initrd, pi_boot::SLOT_INITRD)?;
    for e in fs::read_dir(fat_dir)
        .map_err(|e| io("reading", fat_dir, e))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".dtb") {
            mv(&e.path(), &name)?;
        } else if name.starts_with("vmlinuz-")
            || name.starts_with("initrd.img-")
            || name == "cmdline.txt"
        {
            // raspi-firmware's single-kernel files: the firmware reads the slot's instead.
            fs::remove_file(e.path()).map_err(|err| io("removing", &e.path(), err))?;
        }
    }
    Ok(())
}

/// The data partition's tree: what the image has in /var/lib/cloudy, moved there, so nothing
/// is hidden under the mount.
fn stage_data(root: &Path, data: &Path) -> Result<(), SdError> {
    cache::remove_any(data).map_err(|e| io("removing", data, e))?;
    let state = root.join("var/lib/cloudy");
    fs::create_dir_all(&state).map_err(|e| io("creating", &state, e))?;
    fs::rename(&state, data).map_err(|e| io("moving", &state, e))?;
    fs::create_dir_all(&state).map_err(|e| io("creating", &state, e))?;
    Ok(())
}

/// RAUC's system.conf on the card: the Pi backend, both slots by label, the status kept on
/// the data partition (README "Pi slots").
pub fn system_conf(board: &str) -> String {
    format!(
        "# RAUC on a Cloudy Raspberry Pi card (written by cloudy-image, image/src/stages/sdcard.rs).
         [system]
         compatible=cloudy-{board}
         bootloader=custom
         mountprefix=/run/rauc
         # On the data partition: kept whichever slot runs.
         statusfile=/var/lib/cloudy/rauc.status
         
         [handlers]
         # Switches slots through the FAT partition's slot.txt and counts a tried slot's boots.
         bootloader-custom-backend=/usr/lib/cloudy/rauc-pi-boot
         
         [keyring]
         path=/etc/rauc/keyring.pem
         
         [slot.rootfs.0]
         device=/dev/disk/by-label/{a}
         type=ext4
         bootname=A
         
         [slot.rootfs.1]
         device=/dev/disk/by-label/{b}
         type=ext4
         bootname=B
",
        a = slot_label('A'),
        b = slot_label('B'),
    )
}

/// Root: the cached rootfs with the Cloudy layer over it ([`slot_root`]).
fn stage_root(inp: &Inputs, root: &Path, log: &Log, step: &Step) -> Result<(), SdError> {
    slot_root(inp.rootfs, inp.layer, &inp.board.name, root, log, step)
}

/// A root slot's tree, the same for the image's slot A and for an update bundle's image
/// (`cloudy-image bundle`): the rootfs with the Cloudy layer over it, /boot/firmware an empty
/// mount point, the card's fstab and RAUC's system.conf. The kernel, initramfs and device trees
/// stay in the slot's /boot and /usr/lib/linux-image-*: the backend copies them to the FAT's
/// slot directory when it makes the slot primary.
pub fn slot_root(
    rootfs: &Path,
    layer: &Path,
    board: &str,
    root: &Path,
    log: &Log,
    step: &Step,
) -> Result<(), SdError> {
    cache::remove_any(root).map_err(|e| io("removing", root, e))?;
    cmd::run(
        Command::new("cp")
            .arg("-a")
            .arg("--reflink=auto")
            .arg(rootfs)
            .arg(root),
        log,
        step,
    )?;
    cmd::run(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", layer.display()))
            .arg(root),
        log,
        step,
    )?;
    let fw_in_root = root.join("boot/firmware");
    cache::remove_any(&fw_in_root).map_err(|e| io("removing", &fw_in_root, e))?;
    fs::create_dir_all(&fw_in_root).map_err(|e| io("creating", &fw_in_root, e))?;
    trim_modules(root, log, step)?;
    write(&root.join("etc/fstab"), &fstab())?;
    write(&root.join("etc/rauc/system.conf"), &system_conf(board))
}

/// Kernel module trees (under `/usr/lib/modules/<version>/kernel/`) for hardware a Raspberry
/// Pi cannot have: PCIe graphics cards, data-centre Ethernet and Fibre Channel adapters,
/// InfiniBand, the SCSI target framework. The Pi 1-3 have no PCIe, the Pi 4's one lane is
/// wired to its USB controller. Measured on rpi3's arm64 kernel (6.1.0-57): 40.5 MB of modules,
/// 8.7 MB of the `.img.xz` (the card was 4.8 MB over its 200 MB). USB network, Wi-Fi, camera
/// (media), sound and storage drivers stay. Modules that use one of these (rpcrdma, nvme-rdma)
/// cannot load either; `apt-get install --reinstall linux-image-$(uname -r)` brings all back.
pub const PI_UNUSED_MODULES: &[&str] = &[
    "drivers/gpu/drm/amd",
    "drivers/gpu/drm/nouveau",
    "drivers/gpu/drm/radeon",
    "drivers/infiniband",
    "drivers/net/ethernet/intel",
    "drivers/net/ethernet/mellanox",
    "drivers/net/ethernet/qlogic",
    "drivers/scsi/lpfc",
    "drivers/scsi/qla2xxx",
    "drivers/target",
];

/// Leaves [`PI_UNUSED_MODULES`] out of the card's root, remakes the module index (depmod in
/// the root: qemu-user for a foreign arch, registered by the build) and says so where
/// trim.sh lists what the image leaves out.
fn trim_modules(root: &Path, log: &Log, step: &Step) -> Result<(), SdError> {
    let modules = root.join("usr/lib/modules");
    let Ok(versions) = fs::read_dir(&modules) else {
        return Ok(());
    };
    let mut trimmed = Vec::new();
    for v in versions.flatten() {
        let kernel = v.path().join("kernel");
        let mut removed = false;
        for d in PI_UNUSED_MODULES {
            let p = kernel.join(d);
            if p.exists() {
                fs::remove_dir_all(&p).map_err(|e| io("removing", &p, e))?;
                removed = true;
            }
        }
        if removed {
            let version = v.file_name().to_string_lossy().into_owned();
            cmd::run(
                Command::new("chroot")
                    .arg(root)
                    .args(["depmod", "-a", &version]),
                log,
                step,
            )?;
            trimmed.push(version);
        }
    }
    if trimmed.is_empty() {
        return Ok(());
    }
    let note = root.join("usr/share/cloudy/trimmed.txt");
    let mut text = fs::read_to_string(&note).unwrap_or_default();
    text.push_str(&format!(
        "- kernel modules for hardware a Raspberry Pi cannot have (PCIe graphics, data-centre\n  \
         network and storage adapters, InfiniBand), from /usr/lib/modules/{}/kernel/:\n    {}\n  \
         Put them back with: apt-get install --reinstall linux-image-$(uname -r)\n",
        trimmed.join(", "),
        PI_UNUSED_MODULES.join("\n    ")
    ));
    if let Some(dir) = note.parent() {
        fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
    }
    write(&note, &text)
}

/// The slots' fstab. `/` is not named: it is whichever slot the firmware booted (root= in that
/// slot's cmdline.txt), mounted read-write by the initramfs. The firmware partition is named by
/// its label, as Debian's own Raspberry Pi images do, not by PARTUUID: the disk id comes from
/// the recipe, so a slot written from a later release's bundle would name a partition the card
/// does not have. The data partition is `nofail`, so a card whose data partition is damaged
/// still boots and stays reachable. Both wait up to five minutes for udev to name them, as the
/// installed disk's do (`bundle::slot_fstab`): on rpi1's one slow core (QEMU's `raspi0`) udev
/// named the partitions after 30 s had run out, and the node came up with /var/lib/cloudy on
/// its root slot, where an update would have lost its identity and keys.
pub fn fstab() -> String {
    format!(
        "# <file system>  <mount point>  <type>  <options>  <dump>  <pass>\n\
         # / is the slot the Pi firmware booted (README \"Pi slots\").\n\
         LABEL={FIRMWARE_LABEL}  /boot/firmware  vfat  rw,noatime,umask=0077,x-systemd.device-timeout=300s  0  2\n\
         LABEL={DATA_LABEL}  /var/lib/cloudy  ext4  rw,noatime,nofail,x-systemd.device-timeout=300s,x-systemd.before=cloudy-agent.service,x-systemd.before=cloudy-grow-root.service  0  2\n"
    )
}

/// The disk's layout: MBR, FAT at 4 MiB, slot A, slot B, data.
struct Partitions {
    fat_bytes: u64,
    slot_bytes: u64,
    data_bytes: u64,
}

impl Partitions {
    fn sized(board: &Board, sd: &Sdcard, root: &Path) -> Result<Partitions, SdError> {
        // Room for the first boot's writes (a slot does not grow: both have the same size).
        let need = (tree_bytes(root) * 5 / 4 + 256 * MIB).div_ceil(ALIGN) * ALIGN;
        let slot_bytes = u64::from(sd.slot_mib) * MIB;
        if need > slot_bytes {
            return Err(SdError::SlotTooSmall {
                board: board.name.clone(),
                need_mib: need / MIB,
                slot_mib: sd.slot_mib,
            });
        }
        Ok(Partitions {
            fat_bytes: u64::from(sd.boot_mib) * MIB,
            slot_bytes,
            data_bytes: u64::from(sd.data_mib) * MIB,
        })
    }

    fn fat_start(&self) -> u64 {
        ALIGN
    }

    fn slot_start(&self, bootname: char) -> u64 {
        let a = self.fat_start() + self.fat_bytes;
        if bootname == 'B' {
            a + self.slot_bytes
        } else {
            a
        }
    }

    fn data_start(&self) -> u64 {
        self.slot_start('B') + self.slot_bytes
    }

    fn total(&self) -> u64 {
        self.data_start() + self.data_bytes
    }

    fn sfdisk_script(&self, disk_id: u32) -> String {
        let mut s = format!(
            "label: dos\nlabel-id: 0x{:08x}\nunit: sectors\n\nstart={}, size={}, type=c, bootable\n",
            disk_id,
            self.fat_start() / 512,
            self.fat_bytes / 512,
        );
        for (start, bytes) in [
            (self.slot_start('A'), self.slot_bytes),
            (self.slot_start('B'), self.slot_bytes),
            (self.data_start(), self.data_bytes),
        ] {
            s.push_str(&format!(
                "start={}, size={}, type=83\n",
                start / 512,
                bytes / 512
            ));
        }
        s
    }
}

/// The FAT partition's image, filled from `fat_dir` with mtools.
fn make_fat(
    inp: &Inputs,
    fat_dir: &Path,
    fat_img: &Path,
    fat_bytes: u64,
    log: &Log,
    step: &Step,
) -> Result<(), SdError> {
    let epoch = inp.epoch.to_string();
    let mut c = Command::new("mkfs.vfat");
    c.args([
        "-C",
        "-F",
        "32",
        "-n",
        FIRMWARE_LABEL,
        "--invariant",
        "-i",
        &format!("{:08x}", inp.disk_id),
    ])
    .arg(fat_img)
    .arg((fat_bytes / 1024).to_string())
    .env("SOURCE_DATE_EPOCH", &epoch);
    cmd::run(&mut c, log, step)?;
    cache::set_tree_mtime(fat_dir, inp.epoch).map_err(|e| io("setting times under", fat_dir, e))?;
    let mut entries: Vec<PathBuf> = fs::read_dir(fat_dir)
        .map_err(|e| io("reading", fat_dir, e))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    let mut c = Command::new("mcopy");
    c.args(["-s", "-m", "-i"])
        .arg(fat_img)
        .args(&entries)
        .arg("::/")
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("SOURCE_DATE_EPOCH", &epoch);
    cmd::run(&mut c, log, step)?;
    Ok(())
}

/// An ext4 image labelled `label`, filled from `dir` by `mke2fs -d` (empty without one). Its
/// UUID comes from the disk id and `salt`, so each filesystem of the card has its own, and the
/// same recipe gives the same image.
#[allow(clippy::too_many_arguments)]
fn make_ext4(
    inp: &Inputs,
    dir: Option<&Path>,
    img: &Path,
    label: &str,
    bytes: u64,
    salt: u32,
    log: &Log,
    step: &Step,
) -> Result<(), SdError> {
    let uuid = if salt == 0 {
        uuid_from(inp.disk_id)
    } else {
        uuid_from(inp.disk_id ^ salt.rotate_left(16))
    };
    let mut c = Command::new("mke2fs");
    c.args([
        "-F",
        "-q",
        "-t",
        "ext4",
        "-L",
        label,
        "-U",
        &uuid,
        "-E",
        &format!("hash_seed={uuid},root_owner=0:0"),
    ]);
    if let Some(dir) = dir {
        c.arg("-d").arg(dir);
    }
    c.arg(img)
        .arg(format!("{}k", bytes / 1024))
        .env("E2FSPROGS_FAKE_TIME", inp.epoch.to_string());
    cmd::run(&mut c, log, step)?;
    Ok(())
}

/// Partitions a file of the disk's size under the temporary name, copies the partitions'
/// images in at their offsets, then renames it to `out`.
fn write_disk(
    disk_id: u32,
    parts: &Partitions,
    images: &[(&Path, u64)],
    out: &Path,
    log: &Log,
) -> Result<(), SdError> {
    let tmp = cache::tmp_path(out);
    let _ = fs::remove_file(&tmp);
    fs::File::create(&tmp)
        .and_then(|f| f.set_len(parts.total()))
        .map_err(|e| io("creating", &tmp, e))?;
    let mut c = Command::new("sfdisk");
    c.args(["--no-reread", "--no-tell-kernel", "-q"]).arg(&tmp);
    sfdisk(&mut c, &parts.sfdisk_script(disk_id), log)?;
    for (img, offset) in images {
        copy_sparse(img, &tmp, *offset).map_err(|e| io("writing", &tmp, e))?;
    }
    fs::rename(&tmp, out).map_err(|e| io("renaming", &tmp, e))?;
    Ok(())
}

/// Where an SD image's FAT partition starts, and the MBR disk id (PARTUUID prefix).
pub fn layout(img: &Path) -> Result<(u32, u64), SdError> {
    let mut mbr = [0u8; 512];
    let mut f = std::fs::File::open(img).map_err(|e| io("opening", img, e))?;
    f.read_exact(&mut mbr).map_err(|e| io("reading", img, e))?;
    let disk_id = u32::from_le_bytes(mbr[440..444].try_into().expect("4 bytes"));
    let p1 = &mbr[446..462];
    let start = u32::from_le_bytes(p1[8..12].try_into().expect("4 bytes")) as u64;
    if mbr[510..] != [0x55, 0xaa] || !matches!(p1[4], 0x0b | 0x0c) || start == 0 {
        return Err(SdError::NoFat(img.display().to_string()));
    }
    Ok((disk_id, start * 512))
}

/// Every path on an SD image's FAT partition, with the text of its `.txt` files: what
/// [`pi_boot::choose`] reads.
pub fn read_fat(img: &Path, log: &Log) -> Result<pi_boot::Fat, SdError> {
    let (_, off) = layout(img)?;
    let spec = format!("{}@@{off}", img.display());
    let mut c = Command::new("mdir");
    c.args(["-/", "-b", "-i", &spec, "::/"])
        .env("MTOOLS_SKIP_CHECK", "1");
    let listing = cmd::run(&mut c, log, &Step::hidden())?;
    let mut files = vec![];
    for line in listing.lines() {
        let Some(path) = line.trim().strip_prefix("::/") else {
            continue;
        };
        let text = if path.to_ascii_lowercase().ends_with(".txt") {
            let mut c = Command::new("mtype");
            c.args(["-i", &spec, &format!("::/{path}")])
                .env("MTOOLS_SKIP_CHECK", "1");
            Some(cmd::run(&mut c, log, &Step::hidden())?)
        } else {
            None
        };
        files.push((path.trim_end_matches('/').to_string(), text));
    }
    Ok(pi_boot::Fat::new(files))
}

/// What the Pi firmware would boot from `img` as `model` ([`pi_boot::choose`]): the kernel and
/// initrd copied into `dir`, and the command line, with the board's serial console swapped
/// for `console` when given (QEMU's `virt` has no mini UART).
pub fn boot_files(
    img: &Path,
    board: &Board,
    model: pi_boot::Model,
    console: Option<&str>,
    dir: &Path,
    log: &Log,
) -> Result<(PathBuf, PathBuf, String), SdError> {
    let fat = read_fat(img, log)?;
    let choice = pi_boot::choose(&fat, model, false).map_err(|e| SdError::Card {
        path: img.display().to_string(),
        problem: e.to_string(),
        fix: "rebuild the image, or repair its firmware partition".into(),
    })?;
    let Some(initrd) = choice.initrd.clone() else {
        return Err(SdError::Card {
            path: img.display().to_string(),
            problem: format!("config.txt names no initramfs for {}", choice.kernel),
            fix: "the slot's initramfs mounts the root: rebuild the image".into(),
        });
    };
    fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
    let (kernel_out, initrd_out) = (dir.join("vmlinuz"), dir.join("initrd.img"));
    let (_, off) = layout(img)?;
    let spec = format!("{}@@{off}", img.display());
    for (from, to) in [(&choice.kernel, &kernel_out), (&initrd, &initrd_out)] {
        let _ = fs::remove_file(to);
        let mut c = Command::new("mcopy");
        c.args(["-n", "-i", &spec, &format!("::/{from}")])
            .arg(to)
            .env("MTOOLS_SKIP_CHECK", "1");
        cmd::run(&mut c, log, &Step::hidden())?;
    }
    let cmdline = match console {
        Some(c) => choice
            .cmdline
            .split_whitespace()
            .map(|w| {
                if w == format!("console={}", board.console) {
                    format!("console={c}")
                } else {
                    w.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
        None => choice.cmdline,
    };
    Ok((kernel_out, initrd_out, cmdline))
}

/// Copies `names` (globs allowed) from an SD image's FAT partition into `dir`.
pub fn extract(img: &Path, names: &[&str], dir: &Path, log: &Log) -> Result<(), SdError> {
    let (_, off) = layout(img)?;
    let spec = format!("{}@@{off}", img.display());
    for n in names {
        let mut c = Command::new("mcopy");
        c.args(["-n", "-i", &spec, &format!("::/{n}")])
            .arg(dir)
            .env("MTOOLS_SKIP_CHECK", "1");
        cmd::run(&mut c, log, &Step::hidden())?;
    }
    Ok(())
}

fn sfdisk(c: &mut Command, script: &str, log: &Log) -> Result<(), SdError> {
    log.line(&format!("$ {} <<< {script:?}", cmd::describe(c)));
    let mut child = c
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| CmdError::Spawn {
            program: "sfdisk".into(),
            source,
        })?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| io("writing to", Path::new("sfdisk"), e))?;
    let out = child
        .wait_with_output()
        .map_err(|e| io("waiting for", Path::new("sfdisk"), e))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    log.line(&text);
    if !out.status.success() {
        return Err(CmdError::Failed {
            command: "sfdisk".into(),
            status: out.status.to_string(),
            tail: text,
        }
        .into());
    }
    Ok(())
}

/// Copies `src` into `dst` at `offset`, seeking over all-zero blocks so the image stays sparse.
fn copy_sparse(src: &Path, dst: &Path, offset: u64) -> std::io::Result<()> {
    let mut inp = fs::File::open(src)?;
    let mut out = fs::OpenOptions::new().write(true).open(dst)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = offset;
    loop {
        let n = inp.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for chunk in buf[..n].chunks(4096) {
            if chunk.iter().any(|&b| b != 0) {
                out.seek(SeekFrom::Start(pos))?;
                out.write_all(chunk)?;
            }
            pos += chunk.len() as u64;
        }
    }
    out.sync_all()
}

/// Bytes of all files under `root`, plus a block per entry for metadata.
fn tree_bytes(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            total += 4096;
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total += m.len().div_ceil(4096) * 4096;
            }
        }
    }
    total
}

/// A fixed filesystem UUID derived from the disk id: the same recipe gives the same image.
fn uuid_from(disk_id: u32) -> String {
    let h = cache::sha256_bytes(&disk_id.to_le_bytes());
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn write(p: &Path, s: &str) -> Result<(), SdError> {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).map_err(|e| io("creating", d, e))?;
    }
    fs::write(p, s).map_err(|e| io("writing", p, e))
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> SdError {
    SdError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_names_root_by_partuuid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("hardware");
        let (b, _) = Board::load(&root.join("rpi3.toml")).unwrap();
        let c = cmdline(&b, 0x1234abcd, &b.console);
        assert!(c.contains("root=PARTUUID=1234abcd-02"), "{c}");
        assert!(c.contains("console=ttyS1,115200"), "{c}");
        assert!(c.ends_with("cma=64M"), "{c}");
        assert!(c.contains(" rauc.slot=A "), "{c}");
        let b_line = slot_cmdline(&b, 0x1234abcd, &b.console, 'B');
        assert!(
            b_line.contains("root=PARTUUID=1234abcd-03") && b_line.contains(" rauc.slot=B "),
            "{b_line}"
        );
        assert_eq!(uuid_from(7), uuid_from(7));
        assert_eq!(uuid_from(7).len(), 36);
    }

    /// Two equal root slots and the data partition after the FAT one, 4 MiB aligned; the root
    /// is not pinned in fstab (it is whichever slot booted), the data partition is by label.
    #[test]
    fn two_slots_and_a_data_partition() {
        let hw = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("hardware");
        let (b, _) = Board::load(&hw.join("rpi3.toml")).unwrap();
        let sd = b.sdcard.clone().unwrap();
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f"), vec![1u8; 4096]).unwrap();
        let p = Partitions::sized(&b, &sd, d.path()).unwrap();
        assert_eq!(p.slot_start('A'), 4 * MIB + 256 * MIB);
        assert_eq!(p.slot_start('B') - p.slot_start('A'), 2560 * MIB);
        assert_eq!(p.data_start() - p.slot_start('B'), 2560 * MIB);
        assert_eq!(p.total(), p.data_start() + 256 * MIB);
        let script = p.sfdisk_script(0xabcd);
        assert_eq!(script.matches("type=83").count(), 3, "{script}");
        let small = Sdcard {
            slot_mib: 100,
            ..sd.clone()
        };
        let big = d.path().join("big");
        fs::File::create(&big).unwrap().set_len(200 * MIB).unwrap();
        assert!(matches!(
            Partitions::sized(&b, &small, d.path()),
            Err(SdError::SlotTooSmall { .. })
        ));
        let t = fstab();
        assert!(
            !t.lines()
                .filter(|l| !l.starts_with('#'))
                .any(|l| l.split_whitespace().nth(1) == Some("/")),
            "{t}"
        );
        assert!(
            t.contains("LABEL=cloudy-data  /var/lib/cloudy  ext4"),
            "{t}"
        );
        assert!(t.contains("LABEL=RASPIFIRM  /boot/firmware  vfat"), "{t}");
        // A slow card's udev names its partitions late: each mount waits as long as the
        // installed disk's.
        for l in t.lines().filter(|l| l.starts_with("LABEL=")) {
            assert!(l.contains("x-systemd.device-timeout=300s"), "{l}");
        }
        let conf = system_conf("rpi3");
        for want in [
            "compatible=cloudy-rpi3",
            "bootloader=custom",
            "bootloader-custom-backend=/usr/lib/cloudy/rauc-pi-boot",
            "device=/dev/disk/by-label/cloudy-b",
            "bootname=B",
        ] {
            assert!(conf.contains(want), "{want}: {conf}");
        }
    }

    #[test]
    fn sparse_copy_keeps_data_at_offset() {
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("s"), d.path().join("d"));
        let mut data = vec![0u8; 3 * 4096];
        data[4096] = 9;
        fs::write(&src, &data).unwrap();
        fs::File::create(&dst)
            .unwrap()
            .set_len(8192 + data.len() as u64)
            .unwrap();
        copy_sparse(&src, &dst, 8192).unwrap();
        let out = fs::read(&dst).unwrap();
        assert_eq!(out[8192 + 4096], 9);
        assert_eq!(out.iter().filter(|&&b| b != 0).count(), 1);
    }

    #[test]
    fn mbr_layout_read() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("a.img");
        let mut mbr = vec![0u8; 1024];
        mbr[440..444].copy_from_slice(&0x1234abcdu32.to_le_bytes());
        mbr[446 + 4] = 0x0c;
        mbr[446 + 8..446 + 12].copy_from_slice(&8192u32.to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        fs::write(&img, &mbr).unwrap();
        assert_eq!(layout(&img).unwrap(), (0x1234abcd, 8192 * 512));
        fs::write(&img, vec![0u8; 1024]).unwrap();
        assert!(layout(&img).is_err());
    }
}
