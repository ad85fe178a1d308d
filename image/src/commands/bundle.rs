//! `cloudy-image bundle --board B`: an update for installed nodes of board B.
//!
//! The build's own stages up to customise (the cached rootfs, the agent, the Cloudy layer with
//! this release's `release.json`), then:
//! - the slot's root filesystem: rootfs + layer as one ext4 image (`mke2fs -d`, no mounts),
//!   laid out for the board's kind of slot ([`SlotKind`]): an installed PC or PXE node's (the
//!   installed layout's fstab: boot and data partitions; a PXE board's network-only initramfs
//!   rebuilt with every storage driver), or a Raspberry Pi card's (the same tree as the image's
//!   slot A, `sdcard::slot_root`: its kernel, initramfs and device trees inside, which the card's
//!   RAUC backend copies to the FAT partition's slot directory once RAUC has written the slot);
//! - a RAUC bundle of it (`rauc bundle`, verity format, CMS-signed with `--rauc-key`) whose
//!   compatible string is `cloudy-<board>` and whose version is the release;
//! - `<board>.manifest.json` beside it: board, version, the bundle's name, sha256 and size,
//!   channel and earliest version, signed by each `--key` (more signers add theirs with
//!   `cloudy-image sign`).
//!
//! Outputs land in OUT/update/, a directory that can be served as the seed's `[update] url`
//! as it is. Each is written under a temporary name and renamed when complete.
//!
//! The slot holds an ext4 image rather than a tar: RAUC copies an image block for block into
//! the slot, and a tar would need mkfs and file-by-file extraction on the node (README
//! "Updates" has the measured sizes).

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use cloudy_model::update::{self, Channel, Manifest, SignedManifest, Version};

use super::build::Build;
use super::options::Options;
use crate::board::{Board, Format, InitramfsPolicy};
use crate::cache;
use crate::cmd;
use crate::progress::{fmt_secs, fmt_size, table};
use crate::stages::{release, sdcard};

const MIB: u64 = 1 << 20;

/// What to bundle and how to sign it (the command line, checked).
pub struct Request {
    pub rauc_key: PathBuf,
    pub rauc_cert: PathBuf,
    pub keys: Vec<PathBuf>,
    pub channel: Channel,
    pub min_version: Option<String>,
}

/// What `bundle` wrote.
#[derive(Debug)]
pub struct Made {
    pub bundle: PathBuf,
    pub manifest: PathBuf,
    pub signed: SignedManifest,
}

/// What kind of slot a board's nodes update, which decides what goes into the slot's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// An installed PC or PXE node (install-to-disk, README "Updates"): GRUB boots the slot's
    /// own /vmlinuz and /initrd.img. `disk_initramfs`: the board's initramfs cannot find a disk
    /// (a PXE board's has network drivers only), so the slot gets one built with every storage
    /// driver.
    Installed { disk_initramfs: bool },
    /// A Raspberry Pi card (README "Pi slots"): the slot's kernel files go to the FAT partition
    /// through `/usr/lib/cloudy/rauc-pi-boot`, and the image must fit the card's slot.
    Pi { slot_mib: u32 },
}

impl SlotKind {
    pub fn of(board: &Board) -> SlotKind {
        match (&board.format, &board.sdcard) {
            (Format::Sdcard, Some(sd)) => SlotKind::Pi {
                slot_mib: sd.slot_mib,
            },
            _ => SlotKind::Installed {
                disk_initramfs: board.initramfs == Some(InitramfsPolicy::Netboot)
                    || board.initramfs_modules.is_some(),
            },
        }
    }
}

/// The bundle's file name for a board and release.
pub fn bundle_name(board: &str, version: &str) -> String {
    format!("cloudy-{board}-{version}.raucb")
}

/// The manifest's file name: one per board in an update directory, as nodes fetch it.
pub fn manifest_name(board: &str) -> String {
    format!("{board}.manifest.json")
}

