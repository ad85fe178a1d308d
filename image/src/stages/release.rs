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
//!   `rootfs.0` (bootname A) and `rootfs.1` (bootname B), for the installer to put at
//!   `/etc/rauc/system.conf` once it has laid out those slots. It is not at that path in the
//!   image: the agent takes a system.conf there to mean "this node has slots", and a live ISO
//!   or an installed disk without the A/B layout (today's installer) has none, so it must only
//!   report a newer release, never download and install one. SD boards get theirs from their
//!   own backend (the sdcard stage), at the live path, since their cards carry both slots.
//! - `/etc/rauc/keyring.pem`: the certificate RAUC checks a bundle's CMS signature against.

use std::fs;
use std::path::Path;

use crate::board::{Board, Format};
use crate::recipe::Update;

pub const RELEASE_JSON: &str = "usr/lib/cloudy/release.json";
pub const KEYS_JSON: &str = "usr/lib/cloudy/update-keys.json";
pub const SYSTEM_CONF: &str = "usr/lib/cloudy/rauc/system.conf";
pub const KEYRING: &str = "etc/rauc/keyring.pem";
/// Partition labels (GPT) of the installed layout; install-to-disk makes them.
pub const SLOT_LABELS: [&str; 2] = ["cloudy-a", "cloudy-b"];
/// Where an installed node mounts the partition holding GRUB and its environment.
pub const BOOT_MOUNT: &str = "/boot/cloudy";

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
/// partition, and the two root slots by GPT partition label. By partition label, not by
/// filesystem label: a slot is written with the bundle's one ext4 image whichever slot it
/// lands in, so a filesystem label could not say A or B; the partition's label stays.
pub fn system_conf(board: &str) -> String {
    let mut s = format!(
        "# Written by cloudy-image (image/src/stages/release.rs); README \"Updates\".\n\
         [system]\n\
         compatible={}\n\
         bootloader=grub\n\
         grubenv={BOOT_MOUNT}/grub/grubenv\n\
         bundle-formats=-plain\n\
         \n\
         [keyring]\n\
         path=/etc/rauc/keyring.pem\n",
        compatible(board)
    );
    for (i, (label, bootname)) in SLOT_LABELS.iter().zip(["A", "B"]).enumerate() {
        s.push_str(&format!(
            "\n[slot.rootfs.{i}]\ndevice=/dev/disk/by-partlabel/{label}\ntype=ext4\nbootname={bootname}\n"
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
            "[slot.rootfs.0]\ndevice=/dev/disk/by-partlabel/cloudy-a\ntype=ext4\nbootname=A",
            "[slot.rootfs.1]\ndevice=/dev/disk/by-partlabel/cloudy-b\ntype=ext4\nbootname=B",
            "path=/etc/rauc/keyring.pem",
        ] {
            assert!(c.contains(line), "{line} missing from:\n{c}");
        }
    }
}
