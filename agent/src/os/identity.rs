//! The node's identity: its hostname (from the seed, else the image default), a stable node id,
//! the dashboard credential and the ssh keys allowed in.

use crate::os::system::System;

/// Used when neither the seed nor the image defaults name the node.
pub const FALLBACK_NAME: &str = "cloudy";

/// Node id, dashboard credential and key files live here (`System::state_dir`).
pub const NODE_ID_FILE: &str = "/var/lib/cloudy/node-id";
/// The node's own signing key (ed25519 seed, hex): it signs our member record, our requests
/// and our answers in the exchange, so the community key alone cannot speak for this node.
pub const NODE_KEY_FILE: &str = "/var/lib/cloudy/node.key";
pub const DASHBOARD_HASH_FILE: &str = "/var/lib/cloudy/dashboard.hash";
pub const AUTHORIZED_KEYS: &str = "/root/.ssh/authorized_keys";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds {content:?}, not a node id; remove it to make a new identity")]
    BadNodeId { path: String, content: String },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a node signing key (64 hex digits); members have pinned the key it held, so a new one would not be accepted as this node: restore the file, or remove it together with {NODE_ID_FILE} to join as a new node")]
    BadNodeKey { path: String },
    #[error("setting the kernel hostname to {name:?}: {source}")]
    SetHostname {
        name: String,
        source: std::io::Error,
    },
}

/// Makes the node carry `name`: /etc/hostname, the /etc/hosts self entry, and (on the live
/// system) the kernel hostname. Rewrites only what differs, so reboots change nothing.
pub fn apply_hostname(sys: &System, name: &str) -> Result<(), IdentityError> {
    let wanted = format!("{name}\n");
    if std::fs::read_to_string(sys.path("/etc/hostname"))
        .ok()
        .as_deref()
        != Some(&wanted)
    {
        sys.write_atomic("/etc/hostname", wanted.as_bytes(), 0o644)
            .map_err(|source| IdentityError::Write {
                path: "/etc/hostname".into(),
                source,
            })?;
    }
    let hosts_path = sys.path("/etc/hosts");
    let hosts =
        std::fs::read_to_string(&hosts_path).unwrap_or_else(|_| "127.0.0.1\tlocalhost\n".into());
    let updated = hosts_with_self(&hosts, name);
    if updated != hosts {
        sys.write_atomic("/etc/hosts", updated.as_bytes(), 0o644)
            .map_err(|source| IdentityError::Write {
                path: "/etc/hosts".into(),
                source,
            })?;
    }
    if sys.is_live() {
        set_kernel_hostname(name).map_err(|source| IdentityError::SetHostname {
            name: name.into(),
            source,
        })?;
    }
    Ok(())
}

