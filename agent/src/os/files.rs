//! Files, users and processes of the services the agent runs: config files written only when
//! they change, credentials made once, unprivileged system users and their directories.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tinytemplate::TinyTemplate;

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, Mode, SFlag};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::os::identity::{hex, random_bytes};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

pub fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FileError {
    let what = what.into();
    move |source| FileError::Io { what, source }
}

/// Renders a config file from `template` (tinytemplate syntax: `{field}` values,
/// `{{ for x in list }}` loops, `\{` for a literal `{`) with the fields of `ctx`, written as
/// they are: for INI, YAML, tinc and shell files. `{field | sh}` quotes a value for sh.
/// `name` only names the template in errors.
///
/// A placeholder without a value (no such field, or a `None`) is an error, a template and its
/// caller out of step, not an empty string in a config file.
pub fn render<T: Serialize>(name: &str, template: &str, ctx: &T) -> Result<String, FileError> {
    render_as(Escaping::Text, name, template, ctx)
}

/// As [`render`], with every string value XML-escaped: in an XML file a value is data, never
/// markup. Callers pass values unescaped.
pub fn render_xml<T: Serialize>(name: &str, template: &str, ctx: &T) -> Result<String, FileError> {
    render_as(Escaping::Xml, name, template, ctx)
}

enum Escaping {
    Text,
    Xml,
}

fn render_as<T: Serialize>(
    escaping: Escaping,
    name: &str,
    template: &str,
    ctx: &T,
) -> Result<String, FileError> {
    let failed = |e: tinytemplate::error::Error| FileError::Failed(format!("template {name}: {e}"));
    let mut tt = TinyTemplate::new();
    // tinytemplate's own default escapes for HTML.
    match escaping {
        Escaping::Text => tt.set_default_formatter(&text_value),
        Escaping::Xml => tt.set_default_formatter(&xml_value),
    }
    tt.add_formatter("sh", sh_value);
    tt.add_template(name, template).map_err(failed)?;
    tt.render(name, ctx).map_err(failed)
}

fn text_value(v: &Value, out: &mut String) -> tinytemplate::error::Result<()> {
    match v {
        Value::Null => Err(tinytemplate::error::Error::GenericError {
            msg: "a placeholder's value is None".into(),
        }),
        v => tinytemplate::format_unescaped(v, out),
    }
}

fn xml_value(v: &Value, out: &mut String) -> tinytemplate::error::Result<()> {
    match v {
        Value::String(s) => {
            for c in s.chars() {
                match c {
                    '&' => out.push_str("&amp;"),
                    '<' => out.push_str("&lt;"),
                    '>' => out.push_str("&gt;"),
                    '"' => out.push_str("&quot;"),
                    '\'' => out.push_str("&apos;"),
                    c => out.push(c),
                }
            }
            Ok(())
        }
        v => text_value(v, out),
    }
}

/// One shell word: single-quoted, a `'` inside closed, escaped and reopened.
fn sh_value(v: &Value, out: &mut String) -> tinytemplate::error::Result<()> {
    let mut word = String::new();
    text_value(v, &mut word)?;
    out.push('\'');
    out.push_str(&word.replace('\'', "'\\''"));
    out.push('\'');
    Ok(())
}

/// A directory reached without following a link: opened from a trusted base (a directory of
/// root's that nobody else may write) one component at a time with `O_DIRECTORY|O_NOFOLLOW`.
/// Everything root does inside a directory a service user can write goes through one: files are
/// opened, made, renamed and removed relative to it, never by path, and only ever created with
/// `O_EXCL|O_NOFOLLOW`, so a link the service swapped in for a directory or a file is refused,
/// never followed.
#[derive(Debug)]
pub struct SafeDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// The most [`SafeDir::read`] reads: config files, keys and ids are small.
const READ_MAX: u64 = 1 << 20;

fn nix_err(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> FileError {
    let f = io_err(what);
    move |e| f(std::io::Error::from(e))
}

/// One path component: a name, never `.`, `..`, empty or with a `/`.
fn component(name: &str) -> Result<&str, FileError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(FileError::Failed(format!("{name:?} is not a file name")));
    }
    Ok(name)
}