/// "The release before": the last non-zero part one lower, the parts after it zero
/// (1.0.1 -> 1.0.0, 1.2.0 -> 1.1.0, 2.0 -> 1.0, 0 -> 0).
pub fn release_before(v: &str) -> String {
    let mut parts: Vec<u32> = v.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    if let Some(i) = parts.iter().rposition(|p| *p > 0) {
        parts[i] -= 1;
        for p in &mut parts[i + 1..] {
            *p = 0;
        }
    }
    parts
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// The slot's /etc/fstab on the installed layout: the slot itself is the root (named on the
/// kernel command line, mounted read-write by the initramfs); the boot partition (GRUB and
/// its environment, which RAUC switches) and the data partition (`/var/lib/cloudy`: the
/// node's identity, keys and the services' data, kept across slots) by filesystem label (the
/// installed disk has an MBR table: no partition labels). Both
/// `nofail`, so a node with a damaged partition still boots and stays reachable; the data
/// partition is mounted before the agent starts, which would otherwise make a new identity.
/// Five minutes for udev to name them: 30 s ran out under QEMU's TCG (udev started 48 s in).
pub fn slot_fstab() -> String {
    format!(
        "# Written by cloudy-image bundle (the installed A/B layout, README \"Updates\").\n\
         LABEL=cloudy-boot  {}  ext4  defaults,nofail,x-systemd.device-timeout=300s  0  2\n\
         LABEL=cloudy-data  /var/lib/cloudy  ext4  defaults,nofail,x-systemd.device-timeout=300s,x-systemd.before=cloudy-agent.service  0  2\n",
        release::BOOT_MOUNT
    )
}

/// RAUC's manifest inside the bundle.
pub fn rauc_manifest(board: &str, version: &str, image: &str) -> String {
    format!(
        "[update]\ncompatible={}\nversion={version}\n\n[bundle]\nformat=verity\n\n[image.rootfs]\nfilename={image}\n",
        release::compatible(board)
    )
}

pub fn run(opts: &Options, req: &Request) -> Result<Made> {
    let started = std::time::Instant::now();
    for f in [&req.rauc_key, &req.rauc_cert]
        .into_iter()
        .chain(req.keys.iter())
    {
        if !f.is_file() {
            bail!(
                "{}: no such file\n  fix: make keys with `cloudy-image keys new` (--rauc for RAUC's)",
                f.display()
            );
        }
    }
    // Read every key before the long part: a wrong file fails in a second, not after minutes.
    let keys = req
        .keys
        .iter()
        .map(|k| super::sign::read_key(k))
        .collect::<Result<Vec<_>>>()?;
    let tool = |program, package| crate::tools::Tool { program, package };
    crate::tools::check(&[
        tool("rauc", "rauc"),
        tool("mke2fs", "e2fsprogs"),
        tool("mksquashfs", "squashfs-tools"),
    ])?;
    let b = Build::start(opts)?;
    let kind = SlotKind::of(&b.board);
    let version = b.release().to_string();
    let min_version = req
        .min_version
        .clone()
        .unwrap_or_else(|| release_before(&version));
    let min: Version = min_version.parse().map_err(|_| {
        anyhow::anyhow!("--min-version {min_version:?} is not a release version\n  fix: e.g. --min-version 1.0.0")
    })?;
    if min > version.parse::<Version>().expect("checked by Build::start") {
        bail!("--min-version {min_version} is above the release {version}\n  fix: give the earliest release this one may update");
    }
    if b.board.is_foreign() {
        crate::binfmt::ensure(b.board.arch)?;
    }
    let (rootfs, _base_sq, agent) = b.rootfs_and_agent()?;
    b.customise(&rootfs, &agent)?;

    let out_dir = opts.out.join("update");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let work = b.work.join("bundle");
    let slot = b.work.join("slot");
    let image = work.join("rootfs.ext4");
    b.rep.stage("slot", |step| {
        cache::remove_any(&work).and_then(|()| fs::create_dir_all(&work))?;
        match kind {
            SlotKind::Installed { disk_initramfs } => {
                stage_slot(&rootfs.dir, &b.layer(), &slot, &b.log, step)?;
                if disk_initramfs {
                    rebuild_initramfs(&slot, &b.log, step)?;
                }
            }
            SlotKind::Pi { .. } => {
                stage_pi_slot(&rootfs.dir, &b.layer(), &b.board, &slot, &b.log, step)?;
            }
        }
        let bytes = slot_image_bytes(tree_bytes(&slot));
        if let SlotKind::Pi { slot_mib } = kind {
            check_fits(&b.board.name, bytes, slot_mib)?;
        }
        make_ext4(
            &slot,
            &image,
            bytes,
            b.epoch(),
            &b.board.name,
            &version,
            &b.log,
            step,
        )?;
        let _ = cache::remove_any(&slot);
        let note = match kind {
            SlotKind::Installed {
                disk_initramfs: true,
            } => " (initramfs for disks)",
            _ => "",
        };
        Ok::<_, anyhow::Error>(((), format!("ext4 image {}{note}", fmt_size(bytes))))
    })?;

    let name = bundle_name(&b.board.name, &version);
    let bundle = out_dir.join(&name);
    b.rep.stage("rauc", |step| {
        fs::write(
            work.join("manifest.raucm"),
            rauc_manifest(&b.board.name, &version, "rootfs.ext4"),
        )?;
        make_bundle(&work, &req.rauc_cert, &req.rauc_key, &bundle, &b.log, step)?;
        let _ = cache::remove_any(&work);
        Ok::<_, anyhow::Error>(((), fmt_size(file_size(&bundle))))
    })?;

    let manifest = out_dir.join(manifest_name(&b.board.name));
    let signed = b.rep.stage("manifest", |_| {
        let mut signed = SignedManifest {
            manifest: Manifest {
                board: b.board.name.clone(),
                version: version.parse().expect("checked"),
                bundle: name.clone(),
                sha256: cache::sha256_file(&bundle)?,
                size: file_size(&bundle),
                channel: req.channel,
                min_version: min.clone(),
            },
            signatures: vec![],
        };
        for k in &keys {
            signed.sign(k);
        }
        cache::write_atomic(&manifest, format!("{}\n", signed.to_json()).as_bytes())?;
        let note = format!("{} signature(s), {}", signed.signatures.len(), req.channel);
        Ok::<_, anyhow::Error>((signed, note))
    })?;

    let rows = vec![
        vec![bundle.display().to_string(), fmt_size(signed.manifest.size)],
        vec![manifest.display().to_string(), String::new()],
    ];
    println!(
        "\nBundle for {} release {version} (updates {} and later, channel {}) in {}\n\n{}",
        b.board.name,
        signed.manifest.min_version,
        req.channel,
        fmt_secs(started.elapsed().as_secs_f64()),
        table(&["output", "size"], &rows)
    );
    if signed.signatures.is_empty() {
        println!("The manifest is not signed yet: nodes install nothing until K of the recipe's keys sign it\n  (cloudy-image sign --key NAME.key {}).", manifest.display());
    }
    Ok(Made {
        bundle,
        manifest,
        signed,
    })
}

/// A slot image bigger than the card's slot could not be written: refused before RAUC is run.
fn check_fits(board: &str, bytes: u64, slot_mib: u32) -> Result<()> {
    if bytes > u64::from(slot_mib) * MIB {
        bail!(
            "board {board}: the slot's image is {} MiB but a card's root slot has {slot_mib} MiB\n  fix: drop packages from the recipe; cards already written keep their slot size, so raising `sdcard.slot_mib` in hardware/{board}.toml helps only new cards",
            bytes.div_ceil(MIB)
        );
    }
    Ok(())
}

/// The Pi slot's tree: what the image's slot A holds (`sdcard::slot_root`), with an empty
/// /var/lib/cloudy (the data partition is mounted there), checked for the files the card's
/// backend copies to the FAT partition when it makes the slot primary: a kernel, the initramfs
/// of that kernel, and the board's device trees. A bundle without them would be refused on the
/// node only after the slot was written.
fn stage_pi_slot(
    rootfs: &Path,
    layer: &Path,
    board: &Board,
    slot: &Path,
    log: &cmd::Log,
    step: &crate::progress::Step,
) -> Result<()> {
    sdcard::slot_root(rootfs, layer, &board.name, slot, log, step)?;
    let state = slot.join("var/lib/cloudy");
    cache::remove_any(&state)?;
    fs::create_dir_all(&state)?;
    let dtbs = board
        .sdcard
        .as_ref()
        .map(|s| s.dtbs.as_slice())
        .unwrap_or(&[]);
    pi_boot_files(slot, dtbs).map_err(|why| {
        anyhow::anyhow!("board {}: the slot has no {why}, which rauc-pi-boot copies to the card's FAT partition\n  fix: check `kernel_package` and `sdcard.dtbs` in hardware/{}.toml", board.name, board.name)
    })?;
    Ok(())
}

/// What the Pi backend takes from a slot, as it picks it: the newest `boot/vmlinuz-VER`,
/// `boot/initrd.img-VER`, and each of `dtbs` somewhere under `usr/lib/linux-image-VER/`.
/// Returns VER, or what is missing.
pub fn pi_boot_files(slot: &Path, dtbs: &[String]) -> std::result::Result<String, String> {
    let boot = slot.join("boot");
    let mut versions: Vec<String> = fs::read_dir(&boot)
        .map_err(|_| "/boot".to_string())?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(String::from)
        })
        .collect();
    // `sort -V` in the backend; versions of one kernel package differ in their numbers.
    versions.sort_by_key(|v| version_key(v));
    let ver = versions.pop().ok_or("kernel (/boot/vmlinuz-*)")?;
    if !boot.join(format!("initrd.img-{ver}")).is_file() {
        return Err(format!("initramfs /boot/initrd.img-{ver}"));
    }
    let tree = slot.join(format!("usr/lib/linux-image-{ver}"));
    let mut found = std::collections::HashSet::new();
    let mut stack = vec![tree];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                found.insert(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    match dtbs.iter().find(|d| !found.contains(*d)) {
        Some(d) => Err(format!("device tree {d} under /usr/lib/linux-image-{ver}")),
        None => Ok(ver),
    }
}

