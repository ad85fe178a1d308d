//! What the Raspberry Pi firmware boots from a card's FAT partition: the kernel, initramfs,
//! command line and device tree it would pick, worked out from `config.txt` (with its
//! `include`s, conditional sections and `os_prefix`), `cmdline.txt` and `autoboot.txt` the way
//! the firmware documents it. The SD slot switch (`overlay/usr/lib/cloudy/rauc-pi-boot`) only
//! ever changes `slot.txt`, which `config.txt` includes; this module is how the image's verify
//! stage and the slot tests boot each slot under QEMU, which has no Pi firmware.
//!
//! The rules, from <https://www.raspberrypi.com/documentation/computers/config_txt.html>:
//! - `config.txt` is read top to bottom; `#` starts a comment line; a later setting of the same
//!   key overrides an earlier one. `include FILE` inserts FILE's lines at that point.
//! - Conditional sections: `[all]` resets every filter; model filters (`[pi2]`, `[pi3]`,
//!   `[pi3+]`, `[pi4]`, ...) replace each other; filters of different kinds (`[tryboot]`, the
//!   model) combine. Filters this module does not know (`[EDID=...]`, `[gpio4=1]`, `[0x...]`)
//!   are taken as false: the card's own files use none of them.
//! - `kernel=` names the kernel (default `kernel8.img` with `arm_64bit=1`, else per model);
//!   `initramfs FILE [ADDRESS|followkernel]` the initramfs; `cmdline=` the command line's file
//!   (default `cmdline.txt`); `device_tree=` overrides the model's device tree.
//! - `os_prefix` is put in front of the kernel, the initramfs, the command line file and the
//!   device tree. `upstream_kernel=1` makes it `upstream/` unless `os_prefix` is set. Before
//!   using a prefix the firmware checks that the kernel and the device tree exist under it; if
//!   either does not, the prefix is ignored (set to "").
//! - With the tryboot flag set (a `reboot '0 tryboot'`, Pi 4 and later) the firmware reads
//!   `tryboot.txt` instead of `config.txt` and `[tryboot]` sections apply; on a Pi 4 or later,
//!   `autoboot.txt` (`boot_partition=N`, `tryboot_a_b=1`) may send the boot to another FAT
//!   partition, which this module reports rather than follows.

use std::collections::BTreeMap;

/// The Pi models Cloudy's SD boards stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    Pi1,
    Pi2,
    Pi3,
    Pi3Plus,
    Pi4,
}

impl Model {
    /// The model a board's image is tested as: rpi3 as a Pi 3 B (its first device tree).
    pub fn for_board(name: &str) -> Option<Model> {
        match name {
            "rpi1" | "rpi0" => Some(Model::Pi1),
            "rpi2" => Some(Model::Pi2),
            "rpi3" => Some(Model::Pi3),
            "rpi4" => Some(Model::Pi4),
            _ => None,
        }
    }

    /// The model filters whose sections apply to this model.
    fn filters(self) -> &'static [&'static str] {
        match self {
            Model::Pi1 => &["pi1", "pi0"],
            Model::Pi2 => &["pi2"],
            Model::Pi3 => &["pi3"],
            // "[pi3+] ... also sees the [pi3] contents"
            Model::Pi3Plus => &["pi3", "pi3+"],
            Model::Pi4 => &["pi4", "pi400", "cm4"],
        }
    }

    /// The device tree the firmware loads with `upstream_kernel=1` (the upstream names Debian's
    /// kernel ships).
    pub fn dtb(self) -> &'static str {
        match self {
            Model::Pi1 => "bcm2835-rpi-b.dtb",
            Model::Pi2 => "bcm2836-rpi-2-b.dtb",
            Model::Pi3 => "bcm2837-rpi-3-b.dtb",
            Model::Pi3Plus => "bcm2837-rpi-3-b-plus.dtb",
            Model::Pi4 => "bcm2711-rpi-4-b.dtb",
        }
    }

    fn default_kernel(self, arm64: bool) -> &'static str {
        match (self, arm64) {
            (Model::Pi1, _) => "kernel.img",
            (_, true) => "kernel8.img",
            (Model::Pi4, false) => "kernel7l.img",
            _ => "kernel7.img",
        }
    }

    /// Pi 4 and later read autoboot.txt and honour the tryboot flag.
    fn has_tryboot(self) -> bool {
        self == Model::Pi4
    }
}

