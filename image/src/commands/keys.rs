//! `cloudy-image keys new`: the keys of a community's releases.
//!
//! - An update key (default): ed25519, one per person who signs releases. The secret seed
//!   (base64) goes to `NAME.key`, mode 0600; the public key to `NAME.pub` and stdout, for the
//!   recipe's `[update] keys`. K of these N must sign a bundle's manifest.
//! - `--rauc`: RAUC's bundle-signing key and self-signed certificate (`NAME.key.pem`, 0600,
//!   and `NAME.cert.pem`, the recipe's `[update] rauc_keyring`). RAUC refuses bundles without a
//!   CMS signature; that check proves the bundle is well-formed and from whoever holds this
//!   key, while the manifest's K-of-N signatures are the community's decision to release.
//!
//! A key file is never overwritten: losing a secret key is not undone. Each file is written
//! complete under a temporary name, then linked to its final name, which fails if it exists.

use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use cloudy_model::update;

/// The files `new` writes, in order.
#[derive(Debug)]
pub struct Written {
    pub files: Vec<PathBuf>,
    /// The update key's public half (base64); None for a RAUC key.
    pub public: Option<String>,
}

/// A new update key `NAME.key`/`NAME.pub` in `dir`.
pub fn new_update_key(dir: &Path, name: &str) -> Result<Written> {
    check_name(name)?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (secret, public) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    );
    refuse_existing(&[&secret, &public])?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let (secret_b64, public_b64) = update::encode_signing_key(&key);
    create_new(
        &secret,
        secret_file_text(&secret_b64, &public_b64).as_bytes(),
        0o600,
    )?;
    create_new(&public, format!("{public_b64}\n").as_bytes(), 0o644)?;
    Ok(Written {
        files: vec![secret, public],
        public: Some(public_b64),
    })
}

/// The first line of an update key's secret file: a secret seed and a public key are both 32
/// bytes of base64, so without it `sign --key NAME.pub` would sign with a key nobody listed.
pub const SECRET_HEADER: &str = "# Cloudy update key, SECRET (cloudy-image sign --key this file)";

fn secret_file_text(secret_b64: &str, public_b64: &str) -> String {
    format!("{SECRET_HEADER}\n# public key: {public_b64}\n{secret_b64}\n")
}

/// The secret key in a file `new_update_key` wrote; None if it is not one.
pub fn parse_secret_file(text: &str) -> Option<ed25519_dalek::SigningKey> {
    let mut lines = text.lines();
    if lines.next()? != SECRET_HEADER {
        return None;
    }
    let secret = lines.find(|l| !l.starts_with('#') && !l.trim().is_empty())?;
    update::decode_signing_key(secret).ok()
}

/// A new RAUC signing key `NAME.key.pem` and its self-signed certificate `NAME.cert.pem`.
pub fn new_rauc_key(dir: &Path, name: &str) -> Result<Written> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    check_name(name)?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (key_file, cert_file) = (
        dir.join(format!("{name}.key.pem")),
        dir.join(format!("{name}.cert.pem")),
    );
    refuse_existing(&[&key_file, &cert_file])?;
    let key = KeyPair::generate().context("making the RAUC signing key")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Cloudy");
    dn.push(DnType::CommonName, format!("Cloudy update bundles: {name}"));
    params.distinguished_name = dn;
    // Its own trust anchor in the node's keyring; it signs bundles directly.
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    // A node without a real-time clock may boot in 1970 until NTP answers; RAUC checks the
    // signer's validity against the node's clock.
    params.not_before = rcgen::date_time_ymd(1970, 1, 1);
    params.not_after = rcgen::date_time_ymd(2125, 1, 1);
    let cert = params
        .self_signed(&key)
        .context("making the RAUC certificate")?;
    create_new(&key_file, key.serialize_pem().as_bytes(), 0o600)?;
    create_new(&cert_file, cert.pem().as_bytes(), 0o644)?;
    Ok(Written {
        files: vec![key_file, cert_file],
        public: None,
    })
}