/// A kernel version's numbers in order, for comparing versions as `sort -V` does.
fn version_key(v: &str) -> Vec<(u64, String)> {
    let mut key = vec![];
    let mut rest = v;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (num, tail) = rest.split_at(digits);
        let letters = tail.len() - tail.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
        let (text, tail) = tail.split_at(letters);
        key.push((num.parse().unwrap_or(0), text.to_string()));
        rest = tail;
    }
    key
}

/// The slot's initramfs rebuilt with initramfs-tools' default, MODULES=most (every storage
/// driver), in place of the board's network-only one: an installed PXE node boots its slot from
/// a disk. In a private mount namespace, so the /proc, /sys and /dev the chroot needs go away
/// with it.
fn rebuild_initramfs(slot: &Path, log: &cmd::Log, step: &crate::progress::Step) -> Result<()> {
    for f in [
        "etc/initramfs-tools/conf.d/cloudy-modules.conf",
        "usr/share/initramfs-tools/modules.d/cloudy",
    ] {
        cache::remove_any(&slot.join(f))?;
    }
    cmd::run(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-ec"])
            .arg(
                "mount -t proc proc \"$1/proc\"; mount --rbind /sys \"$1/sys\"; \
                 mount --rbind /dev \"$1/dev\"; chroot \"$1\" update-initramfs -u -k all",
            )
            .arg("sh")
            .arg(slot),
        log,
        step,
    )
    .context(
        "rebuilding the slot's initramfs for booting from a disk (update-initramfs in a chroot)",
    )?;
    Ok(())
}

