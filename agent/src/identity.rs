//! The node's identity: its hostname (from the seed, else the image default).

use crate::system::System;

/// Used when neither the seed nor the image defaults name the node.
pub const FALLBACK_NAME: &str = "cloudy";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("setting the kernel hostname to {name:?}: {source}")]
    SetHostname { name: String, source: std::io::Error },
}

/// Makes the node carry `name`: /etc/hostname, the /etc/hosts self entry, and (on the live
/// system) the kernel hostname. Rewrites only what differs, so reboots change nothing.
pub fn apply_hostname(sys: &System, name: &str) -> Result<(), IdentityError> {
    let wanted = format!("{name}\n");
    if std::fs::read_to_string(sys.path("/etc/hostname")).ok().as_deref() != Some(&wanted) {
        sys.write_atomic("/etc/hostname", wanted.as_bytes(), 0o644)
            .map_err(|source| IdentityError::Write { path: "/etc/hostname".into(), source })?;
    }
    let hosts_path = sys.path("/etc/hosts");
    let hosts = std::fs::read_to_string(&hosts_path).unwrap_or_else(|_| "127.0.0.1\tlocalhost\n".into());
    let updated = hosts_with_self(&hosts, name);
    if updated != hosts {
        sys.write_atomic("/etc/hosts", updated.as_bytes(), 0o644)
            .map_err(|source| IdentityError::Write { path: "/etc/hosts".into(), source })?;
    }
    if sys.is_live() {
        set_kernel_hostname(name)
            .map_err(|source| IdentityError::SetHostname { name: name.into(), source })?;
    }
    Ok(())
}

/// Debian's convention: the node's own name resolves through a `127.0.1.1` line.
fn hosts_with_self(hosts: &str, name: &str) -> String {
    let mut out: Vec<String> = hosts
        .lines()
        .filter(|l| !l.trim_start().starts_with("127.0.1.1"))
        .map(str::to_string)
        .collect();
    let at = out.iter().position(|l| l.trim_start().starts_with("127.0.0.1")).map_or(0, |i| i + 1);
    out.insert(at, format!("127.0.1.1\t{name}"));
    out.join("\n") + "\n"
}

fn set_kernel_hostname(name: &str) -> std::io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, valid for the call.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub fn kernel_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_files_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        sys.write_atomic("/etc/hosts", b"127.0.0.1\tlocalhost\n127.0.1.1\told\n::1\tlocalhost\n", 0o644).unwrap();
        apply_hostname(&sys, "pi-test").unwrap();
        assert_eq!(std::fs::read_to_string(sys.path("/etc/hostname")).unwrap(), "pi-test\n");
        let hosts = std::fs::read_to_string(sys.path("/etc/hosts")).unwrap();
        assert_eq!(hosts, "127.0.0.1\tlocalhost\n127.0.1.1\tpi-test\n::1\tlocalhost\n");
        let before = std::fs::metadata(sys.path("/etc/hosts")).unwrap().modified().unwrap();
        apply_hostname(&sys, "pi-test").unwrap();
        let after = std::fs::metadata(sys.path("/etc/hosts")).unwrap().modified().unwrap();
        assert_eq!(before, after, "second run rewrites nothing");
    }
}