/// The node's id: 128 random bits made on first boot and kept for life, so a renamed node is
/// still the same member. Hex, 32 characters.
pub fn node_id(sys: &System) -> Result<String, IdentityError> {
    let path = sys.path(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.trim();
            if is_node_id(id) {
                return Ok(id.to_string());
            }
            return Err(IdentityError::BadNodeId {
                path: path.display().to_string(),
                content: s,
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(IdentityError::Read {
                path: path.display().to_string(),
                source,
            })
        }
    }
    let id = hex(&random_bytes::<16>());
    sys.write_atomic(NODE_ID_FILE, format!("{id}\n").as_bytes(), 0o644)
        .map_err(|source| IdentityError::Write {
            path: NODE_ID_FILE.into(),
            source,
        })?;
    Ok(id)
}

/// This node's ed25519 signing key. Members pin its public half on first sight, as they pin
/// tinc keys: a record or request for our id is taken only with our signature.
#[derive(Clone)]
pub struct NodeKey(ed25519_dalek::SigningKey);

impl NodeKey {
    /// Made on first boot (0600) and kept for life, like the node id. A damaged file is an
    /// error, never replaced: members would refuse the new key as a forgery of us.
    pub fn ensure(sys: &System) -> Result<NodeKey, IdentityError> {
        match Self::load(sys) {
            Err(IdentityError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            r => return r,
        }
        let seed = random_bytes::<32>();
        sys.write_atomic(NODE_KEY_FILE, format!("{}\n", hex(&seed)).as_bytes(), 0o600)
            .map_err(|source| IdentityError::Write {
                path: NODE_KEY_FILE.into(),
                source,
            })?;
        Ok(NodeKey::from_seed(seed))
    }

    /// The stored key; a missing file is a `Read` error with `NotFound`.
    pub fn load(sys: &System) -> Result<NodeKey, IdentityError> {
        let path = sys.path(NODE_KEY_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| IdentityError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let bad = || IdentityError::BadNodeKey {
            path: path.display().to_string(),
        };
        let bytes = unhex(text.trim()).ok_or_else(bad)?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(NodeKey::from_seed(seed))
    }

    pub fn from_seed(seed: [u8; 32]) -> NodeKey {
        NodeKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The public key, hex (64 digits): what a member record carries and members pin.
    pub fn public_hex(&self) -> String {
        hex(self.0.verifying_key().as_bytes())
    }

    /// An ed25519 signature over `msg`, hex (128 digits).
    pub fn sign_hex(&self, msg: &[u8]) -> String {
        use ed25519_dalek::Signer;
        hex(&self.0.sign(msg).to_bytes())
    }
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({})", self.public_hex())
    }
}

impl PartialEq for NodeKey {
    fn eq(&self, o: &Self) -> bool {
        self.0.verifying_key() == o.0.verifying_key()
    }
}

/// Checks a hex ed25519 signature by the hex public key `public` over `msg`. Strict
/// verification: no malleable or small-order forms.
pub fn signature_ok(public: &str, msg: &[u8], sig: &str) -> bool {
    if public.len() != 64 || sig.len() != 128 {
        return false;
    }
    let Some(k) = unhex(public).and_then(|b| <[u8; 32]>::try_from(b).ok()) else {
        return false;
    };
    let Some(s) = unhex(sig).and_then(|b| <[u8; 64]>::try_from(b).ok()) else {
        return false;
    };
    let Ok(k) = ed25519_dalek::VerifyingKey::from_bytes(&k) else {
        return false;
    };
    k.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&s))
        .is_ok()
}

/// Whether `s` is a usable ed25519 public key in hex.
pub fn is_node_key(s: &str) -> bool {
    s.len() == 64
        && unhex(s)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .is_some_and(|b| {
                ed25519_dalek::VerifyingKey::from_bytes(&b).is_ok_and(|k| !k.is_weak())
            })
}

/// Lowercase or uppercase hex to bytes; None for anything else (`from_str_radix` alone would
/// take a sign, so one value would have several spellings).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

pub fn is_node_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What the console should show once: a password generated on this boot, or nothing.
#[derive(Debug, PartialEq)]
pub enum Credential {
    FromSeed,
    Kept,
    Generated(String),
}

/// The dashboard never has a default password: the seed's hash is kept, else one is made on
/// first boot and shown once. Only a salted hash is stored.
pub fn dashboard_credential(
    sys: &System,
    seed_hash: Option<&str>,
) -> Result<Credential, IdentityError> {
    let write = |contents: &str| {
        sys.write_atomic(DASHBOARD_HASH_FILE, contents.as_bytes(), 0o600)
            .map_err(|source| IdentityError::Write {
                path: DASHBOARD_HASH_FILE.into(),
                source,
            })
    };
    if let Some(h) = seed_hash {
        let line = format!("{h}\n");
        if std::fs::read_to_string(sys.path(DASHBOARD_HASH_FILE))
            .ok()
            .as_deref()
            != Some(&line)
        {
            write(&line)?;
        }
        return Ok(Credential::FromSeed);
    }
    // A hash in an older format cannot be checked: make a new password rather than none.
    let kept = std::fs::read_to_string(sys.path(DASHBOARD_HASH_FILE)).unwrap_or_default();
    if is_password_hash(kept.trim()) {
        return Ok(Credential::Kept);
    }
    // 15 bytes make 24 base64-like characters without padding: ~120 bits, typeable.
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let password: String = random_bytes::<20>()
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    write(&format!("{}\n", hash_password(&password)))?;
    Ok(Credential::Generated(password))
}

/// The console device of a live node. The journal keeps stdout and stderr on disk; a password
/// shown once goes here only.
pub const CONSOLE: &str = "/dev/console";

/// Where a generated password is shown: `/dev/console` on a live node; for a private root (tests,
/// several agents side by side) `<root>/dev/console` when it exists, else nowhere.
pub fn console_path(sys: &System) -> Option<std::path::PathBuf> {
    if sys.is_live() {
        return Some(CONSOLE.into());
    }
    let p = sys.path(CONSOLE);
    p.exists().then_some(p)
}

/// Writes `text` to every console the kernel writes to (never creating a file, never taking one
/// as the controlling terminal). `/dev/console` is only the last `console=` of the command line:
/// the serial port, where the build's verify stage reads. The screen a person looks at (`tty0`)
/// is another, listed in `/sys/class/tty/console/active` beside it. Ok when one of them took it.
pub fn show_on_console(console: &std::path::Path, text: &str) -> std::io::Result<()> {
    let mut last = Ok(());
    let mut shown = false;
    for dev in console_devices(console) {
        match write_device(&dev, text) {
            Ok(()) => shown = true,
            Err(e) => last = Err(e),
        }
    }
    if shown {
        Ok(())
    } else {
        last
    }
}

fn write_device(dev: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(nix::fcntl::OFlag::O_NOCTTY.bits())
        .open(dev)?;
    f.write_all(text.as_bytes())?;
    f.flush()
}

/// The devices behind `<root>/dev/console`: each name in `<root>/sys/class/tty/console/active`
/// that exists under `<root>/dev`, else the console itself.
pub fn console_devices(console: &std::path::Path) -> Vec<std::path::PathBuf> {
    let root = console
        .parent()
        .and_then(|dev| dev.parent())
        .unwrap_or(std::path::Path::new("/"));
    let active =
        std::fs::read_to_string(root.join("sys/class/tty/console/active")).unwrap_or_default();
    let mut out: Vec<std::path::PathBuf> = active
        .split_whitespace()
        // A name from sysfs is a device name; anything else is not followed.
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(|n| root.join("dev").join(n))
        .filter(|p| p.exists())
        .collect();
    if out.is_empty() {
        out.push(console.to_path_buf());
    }
    out
}

/// An Argon2id PHC string (`$argon2id$v=19$m=19456,t=2,p=1$SALT$HASH`), what the seed's
/// `[dashboard] password_hash` holds too (`cloudy-agent seed hash-password` makes one).
pub fn hash_password(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(&random_bytes::<16>()).expect("16 bytes make a salt");
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("default parameters hash")
        .to_string()
}

/// True for an Argon2 PHC string the dashboard can check a password against.
pub fn is_password_hash(h: &str) -> bool {
    argon2::password_hash::PasswordHash::new(h)
        .is_ok_and(|p| p.algorithm.as_str().starts_with("argon2"))
}

/// Checks `password` against a stored PHC hash, in constant time.
pub fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    let Ok(h) = PasswordHash::new(hash) else {
        return false;
    };
    argon2::Argon2::default()
        .verify_password(password.as_bytes(), &h)
        .is_ok()
}