/// What the firmware boots, as paths on the FAT partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub kernel: String,
    pub initrd: Option<String>,
    pub dtb: String,
    /// cmdline.txt's first line, as the kernel gets it (the firmware adds options of its own
    /// on real hardware: see README "Pi slots").
    pub cmdline: String,
    /// The prefix in use after the firmware's viability check ("" when ignored).
    pub os_prefix: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PiBootError {
    #[error("no config.txt on the FAT partition\n  fix: the card was not made by cloudy-image, or its firmware partition is damaged")]
    NoConfig,
    #[error("the firmware would boot {path}, which is not on the FAT partition (os_prefix `{prefix}`)\n  fix: the slot's kernel files are missing: point slot.txt at a slot that has them (rauc-pi-boot set-primary A)")]
    Missing { path: String, prefix: String },
    #[error("autoboot.txt sends the boot to partition {0}, not this FAT partition")]
    OtherPartition(u32),
}

/// The FAT partition as the firmware sees it: file names are case-insensitive.
pub struct Fat {
    files: BTreeMap<String, Option<String>>,
}

impl Fat {
    /// `files`: every path on the partition (without a leading `/`), with the text of those
    /// that may be config files (`.txt`), None for the rest.
    pub fn new(files: impl IntoIterator<Item = (String, Option<String>)>) -> Fat {
        Fat {
            files: files
                .into_iter()
                .map(|(p, t)| (p.trim_start_matches('/').to_ascii_lowercase(), t))
                .collect(),
        }
    }

    fn exists(&self, path: &str) -> bool {
        self.files.contains_key(&path.to_ascii_lowercase())
    }

    fn text(&self, path: &str) -> Option<&str> {
        self.files
            .get(&path.to_ascii_lowercase())
            .and_then(|t| t.as_deref())
    }
}

/// The settings that matter here, after filters and overrides.
#[derive(Debug, Default)]
struct Settings {
    values: BTreeMap<String, String>,
    initramfs: Option<String>,
}

/// Which conditional filters are active while reading.
struct Filters {
    model: Option<String>,
    tryboot: Option<bool>,
    /// Any filter kind we do not model: false until `[all]`.
    unknown: bool,
}

impl Filters {
    fn all() -> Filters {
        Filters {
            model: None,
            tryboot: None,
            unknown: false,
        }
    }

    fn active(&self, model: Model, tryboot: bool) -> bool {
        let model_ok = self
            .model
            .as_deref()
            .is_none_or(|m| model.filters().contains(&m));
        let try_ok = self.tryboot.is_none_or(|t| t == tryboot);
        model_ok && try_ok && !self.unknown
    }

    fn set(&mut self, section: &str) {
        match section {
            "all" => *self = Filters::all(),
            "none" => self.unknown = true,
            "tryboot" => self.tryboot = Some(true),
            s if is_model_filter(s) => self.model = Some(s.to_string()),
            _ => self.unknown = true,
        }
    }
}

fn is_model_filter(s: &str) -> bool {
    matches!(
        s,
        "pi0" | "pi0w" | "pi02" | "pi1" | "pi2" | "pi3" | "pi3+" | "pi4" | "pi400" | "cm4" | "pi5"
    )
}

/// Reads `file` and the files it includes into `s`. `depth` bounds include loops.
fn read_config(
    fat: &Fat,
    file: &str,
    model: Model,
    tryboot: bool,
    filters: &mut Filters,
    s: &mut Settings,
    depth: u32,
) {
    let Some(text) = fat.text(file) else {
        // A missing include is skipped by the firmware.
        return;
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            filters.set(section);
            continue;
        }
        if !filters.active(model, tryboot) {
            continue;
        }
        if let Some(inc) = line.strip_prefix("include ") {
            if depth < 8 {
                read_config(fat, inc.trim(), model, tryboot, filters, s, depth + 1);
            }
        } else if let Some(rest) = line.strip_prefix("initramfs ") {
            // `initramfs FILE followkernel`: the only setting written without `=`.
            s.initramfs = rest.split_whitespace().next().map(String::from);
        } else if let Some((k, v)) = line.split_once('=') {
            s.values.insert(k.to_string(), v.to_string());
        }
    }
}

