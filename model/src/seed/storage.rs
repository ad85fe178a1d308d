//! `[storage]`: where a live node keeps its state (`/var/lib/cloudy`: id, keys, members, the
//! services' data) across reboots. Without it a node still uses any disk labelled
//! `cloudy-data`; this section names a disk to use (and may let the node format it once).

use serde::Deserialize;

use super::invalid::{invalid, Invalid};

/// The filesystem label a data disk carries; the node mounts any disk with it.
pub const DATA_LABEL: &str = "cloudy-data";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// The disk (or partition) to keep the node's state on, e.g. `/dev/vdb` or
    /// `/dev/disk/by-id/usb-...`.
    pub device: Option<String>,
    /// Format `device` as ext4 (label `cloudy-data`) when it is blank: no partition table, no
    /// filesystem, nothing but zeros at its start. A disk that holds anything is refused.
    #[serde(default)]
    pub format_if_blank: bool,
    /// Format `device` even when it holds a partition table or a filesystem that is not a
    /// Cloudy data disk: everything on it is lost. Only with `device` and `format_if_blank`.
    #[serde(default)]
    pub erase_existing_data: bool,
    /// Keep the state on the USB stick the node boots from (the ISO written to it with dd): on
    /// the first boot a partition labelled `cloudy-data` is made in the stick's free space,
    /// after the ISO, which is not touched. The boot menu's "keep state on this USB stick"
    /// entry (`cloudy.persist=1`) asks the same without a seed.
    #[serde(default)]
    pub on_boot_stick: bool,
}

impl Storage {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(d) = &self.device {
            let path_ok = d.starts_with("/dev/")
                && d.len() > 5
                && !d.contains("/../")
                && !d.ends_with("/..")
                && !d.chars().any(|c| c.is_whitespace() || c.is_control());
            if !path_ok {
                return Err(invalid(
                    "storage.device",
                    format!(
                        "{:?} is not a device path",
                        d.chars().take(40).collect::<String>()
                    ),
                    "name a disk under /dev, e.g. \"/dev/vdb\" or \"/dev/disk/by-id/usb-...\"",
                ));
            }
        }
        if self.format_if_blank && self.device.is_none() {
            return Err(invalid(
                "storage.format_if_blank",
                "set without `device`: the node formats only a disk the seed names".into(),
                "add `device = \"/dev/...\"` (the disk to format), or remove format_if_blank",
            ));
        }
        if self.erase_existing_data && !(self.format_if_blank && self.device.is_some()) {
            return Err(invalid(
                "storage.erase_existing_data",
                "set without `device` and `format_if_blank = true`".into(),
                "name the disk in `device` and set `format_if_blank = true`, or remove erase_existing_data",
            ));
        }
        if self.on_boot_stick && self.device.is_some() {
            return Err(invalid(
                "storage.on_boot_stick",
                "set with `device`: the state goes on one disk".into(),
                "remove `device` to keep the state on the boot stick, or remove on_boot_stick to keep it on that disk",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::Seed;

    fn parse(text: &str) -> Result<Seed, String> {
        Seed::parse("cloudy.toml", &format!("version = 1\n{text}")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_named_disk_parses_and_layers_whole() {
        let s = parse("[storage]\ndevice = \"/dev/vdb\"\nformat_if_blank = true\n").unwrap();
        let st = s.storage.clone().unwrap();
        assert_eq!(st.device.as_deref(), Some("/dev/vdb"));
        assert!(st.format_if_blank && !st.erase_existing_data);
        // An empty section is valid: labelled disks are used anyway.
        assert_eq!(
            parse("[storage]\n").unwrap().storage,
            Some(Storage::default())
        );
        let defaults = parse("").unwrap();
        assert_eq!(defaults.clone().layer(s.clone()).storage, s.storage);
        assert_eq!(s.layer(defaults).storage, Some(st));
    }

    #[test]
    fn formatting_needs_a_named_disk_and_erasing_says_so_twice() {
        for (text, key) in [
            ("format_if_blank = true\n", "storage.format_if_blank"),
            (
                "device = \"/dev/vdb\"\nerase_existing_data = true\n",
                "storage.erase_existing_data",
            ),
            (
                "erase_existing_data = true\n",
                "storage.erase_existing_data",
            ),
            ("device = \"vdb\"\n", "storage.device"),
            ("device = \"/dev/\"\n", "storage.device"),
            ("device = \"/dev/../etc/passwd\"\n", "storage.device"),
            (
                "device = \"/dev/vdb\"\non_boot_stick = true\n",
                "storage.on_boot_stick",
            ),
        ] {
            let e = parse(&format!("[storage]\n{text}")).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
            assert!(e.contains("fix:"), "{e}");
        }
        let ok = parse(
            "[storage]\ndevice = \"/dev/sdb\"\nformat_if_blank = true\nerase_existing_data = true\n",
        )
        .unwrap();
        assert!(ok.storage.unwrap().erase_existing_data);
        let stick = parse("[storage]\non_boot_stick = true\n").unwrap();
        assert!(stick.storage.unwrap().on_boot_stick);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = parse("[storage]\ndevice = \"/dev/vdb\"\nformat = true\n").unwrap_err();
        assert!(e.contains("format"), "{e}");
    }
}