/// Installs the seed's keys for root. The file is the seed's list, whole: a key removed from
/// the seed is removed from the node.
pub fn apply_ssh_keys(sys: &System, keys: &[String]) -> Result<(), IdentityError> {
    if keys.is_empty() {
        return Ok(());
    }
    let body = keys
        .iter()
        .map(|k| format!("{}\n", k.trim()))
        .collect::<String>();
    let wanted = format!("# managed by cloudy-agent from the seed's [ssh] section\n{body}");
    if std::fs::read_to_string(sys.path(AUTHORIZED_KEYS))
        .ok()
        .as_deref()
        != Some(&wanted)
    {
        sys.write_atomic(AUTHORIZED_KEYS, wanted.as_bytes(), 0o600)
            .map_err(|source| IdentityError::Write {
                path: AUTHORIZED_KEYS.into(),
                source,
            })?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(
            sys.path("/root/.ssh"),
            std::fs::Permissions::from_mode(0o700),
        );
    }
    Ok(())
}

/// From getrandom(2), which waits until the kernel's pool is seeded (early boot included).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // No entropy source at all: nothing on this node can be kept secret; stop loudly.
    getrandom::fill(&mut buf).unwrap_or_else(|e| panic!("getrandom: {e}"));
    buf
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Debian's convention: the node's own name resolves through a `127.0.1.1` line.
fn hosts_with_self(hosts: &str, name: &str) -> String {
    let mut out: Vec<String> = hosts
        .lines()
        .filter(|l| !l.trim_start().starts_with("127.0.1.1"))
        .map(str::to_string)
        .collect();
    let at = out
        .iter()
        .position(|l| l.trim_start().starts_with("127.0.0.1"))
        .map_or(0, |i| i + 1);
    out.insert(at, format!("127.0.1.1\t{name}"));
    out.join("\n") + "\n"
}

fn set_kernel_hostname(name: &str) -> std::io::Result<()> {
    Ok(nix::unistd::sethostname(name)?)
}