fn stage_slot(
    rootfs: &Path,
    layer: &Path,
    slot: &Path,
    log: &cmd::Log,
    step: &crate::progress::Step,
) -> Result<()> {
    cache::remove_any(slot)?;
    cmd::run(
        Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(rootfs)
            .arg(slot),
        log,
        step,
    )?;
    cmd::run(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", layer.display()))
            .arg(slot),
        log,
        step,
    )?;
    fs::write(slot.join("etc/fstab"), slot_fstab())?;
    fs::create_dir_all(slot.join(release::BOOT_MOUNT.trim_start_matches('/')))?;
    fs::create_dir_all(slot.join("var/lib/cloudy"))?;
    Ok(())
}

/// Room for the files and ext4's own metadata and journal (install-to-disk sizes slots for
/// at least this much). The filesystem stays this size in the slot: the rest of the slot is
/// room for a larger next release.
fn slot_image_bytes(tree: u64) -> u64 {
    (tree * 11 / 10 + 80 * MIB).div_ceil(4 * MIB) * 4 * MIB
}

#[allow(clippy::too_many_arguments)]
fn make_ext4(
    slot: &Path,
    image: &Path,
    bytes: u64,
    epoch: u64,
    board: &str,
    version: &str,
    log: &cmd::Log,
    step: &crate::progress::Step,
) -> Result<()> {
    let h = cache::sha256_bytes(format!("{board} {version}").as_bytes());
    let uuid = format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    );
    cmd::run(
        Command::new("mke2fs")
            .args(["-F", "-q", "-t", "ext4", "-L", "cloudy-root", "-U", &uuid])
            .args(["-E", &format!("hash_seed={uuid},root_owner=0:0")])
            .arg("-d")
            .arg(slot)
            .arg(image)
            .arg(format!("{}k", bytes / 1024))
            .env("E2FSPROGS_FAKE_TIME", epoch.to_string()),
        log,
        step,
    )?;
    Ok(())
}

