//! A service program's own view of the file system: the whole tree read-only but for the
//! directories it declares, plus an empty private `/tmp` and `/dev/shm`, and the directories it
//! must not even see (the agent's state: node keys, other services) replaced by an empty
//! read-only tmpfs holding only the mount points of its own. Made in a mount namespace of its
//! own, in the child between fork and exec, while it is still root; then it becomes the service
//! user.
//!
//! Everything the child uses is made here before the fork (paths as C strings): between fork
//! and exec only system calls run, no allocation.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};

/// `mount_setattr(2)` flags (uapi `<linux/mount.h>`), which neither nix 0.27 nor libc name.
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// `struct mount_attr`, version 0 (32 bytes).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Replaced by an empty tmpfs of the service's own, where they exist: the world-writable
/// places every program expects, shared with nobody.
pub const PRIVATE_TMP: [&str; 2] = ["/tmp", "/dev/shm"];

/// The source name of a hiding tmpfs, so that `describe` tells it from any other tmpfs.
const HIDDEN: &CStr = c"cloudy-hidden";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("writable directory {0}: {1}")]
    Writable(PathBuf, std::io::Error),
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
    #[error("path {0} holds a NUL byte")]
    Nul(PathBuf),
    #[error("more than {MAX_WRITABLE} writable directories")]
    TooMany,
    #[error("hidden directory {0} lies below writable {1}")]
    HiddenInWritable(PathBuf, PathBuf),
}

/// At most this many writable directories: the child keeps their descriptors on its stack.
pub const MAX_WRITABLE: usize = 8;

/// What the child does before exec, fixed in the parent.
#[derive(Debug)]
pub struct Sandbox {
    uid: u32,
    gid: u32,
    /// Bound read-write over the read-only tree (canonical, existing directories).
    writable: Vec<CString>,
    /// Covered by an empty tmpfs (canonical, existing directories; missing ones are skipped).
    hidden: Vec<CString>,
    /// Made in those tmpfs, in order: the mount points of the writable directories below them.
    mount_points: Vec<CString>,
    /// Mounted as empty tmpfs: those of [`PRIVATE_TMP`] that exist and hold no writable directory.
    tmpfs: Vec<CString>,
    cwd: Option<CString>,
    /// Where temporary files go when `/tmp` could not be made private (a writable directory
    /// lies below it, as a test's private root does): the first writable directory.
    tmpdir: Option<PathBuf>,
}

fn c_path(p: &Path) -> Result<CString, SandboxError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| SandboxError::Nul(p.to_path_buf()))
}

impl Sandbox {
    /// Every writable directory must exist: a missing one is an error (the supervisor retries)
    /// rather than a program that starts and cannot write where it expects.
    pub fn new(
        user: (u32, u32),
        writable: &[PathBuf],
        hidden: &[PathBuf],
        cwd: Option<&Path>,
    ) -> Result<Sandbox, SandboxError> {
        let mut dirs = Vec::new();
        for w in writable {
            // Canonical, so a directory below /tmp is seen as such. The service user cannot
            // swap these (their parents are root's), and a bind grants no permission anyway.
            let real =
                std::fs::canonicalize(w).map_err(|e| SandboxError::Writable(w.clone(), e))?;
            if !real.is_dir() {
                return Err(SandboxError::NotADirectory(real));
            }
            dirs.push(real);
        }
        let hidden: Vec<PathBuf> = hidden
            .iter()
            .filter_map(|h| std::fs::canonicalize(h).ok())
            .filter(|h| h.is_dir())
            .collect();
        let mut mount_points: Vec<PathBuf> = Vec::new();
        for h in &hidden {
            if let Some(w) = dirs.iter().find(|w| h.starts_with(w)) {
                return Err(SandboxError::HiddenInWritable(h.clone(), w.clone()));
            }
            for w in dirs.iter().filter(|w| w.starts_with(h)) {
                // Every directory from below the hidden one down to the writable one.
                let mut at = h.clone();
                for c in w.strip_prefix(h).expect("below it").components() {
                    at.push(c);
                    if !mount_points.contains(&at) {
                        mount_points.push(at.clone());
                    }
                }
            }
        }
        if dirs.len() > MAX_WRITABLE {
            return Err(SandboxError::TooMany);
        }
        let mut tmpfs = Vec::new();
        let mut tmpdir = None;
        for t in PRIVATE_TMP.map(Path::new) {
            if dirs.iter().any(|d| d.starts_with(t)) {
                tmpdir = dirs.first().cloned();
            } else if t.is_dir() {
                tmpfs.push(c_path(t)?);
            }
        }
        Ok(Sandbox {
            uid: user.0,
            gid: user.1,
            writable: dirs.iter().map(|d| c_path(d)).collect::<Result<_, _>>()?,
            hidden: hidden.iter().map(|h| c_path(h)).collect::<Result<_, _>>()?,
            mount_points: mount_points
                .iter()
                .map(|m| c_path(m))
                .collect::<Result<_, _>>()?,
            tmpfs,
            cwd: cwd.map(c_path).transpose()?,
            tmpdir,
        })
    }

    pub fn tmpdir(&self) -> Option<&Path> {
        self.tmpdir.as_deref()
    }

