//! A data partition on the USB stick a live node boots from. The ISO is hybrid: written to a
//! stick with dd, its first sectors carry an MBR whose entries all lie inside the ISO image (an
//! entry over the whole image, one over the EFI image; xorriso's GPT beside it is not the
//! kernel's, its MBR not being protective). Everything after the image is free. On the first
//! boot that asks for it (`[storage] on_boot_stick`, or `cloudy.persist=1` from the boot menu)
//! one more MBR entry is appended over that free space and formatted ext4, label `cloudy-data`;
//! later boots find it by its label like any data disk.
//!
//! The ISO's bytes are never written: only the free MBR slot (16 bytes of sector 0, which is
//! the ISO's system area, not its filesystem) changes, and sfdisk is told neither to wipe
//! signatures nor to re-read the table (the medium is mounted); the new partition alone is
//! announced to the kernel with partx.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cloudy_model::seed::DATA_LABEL;
use serde::Deserialize;

/// Where live-boot mounts the medium it booted from.
pub const MEDIUM: &str = "/run/live/medium";
/// The kernel option the boot menu's "keep state on this USB stick" entry adds.
pub const PERSIST_OPTION: &str = "cloudy.persist=1";
/// Partitions start on a MiB boundary (512-byte sectors).
const ALIGN: u64 = 2048;
/// Less than this after the ISO is not worth a partition: Tahoe shares and Syncthing folders
/// live in the state too.
pub const MIN_FREE_SECTORS: u64 = 64 * 2048;
/// An MBR entry holds 32-bit sector numbers.
const MBR_LIMIT: u64 = u32::MAX as u64;

#[derive(Debug, thiserror::Error)]
pub enum StickError {
    #[error("{medium}: {problem}; nothing was written; fix: {fix}")]
    Refused {
        medium: String,
        problem: String,
        fix: String,
    },
    #[error("{what} {disk}: {detail}")]
    Failed {
        what: &'static str,
        disk: String,
        detail: String,
    },
}

/// Whether this boot asks for state on the boot stick from its kernel command line.
pub fn asked_on_cmdline(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == PERSIST_OPTION)
}

/// A partition of the stick's table, as `sfdisk --json` gives it (512-byte sectors).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Part {
    pub start: u64,
    pub size: u64,
    #[serde(rename = "type", default)]
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Table {
    pub label: String,
    #[serde(default)]
    pub partitions: Vec<Part>,
}

#[derive(Deserialize)]
struct SfdiskJson {
    partitiontable: Table,
}

pub fn parse_sfdisk_json(text: &str) -> Result<Table, String> {
    serde_json::from_str::<SfdiskJson>(text)
        .map(|j| j.partitiontable)
        .map_err(|e| e.to_string())
}

/// Where the new partition goes, in 512-byte sectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub start: u64,
    pub size: u64,
    /// The entry (1-based) is there already: an earlier boot made it and stopped before its
    /// filesystem was made. It is formatted only if blank.
    pub existing: Option<usize>,
}

/// Why no partition can be made; both said to the user.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub problem: String,
    pub fix: String,
}

