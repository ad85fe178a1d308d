//! Where the node's state lives. A live node (ISO, USB stick, PXE) runs from RAM: without a
//! data disk its `/var/lib/cloudy` (id, keys, members, probe history, dashboard credential and
//! certificate, and the services' data, which live under it too) is gone at the next boot. A
//! disk labelled `cloudy-data`, or the disk the seed's `[storage]` names, is mounted and
//! bind-mounted over `/var/lib/cloudy` before the agent reads anything there.
//!
//! The agent does this itself, first thing at boot, rather than a unit of its own: the seed
//! decides which disk may be formatted, and only the agent reads the seed. Everything that
//! uses the state (tincd, the services) is started by the agent afterwards.
//!
//! A disk is formatted only when the seed names it and it is blank (no signature `blkid` or
//! `wipefs` knows, zeros at its start), or when the seed also says `erase_existing_data`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cloudy_model::seed::{Storage, DATA_LABEL};
use serde::{Deserialize, Serialize};

use crate::os::stick::{self, StickError};
use crate::os::system::System;

/// What `status`, the login screen and the dashboard say when state is not kept.
pub const NOT_KEPT: &str = "state is not kept: every boot is a new node";
/// Where the data disk is mounted; `/var/lib/cloudy` is a bind mount of a directory in it.
pub const DATA_MOUNT: &str = "/run/cloudy/data";
/// The directory on the data disk that becomes `/var/lib/cloudy`.
pub const STATE_SUBDIR: &str = "var-lib-cloudy";
pub const STATE_DIR: &str = "/var/lib/cloudy";
/// What this boot decided, for `status` and the dashboard (which may run without the agent's
/// memory). Beside the control socket, in /run: it describes this boot only.
pub const STATE_FILE: &str = "/run/cloudy/storage.json";
pub const STATE_NAME: &str = "storage.json";
/// How many bytes at the start of a disk must be zero for it to count as blank: partition
/// tables and most filesystems' superblocks lie within the first MiB.
const BLANK_PREFIX: usize = 1 << 20;
/// How long a disk the seed names may take to appear (USB disks enumerate late).
const DEVICE_WAIT: Duration = Duration::from_secs(20);

/// Where this node's state is kept, as this boot found it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// True when `/var/lib/cloudy` survives a reboot.
    pub kept: bool,
    /// Where: "data disk /dev/vdb (label cloudy-data)", "the root filesystem", or RAM.
    pub place: String,
    /// The data disk, when one is used.
    #[serde(default)]
    pub device: Option<String>,
    /// What went wrong on the way (a refused or failed disk), for the user to fix.
    #[serde(default)]
    pub problem: Option<String>,
}

impl State {
    /// One line for `status`, the login screen and the dashboard.
    pub fn line(&self) -> String {
        let mut s = if self.kept {
            format!("state is kept on {}", self.place)
        } else {
            NOT_KEPT.to_string()
        };
        if let Some(p) = &self.problem {
            s.push_str(&format!(" ({p})"));
        }
        s
    }