/// `keys new` as the user runs it: makes the files and says what to do with them.
pub fn run(dir: &Path, name: Option<&str>, rauc: bool) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if rauc {
        let w = new_rauc_key(dir, name.unwrap_or("rauc"))?;
        eprintln!(
            "RAUC signing key {} (secret, mode 0600) and certificate {}",
            w.files[0].display(),
            w.files[1].display()
        );
        eprintln!(
            "Put the certificate in the recipe: [update] rauc_keyring = \"{}\"; sign bundles with\n  cloudy-image bundle --rauc-key {} --rauc-cert {}",
            w.files[1].display(),
            w.files[0].display(),
            w.files[1].display()
        );
    } else {
        let w = new_update_key(dir, name.unwrap_or("update"))?;
        let public = w.public.expect("update keys have a public half");
        eprintln!(
            "Update key {} (secret, mode 0600; keep it off the build machine when you can), public key in {}:",
            w.files[0].display(),
            w.files[1].display()
        );
        println!("{public}");
        eprintln!(
            "Add the public key to the recipe's [update] keys; sign manifests with\n  cloudy-image sign --key {} MANIFEST",
            w.files[0].display()
        );
    }
    Ok(())
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !ok {
        bail!("--name {name:?}: use letters, digits, '.', '_' and '-' (e.g. --name alice)");
    }
    Ok(())
}

fn refuse_existing(files: &[&Path]) -> Result<()> {
    for f in files {
        if f.symlink_metadata().is_ok() {
            bail!(
                "{} exists; a key is never overwritten\n  fix: pick another --name or --out, or move the old key away yourself",
                f.display()
            );
        }
    }
    Ok(())
}

/// Writes `bytes` to a temporary file with `mode`, then links it to `path`: the final name
/// appears complete or not at all, and an existing file there is never replaced.
fn create_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = crate::cache::tmp_path(path);
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{} appeared while writing it; a key is never overwritten",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("linking {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn update_key_is_private_and_usable() {
        let d = tempfile::tempdir().unwrap();
        let w = new_update_key(d.path(), "alice").unwrap();
        assert_eq!(mode(&d.path().join("alice.key")), 0o600);
        let secret = fs::read_to_string(d.path().join("alice.key")).unwrap();
        let key = parse_secret_file(&secret).unwrap();
        let public = fs::read_to_string(d.path().join("alice.pub")).unwrap();
        assert_eq!(public.trim(), w.public.as_deref().unwrap());
        assert_eq!(update::encode_signing_key(&key).1, public.trim());
        update::UpdateKeys::new(1, &[public.trim().to_string()]).unwrap();
        assert!(
            parse_secret_file(&public).is_none(),
            "the public half is no secret key"
        );
        assert!(
            !fs::read_dir(d.path()).unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")),
            "no temporary file left"
        );
    }

    #[test]
    fn keys_are_never_overwritten() {
        let d = tempfile::tempdir().unwrap();
        new_update_key(d.path(), "bob").unwrap();
        let before = fs::read(d.path().join("bob.key")).unwrap();
        let e = new_update_key(d.path(), "bob").unwrap_err().to_string();
        assert!(e.contains("never overwritten"), "{e}");
        assert_eq!(fs::read(d.path().join("bob.key")).unwrap(), before);
        // Only the public half there: still refused, and the secret is not made alone.
        fs::write(d.path().join("carol.pub"), "x").unwrap();
        assert!(new_update_key(d.path(), "carol").is_err());
        assert!(!d.path().join("carol.key").exists());

        new_rauc_key(d.path(), "r").unwrap();
        let before = fs::read(d.path().join("r.key.pem")).unwrap();
        assert!(new_rauc_key(d.path(), "r").is_err());
        assert_eq!(fs::read(d.path().join("r.key.pem")).unwrap(), before);
        // The link step itself refuses an existing name (a race with another writer).
        let e = create_new(&d.path().join("r.key.pem"), b"new", 0o600)
            .unwrap_err()
            .to_string();
        assert!(e.contains("never overwritten"), "{e}");
        assert_eq!(fs::read(d.path().join("r.key.pem")).unwrap(), before);
    }

    #[test]
    fn rauc_key_and_certificate_are_pem() {
        let d = tempfile::tempdir().unwrap();
        new_rauc_key(d.path(), "community").unwrap();
        assert_eq!(mode(&d.path().join("community.key.pem")), 0o600);
        let key = fs::read_to_string(d.path().join("community.key.pem")).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        let cert = fs::read_to_string(d.path().join("community.cert.pem")).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
        assert!(!cert.contains("PRIVATE"));
    }

    #[test]
    fn bad_names_are_refused() {
        let d = tempfile::tempdir().unwrap();
        for n in ["", "../x", ".hidden", "a/b"] {
            assert!(new_update_key(d.path(), n).is_err(), "{n:?}");
        }
    }
}
