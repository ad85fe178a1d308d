//! What a node reads about its own release and its updates, laid into the Cloudy layer of
//! every image. These files are the interface between the image and the agent's updater
//! (README "Updates"); their shapes are fixed here and nowhere else:
//!
//! - `/usr/lib/cloudy/release.json`: `{"board": "<board>", "version": "<release>"}`: what
//!   this image is, for `cloudy_model::update::offer` (board, downgrade, min_version checks).
//! - `/usr/lib/cloudy/update-keys.json`: `{"threshold": K, "keys": ["<base64 ed25519>", ...]}`:
//!   the community's update keys from the recipe's `[update]`. Absent when the recipe lists
//!   none: then the node takes no updates, and says so.
//! - `/usr/lib/cloudy/rauc/system.conf` (PC boards): RAUC with its GRUB backend, slots
//!   `rootfs.0` (bootname A) and `rootfs.1` (bootname B) by PARTUUID, with `@PTUUID@` where
//!   the disk's identifier goes. install-to-disk fills that in when it lays out the slots and
//!   writes the result to the boot partition (`/boot/cloudy/rauc/system.conf`).
//! - `/etc/rauc/system.conf` (PC boards): a link to `/boot/cloudy/rauc/system.conf`, the same
//!   in every slot, so a slot an update wrote finds the disk's config as the installed one did.
//!   On a live ISO or PXE node nothing is mounted there and the link dangles: the agent takes
//!   an existing system.conf to mean "this node has slots", so a live node only reports a newer
//!   release, never downloads and installs one. SD boards get theirs from their own backend
//!   (the sdcard stage), a file at that path, since their cards carry both slots.
//! - `/etc/rauc/keyring.pem`: the certificate RAUC checks a bundle's CMS signature against.

use std::fs;
use std::path::Path;

use crate::board::{Board, Format};
use crate::recipe::Update;

pub const RELEASE_JSON: &str = "usr/lib/cloudy/release.json";
pub const KEYS_JSON: &str = "usr/lib/cloudy/update-keys.json";
pub const SYSTEM_CONF: &str = "usr/lib/cloudy/rauc/system.conf";
/// RAUC's config path on the node: a link to the installed disk's copy (see above).
pub const SYSTEM_CONF_LINK: &str = "etc/rauc/system.conf";
pub const KEYRING: &str = "etc/rauc/keyring.pem";
/// Where an installed node mounts the partition holding GRUB, its environment and RAUC's
/// system.conf (install-to-disk: MBR partition 1, filesystem label `cloudy-boot`).
pub const BOOT_MOUNT: &str = "/boot/cloudy";
/// The installed disk's system.conf, which `SYSTEM_CONF_LINK` points to.
pub const INSTALLED_CONF: &str = "/boot/cloudy/rauc/system.conf";
/// Stands for the disk identifier (MBR, 8 hex digits) in the image's system.conf template.
pub const PTUUID: &str = "@PTUUID@";
/// The slots' MBR partition numbers (install-to-disk's layout): A, B.
pub const SLOT_PARTITIONS: [u8; 2] = [2, 3];

/// RAUC's compatible string for a board: a bundle installs only where it matches.
pub fn compatible(board: &str) -> String {
    format!("cloudy-{board}")
}

/// The `release.json` of an image.
pub fn release_json(board: &str, version: &str) -> String {
    serde_json::json!({ "board": board, "version": version }).to_string() + "\n"
}

/// The `update-keys.json` of an image, None without keys.
pub fn keys_json(update: &Update) -> Option<String> {
    if update.keys.is_empty() {
        return None;
    }
    Some(
        serde_json::to_string_pretty(&serde_json::json!({
            "threshold": update.threshold,
            "keys": update.keys,
        }))
        .expect("encodes")
            + "\n",
    )
}