/// `rauc bundle` into a temporary name in the output directory, renamed when complete.
fn make_bundle(
    content: &Path,
    cert: &Path,
    key: &Path,
    out: &Path,
    log: &cmd::Log,
    step: &crate::progress::Step,
) -> Result<()> {
    let tmp = out.with_file_name(format!(
        ".{}.tmp.raucb",
        out.file_name().expect("file").to_string_lossy()
    ));
    let _ = fs::remove_file(&tmp);
    let made = cmd::run(
        Command::new("rauc")
            .arg("bundle")
            .arg(format!("--cert={}", cert.display()))
            .arg(format!("--key={}", key.display()))
            .arg("--mksquashfs-args=-comp zstd -Xcompression-level 15")
            .arg(content)
            .arg(&tmp),
        log,
        step,
    );
    if let Err(e) = made {
        let _ = fs::remove_file(&tmp);
        return Err(e).context("rauc bundle (is --rauc-key the key of --rauc-cert?)");
    }
    // RAUC's own check, with the certificate as the keyring, as the node will do it.
    cmd::run(
        Command::new("rauc")
            .arg("info")
            .arg(format!("--keyring={}", cert.display()))
            .arg(&tmp),
        log,
        step,
    )
    .inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
    .context("rauc info: the new bundle does not verify against --rauc-cert")?;
    fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(())
}

