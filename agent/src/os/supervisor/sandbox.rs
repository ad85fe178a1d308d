//! A service program's own view of the file system: the whole tree read-only but for the
//! directories it declares, plus an empty private `/tmp` and `/dev/shm`. Made in a mount
//! namespace of its own, in the child between fork and exec, while it is still root; then it
//! becomes the service user.
//!
//! Everything the child uses is made here before the fork (paths as C strings): between fork
//! and exec only system calls run, no allocation.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
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

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("writable directory {0}: {1}")]
    Writable(PathBuf, std::io::Error),
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
    #[error("path {0} holds a NUL byte")]
    Nul(PathBuf),
}

/// What the child does before exec, fixed in the parent.
#[derive(Debug)]
pub struct Sandbox {
    uid: u32,
    gid: u32,
    /// Bound read-write over the read-only tree (canonical, existing directories).
    writable: Vec<CString>,
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
        for w in &self.writable {
            // A bind copies the read-only flag of the mount it comes from: cleared after.
            mount(
                Some(w.as_c_str()),
                w.as_c_str(),
                none,
                MsFlags::MS_BIND,
                none,
            )?;
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
        // After the binds: a directory entered before would stay on the read-only mount.
        if let Some(d) = &self.cwd {
            nix::unistd::chdir(d.as_c_str())?;
        }
        nix::unistd::setgroups(&[])?;
        nix::unistd::setgid(Gid::from_raw(self.gid))?;
        nix::unistd::setuid(Uid::from_raw(self.uid))?;
        Ok(())
    }
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
    let (mut ro_root, mut rw, mut tmp) = (false, Vec::new(), Vec::new());
    for line in info.lines() {
        let Some((mine, fs)) = line.split_once(" - ") else {
            continue;
        };
        let f: Vec<&str> = mine.split(' ').collect();
        let (Some(&point), Some(&opts)) = (f.get(4), f.get(5)) else {
            continue;
        };
        let writable = opts.split(',').any(|o| o == "rw");
        if point == "/" {
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
    parts
}