/// RAUC's system.conf for an installed PC: the GRUB backend, its environment on the boot
/// partition, the slot status on the data partition, and the two root slots by PARTUUID
/// (`@PTUUID@`-02 and -03: install-to-disk fills in its disk's identifier). By partition, not
/// by filesystem label: a slot is written with the bundle's one ext4 image whichever slot it
/// lands in, so a filesystem label could not say A or B; the partition stays.
pub fn system_conf(board: &str) -> String {
    let mut s = format!(
        "# Written by cloudy-image (image/src/stages/release.rs); README \"Updates\".\n\
         # install-to-disk replaces {PTUUID} with the disk's identifier and writes the result to\n\
         # {INSTALLED_CONF}, where /etc/rauc/system.conf points.\n\
         [system]\n\
         compatible={}\n\
         bootloader=grub\n\
         grubenv={BOOT_MOUNT}/grub/grubenv\n\
         statusfile=/var/lib/cloudy/rauc.status\n\
         bundle-formats=-plain\n\
         \n\
         [keyring]\n\
         path=/etc/rauc/keyring.pem\n",
        compatible(board)
    );
    for (i, (part, bootname)) in SLOT_PARTITIONS.iter().zip(["A", "B"]).enumerate() {
        s.push_str(&format!(
            "\n[slot.rootfs.{i}]\ndevice=/dev/disk/by-partuuid/{PTUUID}-{part:02}\ntype=ext4\nbootname={bootname}\n"
        ));
    }
    s
}

/// Writes the files above under `layer` (the image's Cloudy layer).
pub fn write(
    layer: &Path,
    board: &Board,
    version: &str,
    update: &Update,
    keyring: Option<&str>,
) -> std::io::Result<()> {
    put(
        layer,
        RELEASE_JSON,
        &release_json(&board.name, version),
        0o644,
    )?;
    match keys_json(update) {
        Some(k) => put(layer, KEYS_JSON, &k, 0o644)?,
        None => remove(layer, KEYS_JSON)?,
    }
    if board.format != Format::Sdcard {
        put(layer, SYSTEM_CONF, &system_conf(&board.name), 0o644)?;
        link(layer, SYSTEM_CONF_LINK, INSTALLED_CONF)?;
    }
    match keyring {
        Some(pem) => put(layer, KEYRING, pem, 0o644)?,
        None => remove(layer, KEYRING)?,
    }
    Ok(())
}

fn put(layer: &Path, rel: &str, text: &str, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let p = layer.join(rel);
    fs::create_dir_all(p.parent().expect("has parent"))?;
    crate::cache::write_atomic(&p, text.as_bytes())?;
    fs::set_permissions(&p, fs::Permissions::from_mode(mode))
}

/// A symlink at `rel` to `target`, replacing whatever is there (a layer may be reused).
fn link(layer: &Path, rel: &str, target: &str) -> std::io::Result<()> {
    let p = layer.join(rel);
    fs::create_dir_all(p.parent().expect("has parent"))?;
    if fs::read_link(&p).is_ok_and(|t| t == Path::new(target)) {
        return Ok(());
    }
    remove(layer, rel)?;
    std::os::unix::fs::symlink(target, &p)
}

fn remove(layer: &Path, rel: &str) -> std::io::Result<()> {
    match fs::remove_file(layer.join(rel)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_and_keys_have_the_agreed_shape() {
        let v: serde_json::Value =
            serde_json::from_str(&release_json("pc-686-pae", "1.2.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"board": "pc-686-pae", "version": "1.2.0"})
        );
        let mut u = Update::default();
        assert!(keys_json(&u).is_none(), "no keys: no file, no updates");
        u.keys = vec!["k1".into(), "k2".into()];
        u.threshold = 2;
        let v: serde_json::Value = serde_json::from_str(&keys_json(&u).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"threshold": 2, "keys": ["k1", "k2"]}));
    }

    #[test]
    fn system_conf_names_board_grub_and_both_slots() {
        let c = system_conf("pc-amd64");
        for line in [
            "compatible=cloudy-pc-amd64",
            "bootloader=grub",
            "grubenv=/boot/cloudy/grub/grubenv",
            "statusfile=/var/lib/cloudy/rauc.status",
            "[slot.rootfs.0]\ndevice=/dev/disk/by-partuuid/@PTUUID@-02\ntype=ext4\nbootname=A",
            "[slot.rootfs.1]\ndevice=/dev/disk/by-partuuid/@PTUUID@-03\ntype=ext4\nbootname=B",
            "path=/etc/rauc/keyring.pem",
        ] {
            assert!(c.contains(line), "{line} missing from:\n{c}");
        }
    }
}
