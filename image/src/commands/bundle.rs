//! `cloudy-image bundle --board B`: an update for installed nodes of board B.
//!
//! The build's own stages up to customise (the cached rootfs, the agent, the Cloudy layer with
//! this release's `release.json`), then:
//! - the slot's root filesystem: rootfs + layer as one ext4 image (`mke2fs -d`, no mounts),
//!   with the installed layout's mounts in its fstab (the boot and data partitions);
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
use crate::board::{Format, InitramfsPolicy};
use crate::cache;
use crate::cmd;
use crate::progress::{fmt_secs, fmt_size, table};
use crate::stages::release;

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
    check_board(&b)?;
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
        stage_slot(&rootfs.dir, &b.layer(), &slot, &b.log, step)?;
        let bytes = slot_image_bytes(tree_bytes(&slot));
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
        Ok::<_, anyhow::Error>(((), format!("ext4 image {}", fmt_size(bytes))))
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

/// Bundles are for installed PCs: their slots boot with the rootfs's own initramfs, which must
/// find a disk. SD boards have their own slot backend; a network-boot initramfs has no
/// storage drivers.
fn check_board(b: &Build) -> Result<()> {
    let board = &b.board;
    if board.format == Format::Sdcard {
        bail!("board {}: bundles for SD boards need the Raspberry Pi slot backend, not this A/B layout\n  fix: bundle a PC board (pc-686-pae, pc-amd64, pc-i386)", board.name);
    }
    if board.initramfs == Some(InitramfsPolicy::Netboot) || board.initramfs_modules.is_some() {
        bail!("board {}: its initramfs has no storage drivers (network boot), so a slot holding it would not boot from disk\n  fix: bundle the PC board of the same kernel (e.g. pc-686-pae for pxe-686-pae nodes)", board.name);
    }
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