/// What the firmware of `model` boots from `fat`; `tryboot` is the one-shot flag of a Pi 4's
/// `reboot '0 tryboot'` (always false on the models without it).
pub fn choose(fat: &Fat, model: Model, tryboot: bool) -> Result<Choice, PiBootError> {
    let tryboot = tryboot && model.has_tryboot();
    let mut config = "config.txt";
    if model.has_tryboot() {
        if fat.exists("autoboot.txt") {
            let mut s = Settings::default();
            read_config(
                fat,
                "autoboot.txt",
                model,
                tryboot,
                &mut Filters::all(),
                &mut s,
                0,
            );
            if let Some(p) = s.values.get("boot_partition").and_then(|v| v.parse().ok()) {
                // 0 means the default: the first bootable FAT partition, this one.
                if p != 0 && p != 1 {
                    return Err(PiBootError::OtherPartition(p));
                }
            }
            if tryboot && s.values.get("tryboot_a_b").is_some_and(|v| v == "1") {
                // With tryboot_a_b the flag chooses the partition, not tryboot.txt.
                return choose_with(fat, model, false, config);
            }
        }
        if tryboot && fat.exists("tryboot.txt") {
            config = "tryboot.txt";
        }
    }
    choose_with(fat, model, tryboot, config)
}

fn choose_with(
    fat: &Fat,
    model: Model,
    tryboot: bool,
    config: &str,
) -> Result<Choice, PiBootError> {
    if !fat.exists(config) {
        return Err(PiBootError::NoConfig);
    }
    let mut s = Settings::default();
    read_config(fat, config, model, tryboot, &mut Filters::all(), &mut s, 0);
    let v = |k: &str| s.values.get(k).map(String::as_str);
    let arm64 = v("arm_64bit") == Some("1");
    let kernel = v("kernel")
        .unwrap_or(model.default_kernel(arm64))
        .to_string();
    let dtb = v("device_tree").unwrap_or(model.dtb()).to_string();
    let prefix = match v("os_prefix") {
        Some(p) => p.to_string(),
        None if v("upstream_kernel") == Some("1") => "upstream/".to_string(),
        None => String::new(),
    };
    // The viability check: a prefix without the kernel and the device tree is dropped.
    let prefix =
        if fat.exists(&format!("{prefix}{kernel}")) && fat.exists(&format!("{prefix}{dtb}")) {
            prefix
        } else {
            String::new()
        };
    let at = |f: &str| format!("{prefix}{f}");
    let need = |path: String| {
        if fat.exists(&path) {
            Ok(path)
        } else {
            Err(PiBootError::Missing {
                path,
                prefix: prefix.clone(),
            })
        }
    };
    let kernel = need(at(&kernel))?;
    let dtb = need(at(&dtb))?;
    let initrd = match &s.initramfs {
        Some(f) => Some(need(at(f))?),
        None => None,
    };
    let cmdline_file = need(at(v("cmdline").unwrap_or("cmdline.txt")))?;
    let cmdline = fat
        .text(&cmdline_file)
        .and_then(|t| t.lines().next())
        .unwrap_or("")
        .trim()
        .to_string();
    Ok(Choice {
        kernel,
        initrd,
        dtb,
        cmdline,
        os_prefix: prefix,
    })
}

/// The FAT partition's `config.txt` for two slots: raspi-firmware's, with its versioned
/// `kernel=` and `initramfs` lines replaced by the fixed names every slot directory holds, then
/// slot A as the default prefix and `slot.txt` (the backend's switch) included last, so a
/// missing or unreadable `slot.txt` still boots slot A.
pub fn slot_config(raspi_config: &str) -> String {
    let mut out = String::from(
        "# Cloudy: two root slots. The kernel, initramfs, command line and device trees of each\n\
         # are in slot-a/ and slot-b/; slot.txt (written by /usr/lib/cloudy/rauc-pi-boot) says\n\
         # which one the firmware boots. Edit neither by hand: `rauc status` shows the slots.\n",
    );
    for line in raspi_config.lines() {
        let t = line.trim();
        if t.starts_with("kernel=") || t.starts_with("initramfs ") || t.starts_with("os_prefix=") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&format!(
        "\n[all]\nkernel={SLOT_KERNEL}\ninitramfs {SLOT_INITRD} followkernel\nos_prefix={}\ninclude {SLOT_FILE}\n",
        slot_dir('A')
    ));
    out
}