pub fn kernel_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_files_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        sys.write_atomic(
            "/etc/hosts",
            b"127.0.0.1\tlocalhost\n127.0.1.1\told\n::1\tlocalhost\n",
            0o644,
        )
        .unwrap();
        apply_hostname(&sys, "pi-test").unwrap();
        assert_eq!(
            std::fs::read_to_string(sys.path("/etc/hostname")).unwrap(),
            "pi-test\n"
        );
        let hosts = std::fs::read_to_string(sys.path("/etc/hosts")).unwrap();
        assert_eq!(
            hosts,
            "127.0.0.1\tlocalhost\n127.0.1.1\tpi-test\n::1\tlocalhost\n"
        );
        let before = std::fs::metadata(sys.path("/etc/hosts"))
            .unwrap()
            .modified()
            .unwrap();
        apply_hostname(&sys, "pi-test").unwrap();
        let after = std::fs::metadata(sys.path("/etc/hosts"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after, "second run rewrites nothing");
    }

    #[test]
    fn node_key_is_made_once_private_and_never_silently_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        let k = NodeKey::ensure(&sys).unwrap();
        assert_eq!(NodeKey::ensure(&sys).unwrap(), k, "kept across boots");
        let path = sys.path(NODE_KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sig = k.sign_hex(b"m");
        assert!(signature_ok(&k.public_hex(), b"m", &sig));
        assert!(!signature_ok(&k.public_hex(), b"n", &sig));
        assert!(is_node_key(&k.public_hex()));
        std::fs::write(&path, "damaged\n").unwrap();
        let e = NodeKey::ensure(&sys).unwrap_err();
        assert!(matches!(e, IdentityError::BadNodeKey { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "damaged\n");
    }

    #[test]
    fn node_id_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        let a = node_id(&sys).unwrap();
        assert!(is_node_id(&a), "{a}");
        assert_eq!(node_id(&sys).unwrap(), a);
        sys.write_atomic(NODE_ID_FILE, b"garbage\n", 0o644).unwrap();
        assert!(node_id(&sys).unwrap_err().to_string().contains("remove it"));
    }

    #[test]
    fn dashboard_password_generated_once_and_never_default() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        let Credential::Generated(p) = dashboard_credential(&sys, None).unwrap() else {
            panic!()
        };
        assert_eq!(p.len(), 20);
        let stored = std::fs::read_to_string(sys.path(DASHBOARD_HASH_FILE)).unwrap();
        assert!(!stored.contains(&p), "only the hash is stored");
        assert!(stored.starts_with("$argon2id$"));
        assert!(verify_password(stored.trim(), &p));
        assert!(!verify_password(stored.trim(), "wrong"));
        let mode = std::fs::metadata(sys.path(DASHBOARD_HASH_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(dashboard_credential(&sys, None).unwrap(), Credential::Kept);
        let other = tempfile::tempdir().unwrap();
        let Credential::Generated(q) =
            dashboard_credential(&System::new(other.path()), None).unwrap()
        else {
            panic!()
        };
        assert_ne!(p, q);
        assert_eq!(
            dashboard_credential(&sys, Some("$y$abc")).unwrap(),
            Credential::FromSeed
        );
        assert_eq!(
            std::fs::read_to_string(sys.path(DASHBOARD_HASH_FILE)).unwrap(),
            "$y$abc\n"
        );
    }

    #[test]
    fn ssh_keys_installed_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        apply_ssh_keys(&sys, &["ssh-ed25519 AAAA me".into()]).unwrap();
        let p = sys.path(AUTHORIZED_KEYS);
        assert!(std::fs::read_to_string(&p)
            .unwrap()
            .ends_with("ssh-ed25519 AAAA me\n"));
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

#[cfg(test)]
mod console_tests {
    use super::*;

    /// Issue 18, defect 3: the old code wrote the generated password to `/dev/console` alone,
    /// which is the serial port (the last `console=`), never the screen. Now every active
    /// console gets it. A private root stands in for `/`: plain files for the devices.
    #[test]
    fn the_password_goes_to_every_active_console() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::create_dir_all(root.join("sys/class/tty/console")).unwrap();
        for n in ["console", "tty0", "ttyS0"] {
            std::fs::write(root.join("dev").join(n), "").unwrap();
        }
        std::fs::write(root.join("sys/class/tty/console/active"), "tty0 ttyS0\n").unwrap();
        let sys = System::new(root);
        let console = console_path(&sys).unwrap();
        show_on_console(&console, "pw 123\n").unwrap();
        for n in ["tty0", "ttyS0"] {
            let got = std::fs::read_to_string(root.join("dev").join(n)).unwrap();
            assert_eq!(got, "pw 123\n", "{n}");
        }
        // A name that is no device name is never followed out of /dev.
        std::fs::write(root.join("sys/class/tty/console/active"), "../etc/x\n").unwrap();
        assert_eq!(console_devices(&console), vec![console.clone()]);
    }
}