    fn not_kept(problem: Option<String>) -> State {
        State {
            kept: false,
            place: "RAM (live system without a data disk)".into(),
            device: None,
            problem,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{device}: {problem}; fix: {fix}")]
    Refused {
        device: String,
        problem: String,
        fix: String,
    },
    #[error("{what} {device}: {detail}")]
    Failed {
        what: &'static str,
        device: String,
        detail: String,
    },
    #[error("the boot stick: {0}")]
    Stick(#[from] StickError),
}

/// What a disk holds, as far as deciding whether it may be formatted goes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probe {
    /// Signatures found (`wipefs -n`, `blkid -p`): partition tables, filesystems, RAID, LVM...
    pub signatures: Vec<String>,
    /// The filesystem's label, if it has one.
    pub label: Option<String>,
    /// The first MiB reads as zeros.
    pub zeros_at_start: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A Cloudy data disk already: mount it.
    Use,
    /// Blank and named by the seed with `format_if_blank`, or named with `erase_existing_data`.
    Format,
    /// Anything else: say what was found and touch nothing.
    Refuse { problem: String, fix: String },
}

/// May the disk the seed names be used or formatted?
pub fn decide(probe: &Probe, storage: &Storage) -> Decision {
    if probe.label.as_deref() == Some(DATA_LABEL) {
        return Decision::Use;
    }
    let blank = probe.signatures.is_empty() && probe.zeros_at_start;
    if blank {
        return if storage.format_if_blank {
            Decision::Format
        } else {
            Decision::Refuse {
                problem: "the disk is blank and the seed does not say to format it".into(),
                fix: "add `format_if_blank = true` to the seed's [storage]".into(),
            }
        };
    }
    let found = if probe.signatures.is_empty() {
        "no partition table or filesystem that blkid knows, but its first MiB is not zeros"
            .to_string()
    } else {
        format!("it holds data: {}", probe.signatures.join(", "))
    };
    if storage.format_if_blank && storage.erase_existing_data {
        return Decision::Format;
    }
    Decision::Refuse {
        problem: format!("{found}; not formatted"),
        fix: format!(
            "name an empty disk, label this one's filesystem {DATA_LABEL} (e2label DEV {DATA_LABEL}) to keep the state there, or set `erase_existing_data = true` with `format_if_blank = true` to erase it"
        ),
    }
}

/// Whether this boot runs from RAM: live-boot's `boot=live` (ISO, USB stick, PXE).
pub fn is_live_system(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == "boot=live")
}

/// Mounts the data disk over `/var/lib/cloudy` on a live node and records where state is kept.
/// Never fails the boot: a refused or broken disk leaves the node running from RAM, and says
/// why. Called once, first thing at boot; a restarted agent finds the mount in place.
pub fn settle(sys: &System, storage: Option<&Storage>) -> State {
    let state = if !sys.is_live() {
        // A private root (tests, several agents on one machine): nothing to mount.
        State {
            kept: true,
            place: sys.state_dir().display().to_string(),
            device: None,
            problem: None,
        }
    } else if !is_live_system(&sys.cmdline()) {
        installed_state(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
    } else {
        let on_stick =
            storage.is_some_and(|s| s.on_boot_stick) || stick::asked_on_cmdline(&sys.cmdline());
        match mounted_device() {
            Some(dev) => kept_on(&dev),
            None => match attach(storage, on_stick) {
                Ok(Some(dev)) => kept_on(&dev),
                Ok(None) => State::not_kept(None),
                Err(e) => {
                    // On the console too: the person at the stick asked for this.
                    println!("cloudy-agent: {NOT_KEPT}: {e}");
                    tracing::error!("storage: {e}");
                    State::not_kept(Some(e.to_string()))
                }
            },
        }
    };
    tracing::info!("{}", state.line());
    if let Ok(text) = serde_json::to_vec(&state) {
        if let Err(e) = sys.write_atomic(STATE_FILE, &text, 0o644) {
            tracing::warn!("storage: {STATE_FILE}: {e}");
        }
    }
    state
}

/// What this boot recorded; None before the agent has run (or on an older agent).
pub fn read(state_file: &Path) -> Option<State> {
    serde_json::from_slice(&std::fs::read(state_file).ok()?).ok()
}

/// The line for this node: what the agent recorded, else what can be said without it.
pub fn line(sys: &System) -> String {
    match read(&sys.path(STATE_FILE)) {
        Some(s) => s.line(),
        None if sys.is_live() && is_live_system(&sys.cmdline()) => {
            State::not_kept(Some("the agent has not checked for a data disk yet".into())).line()
        }
        None => "state not checked yet (the agent has not run)".into(),
    }
}

fn kept_on(dev: &str) -> State {
    let place = if stick::on_medium(dev) {
        format!("the boot stick's partition {dev} (label {DATA_LABEL})")
    } else {
        format!("data disk {dev} (label {DATA_LABEL})")
    };
    State {
        kept: true,
        place,
        device: Some(dev.to_string()),
        problem: None,
    }
}

/// An installed node: the installer puts `/var/lib/cloudy` on its own partition (fstab, by
/// label), which outlives the A/B root slots; saying "the root filesystem" there would send
/// a user looking for the state in the wrong place when a slot is replaced.
fn installed_state(mountinfo: &str) -> State {
    match mount_source(mountinfo, STATE_DIR) {
        Some(dev) => State {
            kept: true,
            place: format!("the data partition {dev} (kept across updates)"),
            device: Some(dev),
            problem: None,
        },
        None => State {
            kept: true,
            place: "the root filesystem".into(),
            device: None,
            problem: None,
        },
    }
}

/// The data disk, when `/var/lib/cloudy` is already its bind mount (an agent restart).
fn mounted_device() -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_source(&info, STATE_DIR)?;
    mount_source(&info, DATA_MOUNT)
}

/// The source (device) of what is mounted at `mountpoint`, from /proc/self/mountinfo's text:
/// the last such line, the mount on top.
fn mount_source(mountinfo: &str, mountpoint: &str) -> Option<String> {
    mountinfo.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let sep = f.iter().position(|x| *x == "-")?;
        (f.get(4) == Some(&mountpoint))
            .then(|| f.get(sep + 2).map(|s| s.to_string()))
            .flatten()
    })
}