/// `path` relative to `base`: its components, every one a plain name.
fn below(base: &Path, path: &Path) -> Result<Vec<String>, FileError> {
    let rel = path.strip_prefix(base).map_err(|_| {
        FileError::Failed(format!(
            "{} is not under {}",
            path.display(),
            base.display()
        ))
    })?;
    rel.components()
        .map(|c| match c {
            std::path::Component::Normal(n) => n
                .to_str()
                .ok_or_else(|| FileError::Failed(format!("{} is not UTF-8", path.display())))
                .and_then(component)
                .map(str::to_string),
            _ => Err(FileError::Failed(format!(
                "{} has a `..` or `.` component",
                path.display()
            ))),
        })
        .collect()
}

impl SafeDir {
    /// `base`, a directory of root's own (made if missing), opened by path: it and its
    /// parents are trusted. Refused if it belongs to anyone else or others may write it.
    pub fn base(base: &Path) -> Result<SafeDir, FileError> {
        std::fs::create_dir_all(base).map_err(io_err(format!("creating {}", base.display())))?;
        let fd = nix::fcntl::open(
            base,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(nix_err(format!("opening {}", base.display())))?;
        // SAFETY: a descriptor just opened and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = fstat(fd.as_raw_fd()).map_err(nix_err(format!("stat {}", base.display())))?;
        if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_mode & 0o022 != 0 {
            return Err(FileError::Failed(format!(
                "{} is not root's own (owner {}, mode {:o}): refusing to work below it",
                base.display(),
                st.st_uid,
                st.st_mode & 0o7777
            )));
        }
        Ok(SafeDir {
            fd,
            path: base.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory `name` in this one, opened without following a link; with `create`, made
    /// (root's, 0755) if missing. A link or anything but a directory there is refused.
    pub fn child(&self, name: &str, create: bool) -> Result<SafeDir, FileError> {
        let name = component(name)?;
        let path = self.path.join(name);
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let open = || openat(self.fd.as_raw_fd(), name, flags, Mode::empty());
        let fd = match open() {
            Err(Errno::ENOENT) if create => {
                match mkdirat(self.fd.as_raw_fd(), name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(nix_err(format!("creating {}", path.display()))(e)),
                }
                open()
            }
            r => r,
        };
        let fd = fd.map_err(|e| match e {
            // O_NOFOLLOW on a link: ELOOP; O_DIRECTORY on anything else: ENOTDIR.
            Errno::ELOOP | Errno::ENOTDIR => FileError::Failed(format!(
                "{} is a link or not a directory: refusing to follow it",
                path.display()
            )),
            e => nix_err(format!("opening {}", path.display()))(e),
        })?;
        Ok(SafeDir {
            // SAFETY: a descriptor just opened and owned by nothing else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path,
        })
    }

    /// The directory at `path` below this one, each component through [`SafeDir::child`].
    pub fn descend(self, path: &Path, create: bool) -> Result<SafeDir, FileError> {
        let mut dir = self;
        for name in below(&dir.path.clone(), path)? {
            dir = dir.child(&name, create)?;
        }
        Ok(dir)
    }

    /// Gives this directory (the one open, whatever its name now points at) to `ids`, `mode`.
    pub fn own(&self, ids: (u32, u32), mode: u32) -> Result<(), FileError> {
        fchown(
            self.fd.as_raw_fd(),
            Some(Uid::from_raw(ids.0)),
            Some(Gid::from_raw(ids.1)),
        )
        .map_err(nix_err(format!("chown {}", self.path.display())))?;
        fchmod(self.fd.as_raw_fd(), Mode::from_bits_truncate(mode))
            .map_err(nix_err(format!("chmod {}", self.path.display())))
    }

    /// Opens the file `name` here without following a link (and without blocking on a FIFO):
    /// only a regular file with one link is accepted.
    fn open_file(&self, name: &str, flags: OFlag, mode: u32) -> Result<std::fs::File, FileError> {
        let name = component(name)?;
        let path = self.path.join(name);
        let fd = openat(
            self.fd.as_raw_fd(),
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
        .map_err(|e| match e {
            Errno::ELOOP => FileError::Failed(format!(
                "{} is a link: refusing to follow it",
                path.display()
            )),
            e => nix_err(format!("opening {}", path.display()))(e),
        })?;
        // SAFETY: a descriptor just opened and owned by nothing else.
        let f = unsafe { std::fs::File::from_raw_fd(fd) };
        let st = fstat(f.as_raw_fd()).map_err(nix_err(format!("stat {}", path.display())))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG
            || st.st_nlink > 1
        {
            return Err(FileError::Failed(format!(
                "{} is not a plain file: refusing it",
                path.display()
            )));
        }
        Ok(f)
    }

    /// The content of the file `name` here; None if it is missing, a link or not a plain file.
    pub fn read(&self, name: &str) -> Option<Vec<u8>> {
        use std::io::Read;
        let f = self.open_file(name, OFlag::O_RDONLY, 0).ok()?;
        let mut out = Vec::new();
        f.take(READ_MAX).read_to_end(&mut out).ok()?;
        Some(out)
    }

    /// Replaces the file `name` here: a fresh temporary file (`O_CREAT|O_EXCL|O_NOFOLLOW`)
    /// given its mode and owner while open, synced, then renamed over `name` in this directory.
    pub fn write(
        &self,
        name: &str,
        content: &[u8],
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<(), FileError> {
        use std::io::Write;
        let name = component(name)?;
        let path = self.path.join(name);
        let tmp = format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            hex(&random_bytes::<6>())
        );
        let what = |w: &str| format!("{w} {}", path.display());
        let fd = openat(
            self.fd.as_raw_fd(),
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode & 0o700),
        )
        .map_err(nix_err(what("writing")))?;
        // SAFETY: a descriptor just opened and owned by nothing else.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        let written = (|| {
            f.write_all(content).map_err(io_err(what("writing")))?;
            if let Some((u, g)) = owner {
                fchown(
                    f.as_raw_fd(),
                    Some(Uid::from_raw(u)),
                    Some(Gid::from_raw(g)),
                )
                .map_err(nix_err(what("chown")))?;
            }
            fchmod(f.as_raw_fd(), Mode::from_bits_truncate(mode))
                .map_err(nix_err(what("chmod")))?;
            f.sync_all().map_err(io_err(what("syncing")))?;
            renameat(
                Some(self.fd.as_raw_fd()),
                tmp.as_str(),
                Some(self.fd.as_raw_fd()),
                name,
            )
            .map_err(nix_err(what("renaming into")))
        })();
        if written.is_err() {
            let _ = unlinkat(
                Some(self.fd.as_raw_fd()),
                tmp.as_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
        written?;
        let _ = nix::unistd::fsync(self.fd.as_raw_fd());
        Ok(())
    }

    /// Writes `name` only if its content differs; true if it did.
    pub fn write_if_changed(
        &self,
        name: &str,
        content: &[u8],
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<bool, FileError> {
        if self.read(name).as_deref() == Some(content) {
            return Ok(false);
        }
        self.write(name, content, mode, owner)?;
        Ok(true)
    }

    /// Removes the file (or link) `name` here; a missing one is no error.
    pub fn remove(&self, name: &str) -> Result<(), FileError> {
        let name = component(name)?;
        match unlinkat(Some(self.fd.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(nix_err(format!(
                "removing {}",
                self.path.join(name).display()
            ))(e)),
        }
    }

    /// The file `name` here opened for appending (made `mode`, root's, if missing): for a
    /// child's log. A link or anything but a plain file is refused.
    pub fn append(&self, name: &str, mode: u32) -> Result<std::fs::File, FileError> {
        let f = self.open_file(
            name,
            OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT,
            mode,
        )?;
        // O_NONBLOCK was for the open only (a FIFO): the child writes as usual.
        nix::fcntl::fcntl(
            f.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(OFlag::O_APPEND),
        )
        .map_err(nix_err(format!("fcntl {}", self.path.join(name).display())))?;
        Ok(f)
    }
}

/// The directory holding `path` (below `base`, made if missing) and the file's name.
fn parent_of(base: &Path, path: &Path) -> Result<(SafeDir, String), FileError> {
    let mut names = below(base, path)?;
    let name = names
        .pop()
        .ok_or_else(|| FileError::Failed(format!("{} names no file", path.display())))?;
    let mut dir = SafeDir::base(base)?;
    for n in names {
        dir = dir.child(&n, true)?;
    }
    Ok((dir, name))
}

/// Creates `dir` (below `base`, root's own; missing parents made root's 0755) owned by the
/// service user with `mode`, never following a link on the way: the directory opened is the
/// one chowned, whatever the service does meanwhile.
pub fn own_dir(base: &Path, dir: &Path, ids: (u32, u32), mode: u32) -> Result<SafeDir, FileError> {
    let d = SafeDir::base(base)?.descend(dir, true)?;
    d.own(ids, mode)?;
    Ok(d)
}

/// Writes `path` (below `base`) only if its content differs; true if it did. Through
/// [`SafeDir`]: no link followed, the new file owned by `owner` before it takes the name.
pub fn write_if_changed(
    base: &Path,
    path: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<bool, FileError> {
    let (dir, name) = parent_of(base, path)?;
    dir.write_if_changed(&name, content, mode, owner)
}

/// Replaces `path` (below `base`) through [`SafeDir::write`], root's.
pub fn write_file(base: &Path, path: &Path, content: &[u8], mode: u32) -> Result<(), FileError> {
    let (dir, name) = parent_of(base, path)?;
    dir.write(&name, content, mode, None)
}

/// The content of `path` (below `base`) read without following a link; None if missing, a
/// link, not a plain file, or anything on the way is a link.
pub fn read_file(base: &Path, path: &Path) -> Option<Vec<u8>> {
    let mut names = below(base, path).ok()?;
    let name = names.pop()?;
    let mut dir = SafeDir::base(base).ok()?;
    for n in names {
        dir = dir.child(&n, false).ok()?;
    }
    dir.read(&name)
}

/// [`read_file`] as text.
pub fn read_string(base: &Path, path: &Path) -> Option<String> {
    String::from_utf8(read_file(base, path)?).ok()
}

/// Removes the file `path` (below `base`) without following a link on the way; missing is fine.
pub fn remove_file(base: &Path, path: &Path) -> Result<(), FileError> {
    let mut names = below(base, path)?;
    let name = names
        .pop()
        .ok_or_else(|| FileError::Failed(format!("{} names no file", path.display())))?;
    let mut dir = SafeDir::base(base)?;
    for n in names {
        match dir.child(&n, false) {
            Ok(d) => dir = d,
            Err(FileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(())
            }
            Err(e) => return Err(e),
        }
    }
    dir.remove(&name)
}

/// A secret of `len` random bytes (hex) kept in `path` (below `base`; 0600, root's): made
/// once, then reused. Read and written through [`SafeDir`].
pub fn credential(base: &Path, path: &Path, len: usize) -> Result<String, FileError> {
    if let Some(s) = read_string(base, path) {
        let s = s.trim();
        if s.len() == len * 2 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(s.to_string());
        }
    }
    let mut bytes = Vec::new();
    while bytes.len() < len {
        bytes.extend_from_slice(&random_bytes::<16>());
    }
    let s = hex(&bytes[..len]);
    write_file(base, path, format!("{s}\n").as_bytes(), 0o600)?;
    Ok(s)
}

/// Uid and gid of a user in an /etc/passwd text.
fn passwd_lookup(passwd: &str, user: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// The unprivileged system user a service runs as, created (with its own group) if missing.
/// Users live in the running system's /etc/passwd even under `--root`: the processes run on
/// this kernel.
pub fn ensure_user(user: &str, home: &Path) -> Result<(u32, u32), FileError> {
    let read = || std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    if let Some(ids) = passwd_lookup(&read(), user) {
        return Ok(ids);
    }
    let useradd = ["/usr/sbin/useradd", "/sbin/useradd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("useradd");
    let mut why = String::new();
    // Agents side by side (test nodes) may race for the passwd lock: try a few times, and look
    // again each time, since the other one may have made the user meanwhile.
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        let out = std::process::Command::new(useradd)
            .args(["--system", "--user-group", "--no-create-home", "--shell"])
            .arg("/usr/sbin/nologin")
            .arg("--home-dir")
            .arg(home)
            .arg(user)
            .output()
            .map_err(io_err(format!("running {useradd}")))?;
        if let Some(ids) = passwd_lookup(&read(), user) {
            if out.status.success() {
                tracing::info!("made system user {user} ({}:{})", ids.0, ids.1);
            }
            return Ok(ids);
        }
        why = String::from_utf8_lossy(&out.stderr).trim().to_string();
    }
    Err(FileError::Failed(format!("useradd {user}: {why}")))
}

/// True if something accepts TCP at `addr` within 300 ms.
pub fn port_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// True if `pid` names a live process (not a zombie).
pub fn alive(pid: u32) -> bool {
    pid > 0
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let state = s.rsplit(')').next()?.split_whitespace().next()?.to_string();
                Some(state != "Z" && state != "X")
            })
            .unwrap_or(false)
}

/// The executable of a service: an environment override (tests, unusual installs) or the
/// packaged path.
pub fn exe(env_var: &str, default: &str) -> PathBuf {
    std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_every_placeholder_or_fail() {
        let vars = serde_json::json!({"a": "1", "b": "2"});
        assert_eq!(
            render("t", "a={a} b={b} a={a}", &vars).unwrap(),
            "a=1 b=2 a=1"
        );
        let e = render("t", "x={missing}", &serde_json::json!({"a": "1"})).unwrap_err();
        assert!(e.to_string().contains("'missing'"), "{e}");
    }

    #[test]
    fn values_are_escaped_once_for_their_file() {
        #[derive(Serialize)]
        struct Ctx<'a> {
            v: &'a str,
            n: u16,
            none: Option<&'a str>,
        }
        let ctx = Ctx {
            v: "a b&<'\"",
            n: 7,
            none: None,
        };
        assert_eq!(
            render_xml("t", "<x a=\"{v}\">{n}</x>", &ctx).unwrap(),
            "<x a=\"a b&amp;&lt;&apos;&quot;\">7</x>"
        );
        assert_eq!(render("t", "{v} {n}", &ctx).unwrap(), "a b&<'\" 7");
        assert_eq!(
            render("t", "exec {v | sh}", &ctx).unwrap(),
            "exec 'a b&<'\\''\"'"
        );
        assert_eq!(render("t", "\\{v} \\{ }", &ctx).unwrap(), "{v} { }");
        let e = render("t", "x={none}", &ctx).unwrap_err();
        assert!(e.to_string().contains("None"), "{e}");
    }

    #[test]
    fn credentials_are_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s/api-key");
        let a = credential(d.path(), &p, 16).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(credential(d.path(), &p, 16).unwrap(), a, "reused");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let other = credential(d.path(), &d.path().join("t"), 16).unwrap();
        assert_ne!(a, other, "random, not a default");
    }

    /// Owner, group, mode and entries of a directory, and its `passwd`'s content.
    type Looks = (u32, u32, u32, Vec<String>, Vec<u8>);

    /// A stand-in for /etc: a root-owned directory (0755) holding a file, and how it looks.
    fn root_target(parent: &Path) -> (PathBuf, Looks) {
        use std::os::unix::fs::PermissionsExt;
        let t = parent.join("etc");
        std::fs::create_dir(&t).unwrap();
        std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(t.join("passwd"), b"root:x:0:0\n").unwrap();
        std::fs::set_permissions(t.join("passwd"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let snap = looks(&t);
        (t, snap)
    }

    fn looks(t: &Path) -> Looks {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(t).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(t)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let pm = std::fs::metadata(t.join("passwd")).unwrap();
        assert_eq!(
            (pm.uid(), pm.mode() & 0o7777),
            (0, 0o644),
            "passwd untouched"
        );
        (
            m.uid(),
            m.gid(),
            m.mode() & 0o7777,
            names,
            std::fs::read(t.join("passwd")).unwrap(),
        )
    }

    /// A service user swaps a directory it owns for a link to a root-owned one: no helper
    /// follows it, and the target keeps its owner, mode, entries and contents.
    #[test]
    fn a_link_in_place_of_a_directory_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP a_link_in_place_of_a_directory_is_refused: needs root (chown)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("lib");
        let (target, before) = root_target(d.path());
        let ids = (65534, 65534);
        let svc = base.join("svc");
        own_dir(&base, &svc, ids, 0o700).unwrap();
        // The service's own move: its directory becomes a link to "/etc".
        std::os::unix::fs::symlink(&target, svc.join("private")).unwrap();
        let private = svc.join("private");
        let r = own_dir(&base, &private, ids, 0o700);
        assert_eq!(
            looks(&target),
            before,
            "own_dir left the link's target alone"
        );
        assert!(r.is_err(), "own_dir");
        assert!(own_dir(&base, &private.join("deeper"), ids, 0o700).is_err());
        assert!(
            write_if_changed(&base, &private.join("new"), b"x", 0o644, Some(ids)).is_err(),
            "write_if_changed"
        );
        assert!(
            write_if_changed(&base, &private.join("passwd"), b"x", 0o644, Some(ids)).is_err(),
            "write_if_changed over a file there"
        );
        assert!(
            credential(&base, &private.join("key"), 16).is_err(),
            "credential"
        );
        assert!(write_file(&base, &private.join("new"), b"x", 0o644).is_err());
        assert_eq!(read_file(&base, &private.join("passwd")), None, "read_file");
        assert!(remove_file(&base, &private.join("passwd")).is_err());
        assert!(SafeDir::base(&base)
            .and_then(|b| b.descend(&private, true))
            .and_then(|p| p.append("x.log", 0o640))
            .is_err());
        assert_eq!(looks(&target), before, "the link's target is untouched");
        // The same with the service's home itself a link (were its parent writable to it).
        std::fs::remove_file(&private).unwrap();
        std::fs::rename(&svc, base.join("old")).unwrap();
        std::os::unix::fs::symlink(&target, &svc).unwrap();
        assert!(own_dir(&base, &svc, ids, 0o700).is_err());
        assert!(write_if_changed(&base, &svc.join("cfg"), b"x", 0o644, Some(ids)).is_err());
        assert_eq!(looks(&target), before, "the link's target is untouched");
        // `..` never leaves the base.
        assert!(own_dir(&base, &base.join("../etc"), ids, 0o700).is_err());
        assert!(
            own_dir(&base, &target, ids, 0o700).is_err(),
            "outside the base"
        );
        assert_eq!(looks(&target), before);
    }

    /// A link (or a FIFO) in place of a file: reads refuse it, a write replaces the link itself
    /// and never writes through it, and the new file is the service user's, as asked.
    #[test]
    fn a_link_in_place_of_a_file_is_replaced_not_followed() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP a_link_in_place_of_a_file_is_replaced_not_followed: needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("lib");
        let (target, before) = root_target(d.path());
        let ids = (65534, 65534);
        let svc = base.join("svc");
        own_dir(&base, &svc, ids, 0o700).unwrap();
        let cfg = svc.join("tahoe.cfg");
        std::os::unix::fs::symlink(target.join("passwd"), &cfg).unwrap();
        let r = write_if_changed(&base, &cfg, b"[node]\n", 0o600, Some(ids));
        assert_eq!(looks(&target), before, "nothing written through the link");
        assert!(r.unwrap());
        let m = std::fs::symlink_metadata(&cfg).unwrap();
        assert!(m.file_type().is_file(), "the link itself replaced");
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (ids.0, ids.1, 0o600));
        assert_eq!(std::fs::read(&cfg).unwrap(), b"[node]\n");
        // A credential whose file is a link: a new one made in place, not written through.
        let key = svc.join("api-key");
        std::os::unix::fs::symlink(target.join("passwd"), &key).unwrap();
        let k = credential(&base, &key, 16).unwrap();
        assert!(std::fs::symlink_metadata(&key)
            .unwrap()
            .file_type()
            .is_file());
        assert_eq!(std::fs::read_to_string(&key).unwrap(), format!("{k}\n"));
        // A log that is a link is refused; a FIFO is neither read nor blocked on.
        std::os::unix::fs::symlink(target.join("passwd"), svc.join("link")).unwrap();
        assert_eq!(
            read_file(&base, &svc.join("link")),
            None,
            "a link is not read"
        );
        let dir = SafeDir::base(&base).unwrap().descend(&svc, false).unwrap();
        std::os::unix::fs::symlink(target.join("passwd"), svc.join("svc.log")).unwrap();
        assert!(dir.append("svc.log", 0o640).is_err());
        nix::unistd::mkfifo(&svc.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(dir.read("fifo"), None);
        assert!(dir.append("fifo", 0o640).is_err());
        assert_eq!(looks(&target), before, "the link's target is untouched");
        // Temporary files never stay behind.
        let left: Vec<_> = std::fs::read_dir(&svc)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn passwd_lines_give_ids() {
        let p = "root:x:0:0:root:/root:/bin/bash\ncloudy-tahoe:x:998:997::/var/lib/cloudy:/usr/sbin/nologin\n";
        assert_eq!(passwd_lookup(p, "cloudy-tahoe"), Some((998, 997)));
        assert_eq!(passwd_lookup(p, "cloudy"), None);
    }
}