/// What the files under `root` take on disk (allocated blocks, as `du` counts them; a file
/// with several links once) plus an inode each: the measure install-to-disk sizes slots by.
fn tree_bytes(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            total += 256 + m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

fn file_size(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The manifest of a bundle as a node verifies it, for tests and `bundle`'s own check.
pub fn verify_manifest(manifest: &Path, keys: &update::UpdateKeys) -> Result<Manifest> {
    let signed = SignedManifest::parse(&fs::read(manifest)?)?;
    Ok(signed.verify(keys)?.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_before_counts_down_the_last_part() {
        for (v, before) in [
            ("1.0.1", "1.0.0"),
            ("1.2.0", "1.1.0"),
            ("2.0", "1.0"),
            ("1.3.7", "1.3.6"),
            ("0", "0"),
            ("2026.11.29", "2026.11.28"),
        ] {
            assert_eq!(release_before(v), before, "{v}");
        }
    }

    #[test]
    fn names_and_rauc_manifest() {
        assert_eq!(
            bundle_name("pc-amd64", "1.0.1"),
            "cloudy-pc-amd64-1.0.1.raucb"
        );
        assert_eq!(manifest_name("pc-amd64"), "pc-amd64.manifest.json");
        let m = rauc_manifest("pc-amd64", "1.0.1", "rootfs.ext4");
        assert!(
            m.contains("compatible=cloudy-pc-amd64\nversion=1.0.1\n"),
            "{m}"
        );
        assert!(
            m.contains("format=verity") && m.contains("filename=rootfs.ext4"),
            "{m}"
        );
        let f = slot_fstab();
        assert!(f.contains("LABEL=cloudy-data  /var/lib/cloudy"), "{f}");
        assert!(f.contains("LABEL=cloudy-boot  /boot/cloudy"), "{f}");
        assert!(
            !f.lines().any(|l| l.split_whitespace().nth(1) == Some("/")),
            "{f}"
        );
    }

    /// Every board in hardware/ gets a bundle: PCs as they are, PXE boards (installed by the
    /// same installer) with an initramfs for disks, SD boards for their card's slots.
    #[test]
    fn every_board_has_a_slot_kind_and_its_own_compatible() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hardware");
        let mut seen = 0;
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let (board, _) = Board::load(&e.path()).unwrap();
            let kind = SlotKind::of(&board);
            let want = match board.name.split('-').next().unwrap() {
                "pc" => SlotKind::Installed {
                    disk_initramfs: false,
                },
                "pxe" => SlotKind::Installed {
                    disk_initramfs: true,
                },
                _ if board.name.starts_with("rpi") => SlotKind::Pi { slot_mib: 2560 },
                other => panic!("a board of a kind this test does not know: {other}"),
            };
            assert_eq!(kind, want, "{}", board.name);
            let m = rauc_manifest(&board.name, "1.0.1", "rootfs.ext4");
            assert!(
                m.contains(&format!("compatible=cloudy-{}\n", board.name)),
                "{m}"
            );
            seen += 1;
        }
        assert!(seen >= 9, "{seen} boards");
    }

    #[test]
    fn pi_slot_must_fit_the_card() {
        check_fits("rpi3", 2560 * MIB, 2560).unwrap();
        let e = check_fits("rpi3", 2560 * MIB + 1, 2560).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("2561 MiB") && e.contains("hardware/rpi3.toml"),
            "{e}"
        );
    }

    /// The files rauc-pi-boot copies to the FAT partition are checked at bundle time: the
    /// newest kernel as `sort -V` picks it (6.1.0-10 after 6.1.0-9), its initramfs, and the
    /// board's device trees in that kernel's tree.
    #[test]
    fn pi_boot_files_are_those_the_backend_takes() {
        let d = tempfile::tempdir().unwrap();
        let slot = d.path();
        let dtbs = vec!["bcm2837-rpi-3-b.dtb".to_string()];
        let e = pi_boot_files(slot, &dtbs).unwrap_err();
        assert!(e.contains("/boot"), "{e}");
        fs::create_dir_all(slot.join("boot")).unwrap();
        assert!(pi_boot_files(slot, &dtbs).unwrap_err().contains("vmlinuz"));
        for v in ["6.1.0-9-arm64", "6.1.0-10-arm64"] {
            fs::write(slot.join(format!("boot/vmlinuz-{v}")), "k").unwrap();
        }
        fs::write(slot.join("boot/initrd.img-6.1.0-9-arm64"), "i").unwrap();
        let e = pi_boot_files(slot, &dtbs).unwrap_err();
        assert!(e.contains("initrd.img-6.1.0-10-arm64"), "{e}");
        fs::write(slot.join("boot/initrd.img-6.1.0-10-arm64"), "i").unwrap();
        let e = pi_boot_files(slot, &dtbs).unwrap_err();
        assert!(
            e.contains("bcm2837-rpi-3-b.dtb") && e.contains("linux-image-6.1.0-10-arm64"),
            "{e}"
        );
        let tree = slot.join("usr/lib/linux-image-6.1.0-10-arm64/broadcom");
        fs::create_dir_all(&tree).unwrap();
        fs::write(tree.join("bcm2837-rpi-3-b.dtb"), "d").unwrap();
        assert_eq!(pi_boot_files(slot, &dtbs).unwrap(), "6.1.0-10-arm64");
    }

    #[test]
    fn tree_size_counts_blocks_and_hard_links_once() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), vec![1u8; 100_000]).unwrap();
        let one = tree_bytes(d.path());
        fs::hard_link(d.path().join("a"), d.path().join("b")).unwrap();
        assert_eq!(tree_bytes(d.path()), one, "a second link takes no room");
        assert!((100_000..140_000).contains(&one), "{one}");
    }

    /// `rauc bundle` for real (Debian's rauc on the host, ci/deps.sh): a key that is not the
    /// certificate's leaves nothing under the final name (nor a temporary file); the right one
    /// makes a bundle that RAUC verifies against the certificate.
    #[test]
    fn rauc_bundle_is_written_whole_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        let keys = d.path().join("keys");
        super::super::keys::new_rauc_key(&keys, "ours").unwrap();
        super::super::keys::new_rauc_key(&keys, "other").unwrap();
        let content = d.path().join("content");
        fs::create_dir_all(&content).unwrap();
        let mut data = vec![0u8; 256 * 1024];
        getrandom::fill(&mut data).unwrap();
        fs::write(content.join("rootfs.ext4"), &data).unwrap();
        fs::write(
            content.join("manifest.raucm"),
            rauc_manifest("pc-686-pae", "1.0.1", "rootfs.ext4"),
        )
        .unwrap();
        let out_dir = d.path().join("update");
        fs::create_dir_all(&out_dir).unwrap();
        let out = out_dir.join(bundle_name("pc-686-pae", "1.0.1"));
        let (log, step) = (cmd::Log::sink(), crate::progress::Step::hidden());
        let cert = keys.join("ours.cert.pem");
        let e = make_bundle(
            &content,
            &cert,
            &keys.join("other.key.pem"),
            &out,
            &log,
            &step,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("rauc bundle"), "{e:#}");
        let left: Vec<_> = fs::read_dir(&out_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        make_bundle(
            &content,
            &cert,
            &keys.join("ours.key.pem"),
            &out,
            &log,
            &step,
        )
        .unwrap();
        let left: Vec<_> = fs::read_dir(&out_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from(bundle_name("pc-686-pae", "1.0.1"))]
        );
        let info = Command::new("rauc")
            .arg(format!("--keyring={}", cert.display()))
            .arg("info")
            .arg(&out)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&info.stdout);
        assert!(info.status.success(), "{text}");
        assert!(
            text.contains("'cloudy-pc-686-pae'") && text.contains("'1.0.1'"),
            "{text}"
        );
    }
}