/// Finds the disk (the seed's, else any labelled one, else with `on_stick` a new partition on
/// the boot stick), formats it if allowed, mounts it. Ok(None): no disk to use.
fn attach(storage: Option<&Storage>, on_stick: bool) -> Result<Option<String>, StorageError> {
    let _ = Command::new("udevadm")
        .args(["settle", "-t", "10"])
        .status();
    let named = storage.and_then(|s| s.device.as_deref().map(|d| (s, d)));
    let device = match named {
        Some((s, d)) => {
            wait_for(d)?;
            let probe = probe(d)?;
            match decide(&probe, s) {
                Decision::Use => {}
                Decision::Format => format(d, &probe)?,
                Decision::Refuse { problem, fix } => {
                    return Err(StorageError::Refused {
                        device: d.into(),
                        problem,
                        fix,
                    })
                }
            }
            d.to_string()
        }
        None => match labelled() {
            Some(d) => d,
            None if on_stick => {
                let (part, new) = stick::make_partition()?;
                let probe = probe(&part)?;
                // A new entry covers space that was free: whatever bytes lie there belong to
                // nobody. An entry an earlier boot made is formatted only while blank.
                let may = Storage {
                    device: Some(part.clone()),
                    format_if_blank: true,
                    erase_existing_data: new,
                    on_boot_stick: true,
                };
                match decide(&probe, &may) {
                    Decision::Use => {}
                    Decision::Format => format(&part, &probe)?,
                    Decision::Refuse { problem, fix: _ } => {
                        return Err(StorageError::Refused {
                            device: part,
                            problem,
                            fix: format!("label its filesystem {DATA_LABEL} (e2label {DATA_LABEL}) to keep the state there, or write the ISO to the stick again"),
                        })
                    }
                }
                part
            }
            None => return Ok(None),
        },
    };
    mount_state(&device)?;
    Ok(Some(device))
}