/// The backend's switch file on the FAT partition.
pub const SLOT_FILE: &str = "slot.txt";
pub const SLOT_KERNEL: &str = "vmlinuz";
pub const SLOT_INITRD: &str = "initrd.img";

/// The directory of slot `A` or `B` on the FAT partition, with its trailing `/`.
pub fn slot_dir(bootname: char) -> String {
    format!("slot-{}/", bootname.to_ascii_lowercase())
}

/// `slot.txt` as the image ships it: slot A, good, nothing on trial. The `#cloudy` lines are
/// the backend's state (the firmware skips comments); their format is rauc-pi-boot's.
pub fn initial_slot_file() -> String {
    format!(
        "# Written by /usr/lib/cloudy/rauc-pi-boot: the slot the firmware boots. Do not edit.\nos_prefix={}\n#cloudy state.A=good\n#cloudy state.B=bad\n",
        slot_dir('A')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const RASPI: &str = "# Do not modify this file!\narm_64bit=1\n\nenable_uart=1\nupstream_kernel=1\n\nkernel=vmlinuz-6.1.0-56-arm64\ninitramfs initrd.img-6.1.0-56-arm64\n";

    fn card(extra: &[(&str, &str)]) -> Vec<(String, Option<String>)> {
        let mut v: Vec<(String, Option<String>)> = vec![
            ("config.txt".into(), Some(slot_config(RASPI))),
            ("slot.txt".into(), Some(initial_slot_file())),
            ("start.elf".into(), None),
        ];
        for slot in ['a', 'b'] {
            for f in ["vmlinuz", "initrd.img", "bcm2837-rpi-3-b.dtb"] {
                v.push((format!("slot-{slot}/{f}"), None));
            }
            v.push((
                format!("slot-{slot}/cmdline.txt"),
                Some(format!(
                    "root=PARTUUID=x-0{} rauc.slot={}\n",
                    if slot == 'a' { 2 } else { 3 },
                    slot.to_ascii_uppercase()
                )),
            ));
        }
        for (p, t) in extra {
            v.retain(|(q, _)| q != p);
            v.push((p.to_string(), Some(t.to_string())));
        }
        v
    }

    #[test]
    fn the_slot_file_picks_the_slot_directory() {
        let a = choose(&Fat::new(card(&[])), Model::Pi3, false).unwrap();
        assert_eq!(a.kernel, "slot-a/vmlinuz");
        assert_eq!(a.initrd.as_deref(), Some("slot-a/initrd.img"));
        assert_eq!(a.dtb, "slot-a/bcm2837-rpi-3-b.dtb");
        assert_eq!(a.cmdline, "root=PARTUUID=x-02 rauc.slot=A");
        let b = choose(
            &Fat::new(card(&[(
                "slot.txt",
                "os_prefix=slot-b/\n#cloudy primary=B\n",
            )])),
            Model::Pi3,
            false,
        )
        .unwrap();
        assert_eq!(b.kernel, "slot-b/vmlinuz");
        assert_eq!(b.cmdline, "root=PARTUUID=x-03 rauc.slot=B");
    }

    #[test]
    fn a_missing_slot_file_boots_slot_a() {
        let files: Vec<_> = card(&[])
            .into_iter()
            .filter(|(p, _)| p != "slot.txt")
            .collect();
        let c = choose(&Fat::new(files), Model::Pi3, false).unwrap();
        assert_eq!(c.os_prefix, "slot-a/");
    }

    /// The firmware's viability check: a prefix whose kernel or device tree is missing is
    /// dropped, and then the card's top level has no kernel.
    #[test]
    fn a_prefix_without_its_kernel_is_ignored() {
        let files: Vec<_> = card(&[("slot.txt", "os_prefix=slot-b/\n")])
            .into_iter()
            .filter(|(p, _)| p != "slot-b/bcm2837-rpi-3-b.dtb")
            .collect();
        let e = choose(&Fat::new(files), Model::Pi3, false).unwrap_err();
        assert_eq!(
            e,
            PiBootError::Missing {
                path: "vmlinuz".into(),
                prefix: "".into()
            }
        );
    }

    #[test]
    fn conditional_sections_and_overrides() {
        let cfg = "kernel=k1\n[pi4]\nkernel=k4\n[pi3]\nkernel=k3\ninitramfs i3 followkernel\n[all]\ncmdline=c.txt\n[gpio4=1]\nkernel=never\n[all]\n";
        let files = vec![
            ("config.txt".to_string(), Some(cfg.to_string())),
            ("k1".into(), None),
            ("k3".into(), None),
            ("k4".into(), None),
            ("i3".into(), None),
            ("c.txt".into(), Some("one two\nsecond line\n".into())),
            ("bcm2837-rpi-3-b.dtb".into(), None),
            ("bcm2711-rpi-4-b.dtb".into(), None),
            ("bcm2836-rpi-2-b.dtb".into(), None),
        ];
        let fat = Fat::new(files);
        let c3 = choose(&fat, Model::Pi3, false).unwrap();
        assert_eq!(
            (c3.kernel.as_str(), c3.initrd.as_deref()),
            ("k3", Some("i3"))
        );
        assert_eq!(c3.cmdline, "one two");
        let c4 = choose(&fat, Model::Pi4, false).unwrap();
        assert_eq!((c4.kernel.as_str(), c4.initrd.as_deref()), ("k4", None));
        assert_eq!(choose(&fat, Model::Pi2, false).unwrap().kernel, "k1");
    }

    #[test]
    fn upstream_kernel_defaults_the_prefix_and_names_are_case_insensitive() {
        let files = vec![
            (
                "config.txt".to_string(),
                Some("upstream_kernel=1\narm_64bit=1\n".into()),
            ),
            ("UPSTREAM/KERNEL8.IMG".into(), None),
            ("upstream/bcm2837-rpi-3-b.dtb".into(), None),
            ("upstream/cmdline.txt".into(), Some("up\n".into())),
        ];
        let c = choose(&Fat::new(files), Model::Pi3, false).unwrap();
        assert_eq!(c.os_prefix, "upstream/");
        assert_eq!(c.cmdline, "up");
    }

    #[test]
    fn tryboot_and_autoboot_only_on_a_pi4() {
        let mut files = card(&[(
            "tryboot.txt",
            "arm_64bit=1\nkernel=vmlinuz\nos_prefix=slot-b/\n",
        )]);
        for f in ["slot-a/bcm2711-rpi-4-b.dtb", "slot-b/bcm2711-rpi-4-b.dtb"] {
            files.push((f.into(), None));
        }
        let fat = Fat::new(files.clone());
        assert_eq!(choose(&fat, Model::Pi4, true).unwrap().os_prefix, "slot-b/");
        assert_eq!(
            choose(&fat, Model::Pi4, false).unwrap().os_prefix,
            "slot-a/"
        );
        assert_eq!(choose(&fat, Model::Pi3, true).unwrap().os_prefix, "slot-a/");
        files.push((
            "autoboot.txt".into(),
            Some("[all]\nboot_partition=2\n".into()),
        ));
        assert_eq!(
            choose(&Fat::new(files), Model::Pi4, false).unwrap_err(),
            PiBootError::OtherPartition(2)
        );
    }

    #[test]
    fn the_slot_config_drops_versioned_names() {
        let c = slot_config(RASPI);
        assert!(!c.contains("vmlinuz-6.1"), "{c}");
        assert!(
            c.contains("upstream_kernel=1\n") && c.contains("arm_64bit=1\n"),
            "{c}"
        );
        assert!(c.ends_with("os_prefix=slot-a/\ninclude slot.txt\n"), "{c}");
    }

    /// The backend script (overlay/usr/lib/cloudy/rauc-pi-boot) on a FAT partition in a
    /// directory, read back with `choose` as the firmware would after each step.
    mod backend {
        use super::super::*;
        use super::RASPI;
        use std::path::{Path, PathBuf};
        use std::process::Command;

        struct Card {
            _dir: tempfile::TempDir,
            fw: PathBuf,
            cmdline: PathBuf,
            slot_root: PathBuf,
        }

        fn script() -> PathBuf {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap()
                .join("overlay/usr/lib/cloudy/rauc-pi-boot")
        }

        impl Card {
            fn new() -> Card {
                let dir = tempfile::tempdir().unwrap();
                let fw = dir.path().join("fw");
                let a = fw.join("slot-a");
                std::fs::create_dir_all(&a).unwrap();
                std::fs::write(fw.join("config.txt"), slot_config(RASPI)).unwrap();
                std::fs::write(fw.join("slot.txt"), initial_slot_file()).unwrap();
                for f in ["vmlinuz", "initrd.img", "bcm2837-rpi-3-b.dtb"] {
                    std::fs::write(a.join(f), "a").unwrap();
                }
                std::fs::write(
                    a.join("cmdline.txt"),
                    "console=ttyS1,115200 root=PARTUUID=b05f3917-02 rw rauc.slot=A cma=64M\n",
                )
                .unwrap();
                // Slot B's root filesystem, as RAUC leaves it after writing an update.
                let root = dir.path().join("root-b");
                let ver = "6.1.0-99-arm64";
                std::fs::create_dir_all(root.join("boot")).unwrap();
                std::fs::write(root.join(format!("boot/vmlinuz-{ver}")), "kernel b").unwrap();
                std::fs::write(root.join(format!("boot/initrd.img-{ver}")), "initrd b").unwrap();
                let dtbs = root.join(format!("usr/lib/linux-image-{ver}/broadcom"));
                std::fs::create_dir_all(&dtbs).unwrap();
                std::fs::write(dtbs.join("bcm2837-rpi-3-b.dtb"), "dtb b").unwrap();
                let cmdline = dir.path().join("cmdline");
                Card {
                    fw,
                    cmdline,
                    slot_root: root,
                    _dir: dir,
                }
            }

            /// Runs the backend as slot `booted`'s kernel would; returns (ok, stdout+stderr).
            fn run(&self, booted: char, args: &[&str]) -> (bool, String) {
                std::fs::write(&self.cmdline, format!("root=x rauc.slot={booted}\n")).unwrap();
                let o = Command::new("sh")
                    .arg(script())
                    .args(args)
                    .env("CLOUDY_PI_FIRMWARE", &self.fw)
                    .env("CLOUDY_PI_CMDLINE", &self.cmdline)
                    .env("CLOUDY_PI_SLOT_ROOT", &self.slot_root)
                    .output()
                    .unwrap();
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                (o.status.success(), text)
            }

            fn ok(&self, booted: char, args: &[&str]) -> String {
                let (ok, text) = self.run(booted, args);
                assert!(ok, "rauc-pi-boot {args:?} failed: {text}");
                text.trim().to_string()
            }

            /// What the firmware boots next.
            fn firmware(&self) -> Choice {
                let mut files = vec![];
                let mut stack = vec![self.fw.clone()];
                while let Some(d) = stack.pop() {
                    for e in std::fs::read_dir(&d).unwrap().flatten() {
                        let p = e.path();
                        if p.is_dir() {
                            stack.push(p);
                            continue;
                        }
                        let rel = p.strip_prefix(&self.fw).unwrap().display().to_string();
                        let text = rel
                            .ends_with(".txt")
                            .then(|| std::fs::read_to_string(&p).unwrap());
                        files.push((rel, text));
                    }
                }
                choose(&Fat::new(files), Model::Pi3, false).unwrap()
            }
        }

        #[test]
        fn set_primary_switches_the_firmware_to_the_slot_with_its_own_kernel() {
            let c = Card::new();
            assert_eq!(c.ok('A', &["get-current"]), "A");
            assert_eq!(c.ok('A', &["get-primary"]), "A");
            assert_eq!(
                c.ok('A', &["get-state", "B"]),
                "bad",
                "slot B is empty at first"
            );
            assert_eq!(c.firmware().kernel, "slot-a/vmlinuz");

            c.ok('A', &["set-primary", "B"]);
            assert_eq!(c.ok('A', &["get-primary"]), "B");
            assert_eq!(c.ok('A', &["get-state", "B"]), "good");
            let b = c.firmware();
            assert_eq!(b.kernel, "slot-b/vmlinuz");
            assert_eq!(b.initrd.as_deref(), Some("slot-b/initrd.img"));
            assert_eq!(
                b.cmdline,
                "console=ttyS1,115200 root=PARTUUID=b05f3917-03 rw rauc.slot=B cma=64M"
            );
            assert_eq!(
                std::fs::read_to_string(c.fw.join("slot-b/vmlinuz")).unwrap(),
                "kernel b",
                "slot B's own kernel, from its root filesystem"
            );
            // Slot A's files are untouched.
            assert_eq!(
                std::fs::read_to_string(c.fw.join("slot-a/vmlinuz")).unwrap(),
                "a"
            );
        }

        #[test]
        fn a_tried_slot_never_marked_good_returns_to_the_old_one_after_three_boots() {
            let c = Card::new();
            c.ok('A', &["set-primary", "B"]);
            for n in 1..=3 {
                assert_eq!(c.firmware().os_prefix, "slot-b/", "boot {n} is slot B's");
                let said = c.ok('B', &["boot"]);
                assert!(said.contains(&format!("boot {n} of 3")), "{said}");
            }
            assert!(c.ok('B', &["status"]).contains("on trial: B, 0 of 3"));
            assert_eq!(
                c.firmware().os_prefix,
                "slot-a/",
                "the fourth boot is slot A's"
            );
            let said = c.ok('A', &["boot"]);
            assert!(
                said.contains("slot B was not marked good within 3 boots; back on slot A"),
                "{said}"
            );
            assert_eq!(c.ok('A', &["get-state", "B"]), "bad");
            assert_eq!(c.ok('A', &["get-primary"]), "A");
            assert!(c.ok('A', &["status"]).contains("last failed: B"));
            // And it stays on A.
            assert!(c.ok('A', &["boot"]).contains("booted slot A"));
            assert_eq!(c.firmware().os_prefix, "slot-a/");
        }

        #[test]
        fn marked_good_the_tried_slot_stays_even_on_its_last_boot() {
            let c = Card::new();
            c.ok('A', &["set-primary", "B"]);
            for _ in 0..3 {
                c.ok('B', &["boot"]);
            }
            assert_eq!(c.firmware().os_prefix, "slot-a/");
            // rauc status mark-good, on the last boot: slot B is kept.
            c.ok('B', &["set-state", "B", "good"]);
            assert_eq!(c.firmware().os_prefix, "slot-b/");
            for _ in 0..5 {
                assert!(c.ok('B', &["boot"]).contains("booted slot B"));
            }
            assert_eq!(c.firmware().os_prefix, "slot-b/");
            // mark-bad of the primary slot sends the firmware to the other one.
            c.ok('B', &["set-state", "B", "bad"]);
            assert_eq!(c.ok('B', &["get-primary"]), "A");
            assert_eq!(c.firmware().os_prefix, "slot-a/");
        }

        #[test]
        fn bad_requests_change_nothing() {
            let c = Card::new();
            let before = std::fs::read_to_string(c.fw.join("slot.txt")).unwrap();
            for args in [
                &["set-primary", "C"][..],
                &["set-state", "A", "fine"],
                &["get-state", ""],
                &["frobnicate"],
            ] {
                let (ok, text) = c.run('A', args);
                assert!(!ok, "{args:?} accepted: {text}");
            }
            // A slot whose root has no kernel is not made the one to boot.
            std::fs::remove_dir_all(c.slot_root.join("boot")).unwrap();
            let (ok, text) = c.run('A', &["set-primary", "B"]);
            assert!(!ok && text.contains("no kernel"), "{text}");
            assert!(!c.fw.join("slot-b").exists() && !c.fw.join("slot-b.new").exists());
            assert_eq!(
                std::fs::read_to_string(c.fw.join("slot.txt")).unwrap(),
                before
            );
            assert_eq!(c.firmware().os_prefix, "slot-a/");
        }
    }
}
