//! SD card images without loop mounts: an MBR on a plain file (sfdisk), a FAT firmware
//! partition filled with mtools, an ext4 root filled by `mke2fs -d`, copied in at their offsets.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::board::{Board, Sdcard};
use crate::cache;
use crate::cmd::{self, CmdError, Log};
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
    /// MBR disk identifier; partitions are `<id>-01` (firmware) and `<id>-02` (root).
    pub disk_id: u32,
}

pub fn partuuid(disk_id: u32, part: u32) -> String {
    format!("{disk_id:08x}-{part:02}")
}

/// Kernel command line in cmdline.txt: the root partition by PARTUUID, the board's consoles.
pub fn cmdline(board: &Board, disk_id: u32, console: &str) -> String {
    let extra = board
        .sdcard
        .as_ref()
        .map(|s| s.cmdline.as_str())
        .unwrap_or("");
    format!(
        "console=tty0 console={console} root=PARTUUID={} rw rootwait fsck.repair=yes {extra}",
        partuuid(disk_id, 2)
    )
    .trim()
    .to_string()
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

    let parts = Partitions::sized(sd, &root);
    let fat_img = work.join("firmware.vfat");
    let root_img = work.join("root.ext4");
    let _ = fs::remove_file(&fat_img);
    let _ = fs::remove_file(&root_img);
    make_fat(inp, &fat_dir, &fat_img, parts.fat_bytes, log, step)?;
    make_ext4(inp, &root, &root_img, parts.root_bytes, log, step)?;
    write_disk(inp.disk_id, &parts, &fat_img, &root_img, out, log)?;
    for p in [&fat_img, &root_img] {
        let _ = fs::remove_file(p);
    }
    let _ = fs::remove_dir_all(&root);
    Ok(fat_dir)
}

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

/// Firmware partition: what raspi-firmware laid out, our cmdline.txt, and the user's seed.
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
    write(
        &fat_dir.join("cmdline.txt"),
        &(cmdline(board, inp.disk_id, &board.console) + "\n"),
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

/// Root: the cached rootfs with the Cloudy layer over it; /boot/firmware is a mount point.
fn stage_root(inp: &Inputs, root: &Path, log: &Log, step: &Step) -> Result<(), SdError> {
    cache::remove_any(root).map_err(|e| io("removing", root, e))?;
    cmd::run(
        Command::new("cp")
            .arg("-a")
            .arg("--reflink=auto")
            .arg(inp.rootfs)
            .arg(root),
        log,
        step,
    )?;
    cmd::run(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", inp.layer.display()))
            .arg(root),
        log,
        step,
    )?;
    let fw_in_root = root.join("boot/firmware");
    cache::remove_any(&fw_in_root).map_err(|e| io("removing", &fw_in_root, e))?;
    fs::create_dir_all(&fw_in_root).map_err(|e| io("creating", &fw_in_root, e))?;
    write(
        &root.join("etc/fstab"),
        &format!(
            "# <file system>  <mount point>  <type>  <options>  <dump>  <pass>\nPARTUUID={}  /  ext4  rw,noatime  0  1\nPARTUUID={}  /boot/firmware  vfat  rw,noatime,umask=0077  0  2\n",
            partuuid(inp.disk_id, 2),
            partuuid(inp.disk_id, 1)
        ),
    )
}

/// The disk's layout: MBR, FAT at 4 MiB, root after it.
struct Partitions {
    fat_bytes: u64,
    root_bytes: u64,
}

impl Partitions {
    fn sized(sd: &Sdcard, root: &Path) -> Partitions {
        // Room for the first boot's writes; the root grows to fill the card on first boot anyway.
        let root_bytes = (tree_bytes(root) * 5 / 4 + 256 * MIB).div_ceil(ALIGN) * ALIGN;
        Partitions {
            fat_bytes: u64::from(sd.boot_mib) * MIB,
            root_bytes,
        }
    }

    fn fat_start(&self) -> u64 {
        ALIGN
    }

    fn root_start(&self) -> u64 {
        self.fat_start() + self.fat_bytes
    }

    fn total(&self) -> u64 {
        self.root_start() + self.root_bytes
    }

    fn sfdisk_script(&self, disk_id: u32) -> String {
        format!(
            "label: dos\nlabel-id: 0x{:08x}\nunit: sectors\n\nstart={}, size={}, type=c, bootable\nstart={}, size={}, type=83\n",
            disk_id,
            self.fat_start() / 512,
            self.fat_bytes / 512,
            self.root_start() / 512,
            self.root_bytes / 512
        )
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
        "RASPIFIRM",
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

/// The root partition's image, filled from `root` by `mke2fs -d`.
fn make_ext4(
    inp: &Inputs,
    root: &Path,
    root_img: &Path,
    root_bytes: u64,
    log: &Log,
    step: &Step,
) -> Result<(), SdError> {
    let uuid = uuid_from(inp.disk_id);
    let mut c = Command::new("mke2fs");
    c.args([
        "-F",
        "-q",
        "-t",
        "ext4",
        "-L",
        "RASPIROOT",
        "-U",
        &uuid,
        "-E",
        &format!("hash_seed={uuid},root_owner=0:0"),
    ])
    .arg("-d")
    .arg(root)
    .arg(root_img)
    .arg(format!("{}k", root_bytes / 1024))
    .env("E2FSPROGS_FAKE_TIME", inp.epoch.to_string());
    cmd::run(&mut c, log, step)?;
    Ok(())
}

/// Partitions a file of the disk's size under the temporary name, copies the two images in at
/// their offsets, then renames it to `out`.
fn write_disk(
    disk_id: u32,
    parts: &Partitions,
    fat_img: &Path,
    root_img: &Path,
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
    copy_sparse(fat_img, &tmp, parts.fat_start()).map_err(|e| io("writing", &tmp, e))?;
    copy_sparse(root_img, &tmp, parts.root_start()).map_err(|e| io("writing", &tmp, e))?;
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
        assert_eq!(uuid_from(7), uuid_from(7));
        assert_eq!(uuid_from(7).len(), 36);
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