fn wait_for(device: &str) -> Result<(), StorageError> {
    let start = Instant::now();
    while !Path::new(device).exists() {
        if start.elapsed() > DEVICE_WAIT {
            return Err(StorageError::Refused {
                device: device.into(),
                problem: format!("no such disk (waited {} s)", DEVICE_WAIT.as_secs()),
                fix: "check the seed's [storage] device against `lsblk` on the node".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// The disk labelled `cloudy-data`, if there is one.
fn labelled() -> Option<String> {
    let by_label = PathBuf::from(format!("/dev/disk/by-label/{DATA_LABEL}"));
    if let Ok(p) = std::fs::canonicalize(&by_label) {
        return Some(p.display().to_string());
    }
    // Without udev's links (or before them): ask blkid to scan.
    let out = Command::new("blkid")
        .args(["-L", DATA_LABEL])
        .output()
        .ok()?;
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !dev.is_empty()).then_some(dev)
}

fn probe(device: &str) -> Result<Probe, StorageError> {
    let failed = |what, detail: String| StorageError::Failed {
        what,
        device: device.into(),
        detail,
    };
    let wipefs = Command::new("wipefs")
        .args(["-n", "-i", "-O", "TYPE", device])
        .output()
        .map_err(|e| failed("running wipefs on", e.to_string()))?;
    if !wipefs.status.success() {
        return Err(failed(
            "probing",
            String::from_utf8_lossy(&wipefs.stderr).trim().to_string(),
        ));
    }
    let mut signatures = parse_wipefs(&String::from_utf8_lossy(&wipefs.stdout));
    // blkid's low-level probe (exit 2: nothing found) also knows what wipefs may not list.
    let blkid = Command::new("blkid")
        .args(["-p", "-o", "export", device])
        .output()
        .map_err(|e| failed("running blkid on", e.to_string()))?;
    let found = parse_blkid(&String::from_utf8_lossy(&blkid.stdout));
    for t in found.types {
        if !signatures.contains(&t) {
            signatures.push(t);
        }
    }
    let mut head = vec![0u8; BLANK_PREFIX];
    let mut f = std::fs::File::open(device).map_err(|e| failed("opening", e.to_string()))?;
    let n = read_up_to(&mut f, &mut head).map_err(|e| failed("reading", e.to_string()))?;
    Ok(Probe {
        signatures,
        label: found.label,
        zeros_at_start: head[..n].iter().all(|b| *b == 0),
    })
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// `wipefs -n -i -O TYPE`: one signature type per line.
pub fn parse_wipefs(out: &str) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for t in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !v.iter().any(|x| x == t) {
            v.push(t.to_string());
        }
    }
    v
}

#[derive(Debug, Default, PartialEq)]
pub struct Blkid {
    pub types: Vec<String>,
    pub label: Option<String>,
}

/// `blkid -p -o export`: KEY=value lines; TYPE (a filesystem), PTTYPE (a partition table).
pub fn parse_blkid(out: &str) -> Blkid {
    let mut b = Blkid::default();
    for l in out.lines() {
        match l.split_once('=') {
            Some(("TYPE", v)) | Some(("PTTYPE", v)) => b.types.push(v.to_string()),
            Some(("LABEL", v)) => b.label = Some(v.to_string()),
            _ => {}
        }
    }
    b
}

fn run(what: &'static str, device: &str, c: &mut Command) -> Result<(), StorageError> {
    let out = c.output().map_err(|e| StorageError::Failed {
        what,
        device: device.into(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(StorageError::Failed {
            what,
            device: device.into(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn format(device: &str, probe: &Probe) -> Result<(), StorageError> {
    // Said on the console too: formatting a disk is never silent.
    let said = if probe.signatures.is_empty() && probe.zeros_at_start {
        format!("cloudy-agent: formatting blank disk {device} as ext4 (label {DATA_LABEL}) for the node's state")
    } else {
        format!(
            "cloudy-agent: ERASING {device} (held: {}) as the seed's [storage] erase_existing_data says; formatting it as ext4 (label {DATA_LABEL})",
            probe.signatures.join(", ")
        )
    };
    println!("{said}");
    tracing::warn!("{said}");
    if !probe.signatures.is_empty() {
        run(
            "erasing signatures on",
            device,
            Command::new("wipefs").args(["-q", "-a", device]),
        )?;
    }
    run(
        "formatting",
        device,
        Command::new("mkfs.ext4").args(["-q", "-F", "-L", DATA_LABEL, "-m", "1", device]),
    )
}

/// Mounts the disk at DATA_MOUNT and its `var-lib-cloudy` over `/var/lib/cloudy`. On a new disk
/// the directory starts with what the image put in `/var/lib/cloudy`.
fn mount_state(device: &str) -> Result<(), StorageError> {
    use nix::mount::{mount, MsFlags};
    let failed = |what, detail: String| StorageError::Failed {
        what,
        device: device.into(),
        detail,
    };
    // A journal replay or a clean check takes a moment; a damaged filesystem is reported, not
    // mounted (exit 0 clean, 1 corrected).
    let fsck = Command::new("e2fsck")
        .args(["-p", device])
        .status()
        .map_err(|e| failed("checking", e.to_string()))?;
    if !matches!(fsck.code(), Some(0) | Some(1)) {
        return Err(failed(
            "checking",
            format!("e2fsck -p exited {fsck}; fix: run `e2fsck {device}` by hand"),
        ));
    }
    std::fs::create_dir_all(DATA_MOUNT).map_err(|e| failed("creating", e.to_string()))?;
    mount(
        Some(device),
        DATA_MOUNT,
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME,
        None::<&str>,
    )
    .map_err(|e| failed("mounting", format!("{e} (at {DATA_MOUNT})")))?;
    let dir = Path::new(DATA_MOUNT).join(STATE_SUBDIR);
    let result = (|| {
        if !dir.exists() {
            let tmp = Path::new(DATA_MOUNT).join(format!(".{STATE_SUBDIR}.new"));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).map_err(|e| failed("creating", e.to_string()))?;
            if Path::new(STATE_DIR).exists() {
                run(
                    "copying /var/lib/cloudy to",
                    device,
                    Command::new("cp")
                        .args(["-a", &format!("{STATE_DIR}/.")])
                        .arg(&tmp),
                )?;
            }
            std::fs::rename(&tmp, &dir).map_err(|e| failed("renaming", e.to_string()))?;
        }
        std::fs::create_dir_all(STATE_DIR).map_err(|e| failed("creating", e.to_string()))?;
        mount(
            Some(&dir),
            STATE_DIR,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| failed("bind-mounting", format!("{e} (onto {STATE_DIR})")))
    })();
    if result.is_err() {
        let _ = nix::mount::umount(DATA_MOUNT);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(format_if_blank: bool, erase: bool) -> Storage {
        Storage {
            device: Some("/dev/vdb".into()),
            format_if_blank,
            erase_existing_data: erase,
            on_boot_stick: false,
        }
    }

    fn blank() -> Probe {
        Probe {
            signatures: vec![],
            label: None,
            zeros_at_start: true,
        }
    }

    #[test]
    fn a_blank_disk_is_formatted_only_when_the_seed_says_so() {
        assert_eq!(decide(&blank(), &named(true, false)), Decision::Format);
        let Decision::Refuse { problem, fix } = decide(&blank(), &named(false, false)) else {
            panic!("formatted without format_if_blank");
        };
        assert!(problem.contains("blank"), "{problem}");
        assert!(fix.contains("format_if_blank = true"), "{fix}");
    }

    #[test]
    fn a_disk_with_data_is_refused_and_says_what_it_holds() {
        let ext4 = Probe {
            signatures: vec!["ext4".into()],
            label: Some("photos".into()),
            zeros_at_start: false,
        };
        let dos = Probe {
            signatures: vec!["dos".into()],
            label: None,
            zeros_at_start: false,
        };
        // No signature known, but not zeros either: still not blank.
        let unknown = Probe {
            signatures: vec![],
            label: None,
            zeros_at_start: false,
        };
        for p in [&ext4, &dos, &unknown] {
            let Decision::Refuse { problem, fix } = decide(p, &named(true, false)) else {
                panic!("{p:?} formatted with only format_if_blank");
            };
            assert!(problem.contains("not formatted"), "{problem}");
            for s in &p.signatures {
                assert!(problem.contains(s.as_str()), "{problem}");
            }
            assert!(fix.contains("erase_existing_data"), "{fix}");
        }
        // Named, and the seed says to erase: formatted.
        assert_eq!(decide(&ext4, &named(true, true)), Decision::Format);
        assert_eq!(decide(&unknown, &named(true, true)), Decision::Format);
    }

    #[test]
    fn a_cloudy_data_disk_is_used_never_reformatted() {
        let ours = Probe {
            signatures: vec!["ext4".into()],
            label: Some(DATA_LABEL.into()),
            zeros_at_start: false,
        };
        for s in [named(false, false), named(true, false), named(true, true)] {
            assert_eq!(decide(&ours, &s), Decision::Use, "{s:?}");
        }
    }

    #[test]
    fn probe_output_is_read() {
        assert_eq!(parse_wipefs("dos\next4\ndos\n"), vec!["dos", "ext4"]);
        assert!(parse_wipefs("").is_empty());
        let b = parse_blkid(
            "DEVNAME=/dev/vdb\nLABEL=cloudy-data\nUUID=x\nTYPE=ext4\nUSAGE=filesystem\n",
        );
        assert_eq!(b.label.as_deref(), Some(DATA_LABEL));
        assert_eq!(b.types, vec!["ext4"]);
        assert_eq!(parse_blkid("PTUUID=1\nPTTYPE=gpt\n").types, vec!["gpt"]);
    }

    #[test]
    fn the_state_line_says_whether_state_is_kept() {
        let gone = State::not_kept(None);
        assert_eq!(gone.line(), NOT_KEPT);
        let refused = State::not_kept(Some("/dev/vdb: it holds data: ext4".into()));
        assert!(refused.line().contains(NOT_KEPT) && refused.line().contains("ext4"));
        let kept = kept_on("/dev/vdb");
        assert_eq!(
            kept.line(),
            "state is kept on data disk /dev/vdb (label cloudy-data)"
        );
        assert!(is_live_system("BOOT_IMAGE=/live/vmlinuz boot=live quiet"));
        let installed = installed_state(
            "22 1 254:2 / / rw,relatime shared:1 - ext4 /dev/vda2 rw\n\
             30 22 254:4 / /var/lib/cloudy rw,relatime shared:9 - ext4 /dev/vda4 rw\n",
        );
        assert_eq!(
            installed.line(),
            "state is kept on the data partition /dev/vda4 (kept across updates)"
        );
        assert_eq!(installed.device.as_deref(), Some("/dev/vda4"));
        let one_fs = installed_state("22 1 254:2 / / rw,relatime shared:1 - ext4 /dev/vda2 rw\n");
        assert_eq!(one_fs.line(), "state is kept on the root filesystem");
        assert!(!is_live_system("root=UUID=1 ro quiet"));
    }

    /// The decision on disk images made with the real tools (wipefs, blkid and mkfs.ext4 read
    /// and write image files as they do disks): zeros are blank, a partition table or a
    /// foreign filesystem is refused even with format_if_blank, a formatted disk is used.
    #[test]
    fn real_disk_images_are_probed_and_decided() {
        let d = tempfile::tempdir().unwrap();
        let img = |name: &str| {
            let p = d.path().join(name);
            std::fs::write(&p, vec![0u8; 8 << 20]).unwrap();
            p.display().to_string()
        };
        let zeros = img("zeros.raw");
        let p = probe(&zeros).unwrap();
        assert_eq!(p, blank());
        assert_eq!(decide(&p, &named(true, false)), Decision::Format);

        let table = img("table.raw");
        let mut c = Command::new("sfdisk");
        c.args(["-q", &table]).stdin(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"label: dos\nstart=2048, type=83\n")
            .unwrap();
        assert!(child.wait().unwrap().success());
        let p = probe(&table).unwrap();
        assert!(p.signatures.contains(&"dos".to_string()), "{p:?}");
        assert!(matches!(
            decide(&p, &named(true, false)),
            Decision::Refuse { .. }
        ));

        let photos = img("photos.raw");
        run(
            "formatting",
            &photos,
            Command::new("mkfs.ext4").args(["-q", "-F", "-L", "photos", &photos]),
        )
        .unwrap();
        let p = probe(&photos).unwrap();
        assert!(p.signatures.contains(&"ext4".to_string()), "{p:?}");
        assert!(matches!(
            decide(&p, &named(true, false)),
            Decision::Refuse { .. }
        ));

        // What the node does with a blank disk it may format: then it is used, not formatted again.
        format(&zeros, &blank()).unwrap();
        let p = probe(&zeros).unwrap();
        assert_eq!(p.label.as_deref(), Some(DATA_LABEL));
        assert_eq!(decide(&p, &named(true, true)), Decision::Use);
    }

    /// A private root mounts nothing and records where its state is; status reads it back.
    #[test]
    fn settle_records_the_state_for_status() {
        let d = tempfile::tempdir().unwrap();
        let sys = System::new(d.path());
        assert!(line(&sys).contains("not checked yet"));
        let s = settle(&sys, Some(&named(true, false)));
        assert!(s.kept);
        assert_eq!(read(&sys.path(STATE_FILE)), Some(s.clone()));
        assert_eq!(line(&sys), s.line());
    }
}