    /// In the child, between fork and exec, as root: the mount namespace, then the user.
    /// Only system calls on memory made before the fork (async-signal-safe).
    pub fn enter(&self) -> nix::Result<()> {
        let none: Option<&CStr> = None;
        unshare(CloneFlags::CLONE_NEWNS)?;
        // Nothing we mount goes back to the agent's namespace, nothing of its comes in.
        mount(
            none,
            c"/",
            none,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            none,
        )?;
        // Every mount read-only, /proc, /sys and /dev included (device nodes still work).
        setattr(c"/", nix::libc::AT_RECURSIVE, MOUNT_ATTR_RDONLY, 0)?;
        // Each writable directory held open before a hiding tmpfs covers it (opened here, not
        // in the parent: a bind's source must be a mount of this namespace).
        let mut fds = [-1; MAX_WRITABLE];
        for (fd, w) in fds.iter_mut().zip(&self.writable) {
            *fd = open(
                w.as_c_str(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
        }
        for h in &self.hidden {
            mount(
                Some(HIDDEN),
                h.as_c_str(),
                Some(c"tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some(c"mode=0755,size=64k"),
            )?;
        }
        for m in &self.mount_points {
            match nix::unistd::mkdir(m.as_c_str(), Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        for h in &self.hidden {
            setattr(h, 0, MOUNT_ATTR_RDONLY, 0)?;
        }
        for (&fd, w) in fds.iter().zip(&self.writable) {
            // From the descriptor: the path may be under a hiding tmpfs by now. A bind copies
            // the read-only flag of the mount it comes from: cleared after.
            let mut buf = [0u8; 32];
            mount(
                Some(fd_path(fd, &mut buf)),
                w.as_c_str(),
                none,
                MsFlags::MS_BIND,
                none,
            )?;
            nix::unistd::close(fd)?;
            setattr(
                w,
                0,
                MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                MOUNT_ATTR_RDONLY,
            )?;
        }
        for t in &self.tmpfs {
            mount(
                Some(c"tmpfs"),
                t.as_c_str(),
                Some(c"tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(c"mode=1777"),
            )?;
        }
        nix::unistd::setgroups(&[])?;
        nix::unistd::setgid(Gid::from_raw(self.gid))?;
        nix::unistd::setuid(Uid::from_raw(self.uid))?;
        // After the binds (a directory entered before would stay on the read-only mount), and
        // as the service user, as std would: it must be a directory that user may enter.
        if let Some(d) = &self.cwd {
            nix::unistd::chdir(d.as_c_str())?;
        }
        Ok(())
    }
}

/// `/proc/self/fd/<fd>` written into `buf` (no allocation: it runs between fork and exec).
fn fd_path(fd: i32, buf: &mut [u8; 32]) -> &CStr {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (fd.unsigned_abs(), 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (i, d) in digits[..len].iter().rev().enumerate() {
        buf[PREFIX.len() + i] = *d;
    }
    buf[PREFIX.len() + len] = 0;
    CStr::from_bytes_until_nul(&buf[..]).expect("NUL-terminated above")
}

/// `mount_setattr(2)` on one mount (or, with `AT_RECURSIVE`, all below it).
fn setattr(path: &CStr, flags: nix::libc::c_int, set: u64, clear: u64) -> nix::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a plain system call (async-signal-safe) on a NUL-terminated path and a struct
    // that both outlive it; the kernel reads `size_of::<MountAttr>()` bytes of `attr`.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_mount_setattr,
            nix::libc::AT_FDCWD,
            path.as_ptr(),
            flags as nix::libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(r).map(drop)
}

/// What the mount namespace of process `pid` confines it to, read from the kernel
/// (`/proc/<pid>/mountinfo`): `ro-root`, the read-write mounts and the private tmpfs. Empty if
/// it shares the agent's namespace.
pub fn describe(pid: u32) -> Vec<String> {
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).ok();
    let theirs = ns(&pid.to_string());
    if theirs.is_none() || theirs == ns("self") {
        return Vec::new();
    }
    let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
        return Vec::new();
    };
    let (mut ro_root, mut rw, mut tmp, mut hidden) = (false, Vec::new(), Vec::new(), Vec::new());
    for line in info.lines() {
        let Some((mine, fs)) = line.split_once(" - ") else {
            continue;
        };
        let f: Vec<&str> = mine.split(' ').collect();
        let (Some(&point), Some(&opts)) = (f.get(4), f.get(5)) else {
            continue;
        };
        let writable = opts.split(',').any(|o| o == "rw");
        let hiding = fs.split(' ').nth(1).map(str::as_bytes) == Some(HIDDEN.to_bytes());
        if hiding && fs.starts_with("tmpfs ") {
            hidden.push(point.to_string());
        } else if point == "/" {
            ro_root = !writable;
        } else if writable {
            if fs.starts_with("tmpfs ") && PRIVATE_TMP.contains(&point) {
                tmp.push(point.to_string());
            } else {
                rw.push(point.to_string());
            }
        }
    }
    // Some other namespace (a test's), not a sandbox of ours: nothing to say.
    if !ro_root {
        return Vec::new();
    }
    let mut parts = vec!["ro-root".to_string()];
    if !rw.is_empty() {
        parts.push(format!("rw: {}", rw.join(" ")));
    }
    if !tmp.is_empty() {
        parts.push(format!("tmpfs: {}", tmp.join(" ")));
    }
    if !hidden.is_empty() {
        parts.push(format!("hidden: {}", hidden.join(" ")));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_paths_are_written_without_allocating() {
        let mut buf = [0u8; 32];
        assert_eq!(fd_path(7, &mut buf), c"/proc/self/fd/7");
        assert_eq!(fd_path(1048575, &mut buf), c"/proc/self/fd/1048575");
        assert_eq!(fd_path(i32::MAX, &mut buf), c"/proc/self/fd/2147483647");
    }
}
