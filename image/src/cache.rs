//! Content hashes, cache keys and the "write under a temporary name, rename on success" rule
//! that lets every stage be interrupted and resumed.

use sha2::{Digest, Sha256};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

pub fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Hash of a directory tree: relative paths, modes, symlink targets and file contents, in
/// sorted order, so the same tree gives the same key on any machine.
pub fn sha256_tree(root: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Sha256::new();
    let mut stack = vec![root.to_path_buf()];
    let mut entries = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir)? {
            let p = e?.path();
            let m = fs::symlink_metadata(&p)?;
            if m.is_dir() {
                stack.push(p.clone());
            }
            entries.push((p, m));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, m) in entries {
        let rel = p.strip_prefix(root).unwrap_or(&p);
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update(m.permissions().mode().to_le_bytes());
        if m.file_type().is_symlink() {
            h.update(fs::read_link(&p)?.as_os_str().as_encoded_bytes());
        } else if m.is_file() {
            h.update(sha256_file(&p)?.as_bytes());
        }
        h.update([0]);
    }
    Ok(hex::encode(h.finalize()))
}

/// `name.tmp` beside `name`: where a stage writes before it renames into place.
pub fn tmp_path(final_path: &Path) -> PathBuf {
    let mut s = final_path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Removes whatever an interrupted run left at `path` (file or directory).
pub fn remove_any(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            unmount_below(path);
            fs::remove_dir_all(path)
        }
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Detaches whatever is still mounted inside `dir`: a bootstrap killed mid-way (a timeout, a
/// power cut) leaves mmdebstrap's /proc, /sys and /dev/pts mounts in its temporary rootfs, and
/// removing that tree would otherwise fail on read-only files, or reach through a bind mount.
fn unmount_below(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    for m in mounts_below(&info, &dir) {
        let _ = std::process::Command::new("umount")
            .arg("--lazy")
            .arg(&m)
            .status();
    }
}

/// The mount points of a mountinfo text strictly inside `dir`, deepest first.
fn mounts_below(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount(p)))
        .filter(|p| p != dir && p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (b[i], oct) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Moves a finished temporary output to its final name, replacing an older one.
pub fn publish(tmp: &Path, final_path: &Path) -> std::io::Result<()> {
    if fs::symlink_metadata(final_path)
        .map(|m| m.is_dir())
        .unwrap_or(false)
    {
        fs::remove_dir_all(final_path)?;
    }
    fs::rename(tmp, final_path)
}

/// Writes a small file atomically (temp + fsync + rename).
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(d) = path.parent() {
        fs::create_dir_all(d)?;
    }
    let tmp = tmp_path(path);
    let mut f = fs::File::create(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// Sets every entry's mtime under `root` (and root itself) to `epoch`, without following
/// symlinks: ISO and FAT writers copy mtimes, and reproducible output needs them fixed.
pub fn set_tree_mtime(root: &Path, epoch: u64) -> std::io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let mut stack = vec![root.to_path_buf()];
    let mut all = vec![];
    while let Some(p) = stack.pop() {
        if fs::symlink_metadata(&p)?.is_dir() {
            for e in fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
        all.push(p);
    }
    let t = TimeSpec::from_duration(std::time::Duration::from_secs(epoch));
    for p in all {
        utimensat(None, &p, &t, &t, UtimensatFlags::NoFollowSymlink)?;
    }
    Ok(())
}

/// An exclusive lock on `<path>.lock`, held until dropped: two builds sharing a cache wait for
/// each other instead of writing the same entry (mmdebstrap refuses a non-empty target).
pub fn lock(path: &Path) -> std::io::Result<fs::File> {
    use std::os::fd::AsRawFd;
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    if let Some(d) = path.parent() {
        fs::create_dir_all(d)?;
    }
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(PathBuf::from(p))?;
    // Blocks until the other holder is done.
    nix::fcntl::flock(f.as_raw_fd(), nix::fcntl::FlockArg::LockExclusive)?;
    Ok(f)
}

/// The last (by name, so the newest kernel version) file in `dir` whose name starts with
/// `prefix`: how a kernel and its initrd are found in /boot or on a firmware partition.
pub fn newest_with_prefix(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    v.sort();
    v.pop()
}

/// Free bytes on the filesystem holding `path` (or its nearest existing parent).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let mut p = if path.is_relative() {
        std::env::current_dir()?.join(path)
    } else {
        path.to_path_buf()
    };
    while !p.exists() {
        if !p.pop() {
            break;
        }
    }
    let st = nix::sys::statvfs::statvfs(&p)?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_inside_a_tree_are_found_deepest_first_with_escapes() {
        let info = "22 1 254:0 / / rw - ext4 /dev/vda rw\n\
                    30 22 0:5 / /c/k.tmp/proc ro - proc proc ro\n\
                    31 22 0:6 / /c/k.tmp/dev/pts rw - devpts none rw\n\
                    32 22 0:7 / /c/k.tmp/my\\040dir rw - tmpfs tmpfs rw\n\
                    33 22 0:8 / /c/k.tmp rw - tmpfs tmpfs rw\n\
                    34 22 0:9 / /c/k.tmp2/proc rw - proc proc rw\n";
        let v = mounts_below(info, Path::new("/c/k.tmp"));
        assert_eq!(
            v,
            vec![
                PathBuf::from("/c/k.tmp/dev/pts"),
                PathBuf::from("/c/k.tmp/proc"),
                PathBuf::from("/c/k.tmp/my dir"),
            ]
        );
    }

    /// What a bootstrap killed by a timeout leaves: a read-only mount inside its temporary
    /// rootfs. Removing the tree used to fail on it (and left the mount behind).
    #[test]
    fn a_tree_with_a_read_only_mount_inside_is_removed() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts a filesystem: run it as root (make test does)"
        );
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("k.tmp");
        let proc_dir = tree.join("proc");
        fs::create_dir_all(&proc_dir).unwrap();
        let mount = |args: &[&str]| {
            let st = std::process::Command::new("mount")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "mount {args:?}");
        };
        let p = proc_dir.to_str().unwrap();
        mount(&["-t", "tmpfs", "tmpfs", p]);
        fs::write(proc_dir.join("stat"), "x").unwrap();
        mount(&["-o", "remount,ro", p]);
        remove_any(&tree).unwrap();
        assert!(!tree.exists());
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!info.contains(p), "the mount is gone");
    }

    #[test]
    fn tree_hash_sees_content_mode_and_names() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc/x")).unwrap();
        fs::write(d.path().join("etc/x/a"), "1").unwrap();
        let h1 = sha256_tree(d.path()).unwrap();
        assert_eq!(h1, sha256_tree(d.path()).unwrap());
        fs::write(d.path().join("etc/x/a"), "2").unwrap();
        let h2 = sha256_tree(d.path()).unwrap();
        assert_ne!(h1, h2);
        fs::set_permissions(d.path().join("etc/x/a"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_ne!(h2, sha256_tree(d.path()).unwrap());
    }

    #[test]
    fn publish_replaces_directories() {
        let d = tempfile::tempdir().unwrap();
        let fin = d.path().join("out");
        fs::create_dir_all(fin.join("old")).unwrap();
        let tmp = tmp_path(&fin);
        fs::create_dir_all(tmp.join("new")).unwrap();
        publish(&tmp, &fin).unwrap();
        assert!(fin.join("new").exists() && !fin.join("old").exists() && !tmp.exists());
        assert!(free_bytes(&d.path().join("not/yet")).unwrap() > 0);
    }

    #[test]
    fn tree_mtime_is_set_without_following_symlinks() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        let before = fs::metadata(outside.path()).unwrap().mtime();
        fs::create_dir_all(d.path().join("a")).unwrap();
        fs::write(d.path().join("a/f"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("a/l")).unwrap();
        set_tree_mtime(d.path(), 1_000_000).unwrap();
        for p in ["", "a", "a/f", "a/l"] {
            let m = fs::symlink_metadata(d.path().join(p)).unwrap();
            assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000, 0), "{p}");
        }
        assert_eq!(fs::metadata(outside.path()).unwrap().mtime(), before);
    }
}
