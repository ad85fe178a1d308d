//! Is this file a Cloudy image, and which kind? `customise` asks before it changes anything: a
//! path that is not one must be refused and left as it was, with what was found instead.
//!
//! The markers are the ones every build since the first has laid down, so older images are
//! recognised too:
//! - an ISO: the volume id `CLOUDY`, the application id `Cloudy community-cloud node` (both
//!   from `stages::iso`) and the Cloudy layer `/live/cloudy.squashfs`;
//! - an SD image: an MBR whose first partition is the FAT firmware partition and whose second
//!   is an ext4 root holding `/usr/bin/cloudy-agent` (the layer `stages::sdcard` copies in).
//!   The FAT label alone (`RASPIFIRM`) is Debian's raspi-firmware label, shared by other
//!   distributions' Pi images, so it is not enough.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::stages::iso::VOLUME_ID;

/// The application id `stages::iso` writes (ISO 9660 upper-cases it).
pub const APPLICATION_ID: &str = "CLOUDY COMMUNITY-CLOUD NODE";
/// The Cloudy layer on an ISO.
pub const ISO_LAYER: &str = "/live/cloudy.squashfs";
/// The agent on an SD image's root partition.
pub const SD_AGENT: &str = "/usr/bin/cloudy-agent";

const SECTOR: u64 = 512;
/// The primary volume descriptor: sector 16 of 2 KiB sectors.
const PVD_OFFSET: u64 = 16 * 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Image {
    Iso,
    /// An SD card image; the FAT firmware partition starts `fat_offset` bytes in.
    Sd {
        fat_offset: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum NotCloudy {
    #[error("{path}: no such file")]
    Missing { path: String },
    #[error("{path}: not a Cloudy image: found {found}")]
    Foreign { path: String, found: String },
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// What `path` is; an error says what was found instead of a Cloudy image.
pub fn identify(path: &Path) -> Result<Image, NotCloudy> {
    let p = path.display().to_string();
    let io = |source| NotCloudy::Io {
        path: p.clone(),
        source,
    };
    let foreign = |found: String| NotCloudy::Foreign {
        path: p.clone(),
        found,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(NotCloudy::Missing { path: p });
        }
        Err(e) => return Err(io(e)),
    };
    if !meta.is_file() {
        return Err(foreign("a directory or special file".into()));
    }
    if meta.len() == 0 {
        return Err(foreign("an empty file".into()));
    }
    let mut f = File::open(path).map_err(io)?;
    // An ISO from xorriso is also a hybrid disk image (an MBR): the ISO descriptor decides.
    if let Some(pvd) = read_at(&mut f, PVD_OFFSET, 2048).map_err(io)? {
        if pvd[0] == 1 && &pvd[1..6] == b"CD001" {
            let volume = text(&pvd[40..72]);
            let application = text(&pvd[574..702]);
            if volume != VOLUME_ID || application != APPLICATION_ID {
                return Err(foreign(format!(
                    "an ISO 9660 image with volume id {volume:?} and application id {application:?} (a Cloudy ISO has {VOLUME_ID:?} and {APPLICATION_ID:?})"
                )));
            }
            if !iso_has(path, ISO_LAYER) {
                return Err(foreign(format!(
                    "an ISO with Cloudy's volume id but without the Cloudy layer {ISO_LAYER}"
                )));
            }
            return Ok(Image::Iso);
        }
    }
    let Some(mbr) = read_at(&mut f, 0, 512).map_err(io)? else {
        return Err(foreign(format!(
            "{} bytes that are neither an ISO 9660 image nor a disk image",
            meta.len()
        )));
    };
    if mbr[510..] != [0x55, 0xaa] {
        return Err(foreign(format!(
            "neither an ISO 9660 image (no descriptor at 32 KiB) nor a disk image (no partition table); it starts with {}",
            mbr[..8].iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
        )));
    }
    let part = |i: usize| {
        let e = &mbr[446 + 16 * i..462 + 16 * i];
        let start = u64::from(u32::from_le_bytes(e[8..12].try_into().expect("4 bytes")));
        (e[4], start * SECTOR)
    };
    let (fat_type, fat_offset) = part(0);
    let (root_type, root_offset) = part(1);
    if !matches!(fat_type, 0x0b | 0x0c) || fat_offset == 0 {
        return Err(foreign(format!(
            "a disk image whose first partition is not a FAT partition (type 0x{fat_type:02x})"
        )));
    }
    if root_type != 0x83 || root_offset == 0 {
        return Err(foreign(format!(
            "a disk image whose second partition is not a Linux root (type 0x{root_type:02x})"
        )));
    }
    if !ext4_has(path, root_offset, SD_AGENT) {
        return Err(foreign(format!(
            "a disk image whose root partition holds no {SD_AGENT} (another system's SD image?)"
        )));
    }
    Ok(Image::Sd { fat_offset })
}

/// `len` bytes at `offset`, or None when the file is shorter.
fn read_at(f: &mut File, offset: u64, len: usize) -> std::io::Result<Option<Vec<u8>>> {
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len];
    match f.read_exact(&mut buf) {
        Ok(()) => Ok(Some(buf)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// An ISO 9660 a-characters field, without its space padding.
fn text(field: &[u8]) -> String {
    String::from_utf8_lossy(field).trim_end().to_string()
}

/// True when the ISO holds `file` (xorriso exits non-zero when -find finds no such path).
pub fn iso_has(iso: &Path, file: &str) -> bool {
    Command::new("xorriso")
        .arg("-indev")
        .arg(iso)
        .args(["-find", file])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True when the ext4 file system `offset` bytes into `img` holds `file`. debugfs opens it
/// read-only; it exits 0 either way, and prints an inode only for a file that exists.
fn ext4_has(img: &Path, offset: u64, file: &str) -> bool {
    Command::new("debugfs")
        .args(["-R", &format!("stat {file}")])
        .arg(format!("{}?offset={offset}", img.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Inode:"))
}