/// Where a partition goes on a stick of `disk_sectors` whose first `iso_sectors` hold the ISO,
/// or why none may. Entries starting inside the ISO are its own (the hybrid MBR's); any other
/// entry means the space after the ISO is somebody's, and nothing is touched.
pub fn plan(table: &Table, disk_sectors: u64, iso_sectors: u64) -> Result<Plan, Refusal> {
    if table.label != "dos" {
        return Err(Refusal {
            problem: format!(
                "its partition table is {:?}, not the hybrid ISO's MBR",
                table.label
            ),
            fix: "write the ISO to the stick as it is (dd if=cloudy.iso of=/dev/sdX), or use a disk labelled cloudy-data".into(),
        });
    }
    let mut end = iso_sectors;
    for p in &table.partitions {
        if p.start < iso_sectors {
            end = end.max(p.start + p.size);
        }
    }
    let start = end.div_ceil(ALIGN) * ALIGN;
    let last = disk_sectors.min(MBR_LIMIT);
    let after: Vec<(usize, &Part)> = table
        .partitions
        .iter()
        .enumerate()
        .filter(|(_, p)| p.start >= iso_sectors)
        .collect();
    if let [(i, p)] = after[..] {
        if p.start == start && p.kind == "83" && p.start + p.size <= last {
            return Ok(Plan {
                start,
                size: p.size,
                existing: Some(i + 1),
            });
        }
    }
    if let Some((_, p)) = after.first() {
        return Err(Refusal {
            problem: format!(
                "the free space after the ISO is not at the end: a partition (type {}) lies at sectors {}..{}",
                p.kind,
                p.start,
                p.start + p.size
            ),
            fix: format!(
                "label that partition's filesystem {DATA_LABEL} to keep the state there, or write the ISO to the stick again (dd) to free the space after it"
            ),
        });
    }
    if table.partitions.len() >= 4 {
        return Err(Refusal {
            problem: "its MBR has no free entry".into(),
            fix: "write the ISO to the stick again (dd), or use a disk labelled cloudy-data".into(),
        });
    }
    let free = last.saturating_sub(start);
    if free < MIN_FREE_SECTORS {
        return Err(Refusal {
            problem: format!(
                "no free space: {} MiB after the ISO (at least {} MiB needed)",
                free / 2048,
                MIN_FREE_SECTORS / 2048
            ),
            fix: "write the ISO to a larger stick (1 GiB or more), or use a disk labelled cloudy-data".into(),
        });
    }
    Ok(Plan {
        start,
        size: free,
        existing: None,
    })
}

/// The device live-boot mounted the medium from, from /proc/self/mountinfo's text.
pub fn medium_source(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-")?;
        (f.get(4) == Some(&MEDIUM))
            .then(|| f.get(sep + 2).map(|s| s.to_string()))
            .flatten()
    })
}

/// The whole disk a block device belongs to (`sda` for `/dev/sda1` or `/dev/sda`).
pub fn whole_disk(dev: &str) -> Option<String> {
    let name = Path::new(dev).file_name()?.to_str()?.to_string();
    let sys = PathBuf::from("/sys/class/block").join(&name);
    if sys.join("partition").exists() {
        let real = std::fs::canonicalize(&sys).ok()?;
        return Some(real.parent()?.file_name()?.to_str()?.to_string());
    }
    sys.exists().then_some(name)
}

/// The disk the node booted from, when it is one (not a network boot).
pub fn medium_disk() -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    whole_disk(&medium_source(&info)?)
}

/// Whether `device` is a partition of the disk the node booted from.
pub fn on_medium(device: &str) -> bool {
    match (whole_disk(device), medium_disk()) {
        (Some(d), Some(m)) => d == m && Path::new(device) != Path::new("/dev").join(&m),
        _ => false,
    }
}

/// The ISO image's length in 512-byte sectors, from its primary volume descriptor.
pub fn iso_sectors(disk: &Path) -> std::io::Result<Option<u64>> {
    let mut f = std::fs::File::open(disk)?;
    f.seek(SeekFrom::Start(16 * 2048))?;
    let mut pvd = [0u8; 2048];
    f.read_exact(&mut pvd)?;
    if pvd[0] != 1 || &pvd[1..6] != b"CD001" {
        return Ok(None);
    }
    let blocks = u32::from_le_bytes([pvd[80], pvd[81], pvd[82], pvd[83]]) as u64;
    let block = u16::from_le_bytes([pvd[128], pvd[129]]) as u64;
    Ok(Some(blocks * block / 512))
}

/// The partition's device name: `sda3`, `mmcblk0p3`, `nvme0n1p3`.
pub fn partition_path(disk: &str, n: usize) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("/dev/{disk}p{n}")
    } else {
        format!("/dev/{disk}{n}")
    }
}

