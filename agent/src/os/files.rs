//! Files, users and processes of the services the agent runs: config files written only when
//! they change, credentials made once, unprivileged system users and their directories.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tinytemplate::TinyTemplate;

use crate::os::identity::{hex, random_bytes};
use crate::os::system::write_atomic;

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

/// Writes `path` only if its content differs; true if it did.
pub fn write_if_changed(
    path: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<bool, FileError> {
    if std::fs::read(path).ok().as_deref() == Some(content) {
        return Ok(false);
    }
    write_atomic(path, content, mode).map_err(io_err(format!("writing {}", path.display())))?;
    if let Some((u, g)) = owner {
        std::os::unix::fs::chown(path, Some(u), Some(g))
            .map_err(io_err(format!("chown {}", path.display())))?;
    }
    Ok(true)
}

/// A secret of `len` random bytes (hex) kept in `path` (0600, root's): made once, then reused.
pub fn credential(path: &Path, len: usize) -> Result<String, FileError> {
    if let Ok(s) = std::fs::read_to_string(path) {
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
    write_atomic(path, format!("{s}\n").as_bytes(), 0o600)
        .map_err(io_err(format!("writing {}", path.display())))?;
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

/// Creates `dir` (and parents) owned by the service user, with `mode`.
pub fn own_dir(dir: &Path, ids: (u32, u32), mode: u32) -> Result<(), FileError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    std::os::unix::fs::chown(dir, Some(ids.0), Some(ids.1))
        .map_err(io_err(format!("chown {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", dir.display())))
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
        let a = credential(&p, 16).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(credential(&p, 16).unwrap(), a, "reused");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let other = credential(&d.path().join("t"), 16).unwrap();
        assert_ne!(a, other, "random, not a default");
    }

    #[test]
    fn passwd_lines_give_ids() {
        let p = "root:x:0:0:root:/root:/bin/bash\ncloudy-tahoe:x:998:997::/var/lib/cloudy:/usr/sbin/nologin\n";
        assert_eq!(passwd_lookup(p, "cloudy-tahoe"), Some((998, 997)));
        assert_eq!(passwd_lookup(p, "cloudy"), None);
    }
}