/// Appends `plan`'s partition to the MBR of `disk` (a device or an image file) with sfdisk,
/// writing nothing but that entry. Returns the new partition's number.
pub fn append(disk: &Path, plan: &Plan) -> Result<usize, StickError> {
    let failed = |what, detail: String| StickError::Failed {
        what,
        disk: disk.display().to_string(),
        detail,
    };
    let mut child = Command::new("sfdisk")
        .args([
            "--append",
            "--no-reread",
            "--no-tell-kernel",
            "--wipe",
            "never",
            "--wipe-partitions",
            "never",
            "-q",
        ])
        .arg(disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed("running sfdisk on", e.to_string()))?;
    {
        use std::io::Write;
        let mut i = child.stdin.take().expect("piped");
        writeln!(i, "start={}, size={}, type=83", plan.start, plan.size)
            .map_err(|e| failed("writing to sfdisk for", e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed("running sfdisk on", e.to_string()))?;
    if !out.status.success() {
        return Err(failed(
            "partitioning",
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let table = read_table(disk)?;
    table
        .partitions
        .iter()
        .position(|p| p.start == plan.start)
        .map(|i| i + 1)
        .ok_or_else(|| failed("partitioning", "the new entry is not in the table".into()))
}

pub fn read_table(disk: &Path) -> Result<Table, StickError> {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(disk)
        .output()
        .map_err(|e| StickError::Failed {
            what: "running sfdisk --json on",
            disk: disk.display().to_string(),
            detail: e.to_string(),
        })?;
    parse_sfdisk_json(&String::from_utf8_lossy(&out.stdout)).map_err(|e| StickError::Failed {
        what: "reading the partition table of",
        disk: disk.display().to_string(),
        detail: format!("{e}: {}", String::from_utf8_lossy(&out.stderr).trim()),
    })
}

/// Makes the data partition on the stick this live node booted from and returns its device,
/// unformatted, and whether it is new (an old one, from a boot that stopped before formatting
/// it, may hold something and is formatted only if blank); or says why not, having written
/// nothing.
pub fn make_partition() -> Result<(String, bool), StickError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let refused = |medium: &str, problem: &str, fix: &str| StickError::Refused {
        medium: medium.into(),
        problem: problem.into(),
        fix: fix.into(),
    };
    let elsewhere =
        "attach a disk labelled cloudy-data, or name one in the seed's [storage] device";
    let Some(source) = medium_source(&info) else {
        return Err(refused(
            "the boot medium",
            &format!("not found ({MEDIUM} is not mounted: a network boot keeps nothing on it)"),
            elsewhere,
        ));
    };
    let Some(disk) = whole_disk(&source).filter(|_| source.starts_with("/dev/")) else {
        return Err(refused(
            &source,
            "the live system was not booted from a disk (copied to RAM or fetched over the network)",
            elsewhere,
        ));
    };
    let sys = PathBuf::from("/sys/class/block").join(&disk);
    let read_only = std::fs::read_to_string(sys.join("ro")).is_ok_and(|s| s.trim() == "1");
    if disk.starts_with("sr") || read_only {
        return Err(refused(
            &format!("/dev/{disk}"),
            "the node booted from a CD/DVD (or a read-only medium), which cannot take a partition",
            &format!("write the ISO to a USB stick (dd if=cloudy.iso of=/dev/sdX) and boot from it, or {elsewhere}"),
        ));
    }
    let dev = PathBuf::from("/dev").join(&disk);
    let failed = |what, detail: String| StickError::Failed {
        what,
        disk: dev.display().to_string(),
        detail,
    };
    let sectors: u64 = std::fs::read_to_string(sys.join("size"))
        .map_err(|e| failed("reading the size of", e.to_string()))?
        .trim()
        .parse()
        .map_err(|e: std::num::ParseIntError| failed("reading the size of", e.to_string()))?;
    let iso = iso_sectors(&dev)
        .map_err(|e| failed("reading", e.to_string()))?
        .ok_or_else(|| {
            refused(
                &dev.display().to_string(),
                "it does not start with an ISO image",
                elsewhere,
            )
        })?;
    let table = read_table(&dev)?;
    let plan = plan(&table, sectors, iso).map_err(|r| StickError::Refused {
        medium: dev.display().to_string(),
        problem: r.problem,
        fix: r.fix,
    })?;
    let n = match plan.existing {
        Some(n) => {
            tracing::info!("the boot stick's partition {n} is there from an earlier boot");
            n
        }
        None => {
            let said = format!(
                "cloudy-agent: making a {} MiB partition (ext4, label {DATA_LABEL}) in the free space of the boot stick {} for the node's state; the ISO on it is not touched",
                plan.size / 2048,
                dev.display()
            );
            println!("{said}");
            tracing::warn!("{said}");
            append(&dev, &plan)?
        }
    };
    // The medium is mounted: the kernel cannot re-read the whole table, but takes one new
    // partition that overlaps none in use.
    let part = partition_path(&disk, n);
    let out = Command::new("partx")
        .args(["--add", "--nr", &n.to_string()])
        .arg(&dev)
        .output()
        .map_err(|e| failed("running partx on", e.to_string()))?;
    if !out.status.success() && !Path::new(&part).exists() {
        return Err(failed(
            "announcing the new partition of",
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let _ = Command::new("udevadm")
        .args(["settle", "-t", "10"])
        .status();
    for _ in 0..20 {
        if Path::new(&part).exists() {
            return Ok((part, plan.existing.is_none()));
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    Err(failed(
        "waiting for the new partition of",
        format!("{part} did not appear"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of a built pc-686-pae ISO written to a stick (`sfdisk --json`): the whole
    /// image (type 0) and the EFI image inside it.
    const ISO_TABLE: &str = r#"{"partitiontable": {"label": "dos", "id": "0xcda83f64",
        "device": "stick.raw", "unit": "sectors", "sectorsize": 512, "partitions": [
        {"node": "stick.raw1", "start": 0, "size": 739328, "type": "0", "bootable": true},
        {"node": "stick.raw2", "start": 248, "size": 1928, "type": "ef"}]}}"#;
    const GIB: u64 = 2 * 1024 * 1024;

    #[test]
    fn the_partition_goes_after_the_iso_aligned_to_the_end() {
        let t = parse_sfdisk_json(ISO_TABLE).unwrap();
        let p = plan(&t, GIB, 739_328).unwrap();
        assert_eq!(p.start, 739_328);
        assert_eq!(p.start + p.size, GIB);
        assert_eq!(p.existing, None);
        // An image end off the MiB grid goes up to the next MiB.
        let p = plan(&t, GIB, 739_000).unwrap();
        assert_eq!(p.start, 739_328);
        assert_eq!(p.start % ALIGN, 0);
    }

    #[test]
    fn a_stick_without_free_space_at_the_end_is_refused() {
        let t = parse_sfdisk_json(ISO_TABLE).unwrap();
        // dd'd onto a stick just larger than the image.
        let r = plan(&t, 739_328 + 10 * 2048, 739_328).unwrap_err();
        assert!(r.problem.contains("no free space"), "{r:?}");
        assert!(r.fix.contains("larger stick"), "{r:?}");
        // Somebody's partition after the ISO: its space is not ours to take.
        let mut other = t.clone();
        other.partitions.push(Part {
            start: 1_500_000,
            size: 100_000,
            kind: "b".into(),
        });
        let r = plan(&other, GIB, 739_328).unwrap_err();
        assert!(r.problem.contains("not at the end"), "{r:?}");
        // Not the hybrid MBR at all.
        let gpt = Table {
            label: "gpt".into(),
            partitions: vec![],
        };
        assert!(plan(&gpt, GIB, 739_328)
            .unwrap_err()
            .problem
            .contains("gpt"));
        let mut full = t.clone();
        full.partitions.push(Part {
            start: 300,
            size: 10,
            kind: "0".into(),
        });
        full.partitions.push(Part {
            start: 400,
            size: 10,
            kind: "0".into(),
        });
        assert!(plan(&full, GIB, 739_328)
            .unwrap_err()
            .problem
            .contains("no free entry"));
    }

    #[test]
    fn the_medium_and_the_option_are_read() {
        let info = "25 1 0:21 / /run/live/medium ro,noatime shared:9 - iso9660 /dev/sda1 ro\n\
                    26 1 0:22 / /run/live/rootfs/filesystem.squashfs ro - squashfs /dev/loop0 ro\n";
        assert_eq!(medium_source(info).as_deref(), Some("/dev/sda1"));
        assert_eq!(medium_source("1 0 0:1 / / rw - ext4 /dev/vda1 rw\n"), None);
        assert!(asked_on_cmdline("boot=live cloudy.persist=1 quiet"));
        assert!(!asked_on_cmdline("boot=live cloudy.persist=0"));
        assert_eq!(partition_path("sda", 3), "/dev/sda3");
        assert_eq!(partition_path("mmcblk0", 3), "/dev/mmcblk0p3");
    }

    /// The real tools on a real hybrid ISO (xorriso with ISOLINUX's MBR and a GPT, as the
    /// image's iso stage makes it) copied into a larger file as dd would put it on a stick:
    /// the partition is appended after the image and not one byte of the image changes but
    /// the new MBR entry.
    #[test]
    fn a_partition_is_appended_to_a_hybrid_iso_leaving_the_iso_intact() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("isolinux")).unwrap();
        std::fs::create_dir_all(tree.join("live")).unwrap();
        std::fs::copy(
            "/usr/lib/ISOLINUX/isolinux.bin",
            tree.join("isolinux/isolinux.bin"),
        )
        .expect("isolinux (make deps) for a hybrid ISO");
        std::fs::write(tree.join("live/filesystem.squashfs"), vec![7u8; 3 << 20]).unwrap();
        let iso = d.path().join("cloudy.iso");
        let o = Command::new("xorriso")
            .args(["-as", "mkisofs", "-o"])
            .arg(&iso)
            .args(["-volid", "CLOUDY", "-isohybrid-mbr"])
            .arg("/usr/lib/ISOLINUX/isohdpfx.bin")
            .args([
                "-eltorito-boot",
                "isolinux/isolinux.bin",
                "-no-emul-boot",
                "-boot-load-size",
                "4",
                "-boot-info-table",
                "-isohybrid-gpt-basdat",
            ])
            .arg(&tree)
            .output()
            .expect("xorriso (make deps)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let image = std::fs::read(&iso).unwrap();
        let stick = d.path().join("stick.raw");
        std::fs::write(&stick, &image).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&stick)
            .unwrap();
        f.set_len(256 << 20).unwrap();
        drop(f);

        let sectors = iso_sectors(&stick).unwrap().unwrap();
        assert_eq!(sectors * 512, image.len() as u64);
        let table = read_table(&stick).unwrap();
        let p = plan(&table, (256 << 20) / 512, sectors).unwrap();
        let n = append(&stick, &p).unwrap();
        assert_eq!(n, table.partitions.len() + 1);

        let after = std::fs::read(&stick).unwrap();
        let entry = 446 + 16 * (n - 1);
        let changed: Vec<usize> = (0..image.len())
            .filter(|i| image[*i] != after[*i])
            .collect();
        assert!(!changed.is_empty());
        assert!(
            changed.iter().all(|i| (entry..entry + 16).contains(i)),
            "bytes outside the new MBR entry changed: {:?}",
            &changed[..changed.len().min(20)]
        );
        let t = read_table(&stick).unwrap();
        assert_eq!(t.partitions[n - 1].start, p.start);
        assert_eq!(t.partitions[n - 1].kind, "83");
        // A boot that stopped before formatting it finds its entry again, not a second one.
        let again = plan(&t, (256 << 20) / 512, sectors).unwrap();
        assert_eq!(again.existing, Some(n));
        assert_eq!(again.start, p.start);
    }
}
