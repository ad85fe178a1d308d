//! `cloudy-image sign --key FILE MANIFEST`: one more signature on a bundle's manifest. K of N
//! means several people sign, each on their own machine with their own key: the manifest
//! travels between them and each run adds (or renews) one signature. The file is replaced
//! atomically; a manifest that does not parse is left as it was.

use anyhow::{Context, Result};
use std::path::Path;

use cloudy_model::update::{self, SignedManifest};

/// Adds `key_file`'s signature to the manifest at `manifest`; returns how many it has now.
pub fn sign_file(key_file: &Path, manifest: &Path) -> Result<usize> {
    let key = read_key(key_file)?;
    let bytes =
        std::fs::read(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let mut signed = SignedManifest::parse(&bytes).with_context(|| {
        format!(
            "{}: not a bundle manifest (`cloudy-image bundle` writes <board>.manifest.json)",
            manifest.display()
        )
    })?;
    signed.sign(&key);
    crate::cache::write_atomic(manifest, format!("{}\n", signed.to_json()).as_bytes())
        .with_context(|| format!("writing {}", manifest.display()))?;
    Ok(signed.signatures.len())
}

/// An update key's secret file as `keys new` wrote it.
pub fn read_key(key_file: &Path) -> Result<ed25519_dalek::SigningKey> {
    let text = std::fs::read_to_string(key_file)
        .with_context(|| format!("reading the update key {}", key_file.display()))?;
    super::keys::parse_secret_file(&text).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: not an update key's secret file\n  fix: give the NAME.key `cloudy-image keys new` wrote (NAME.pub is the public half)",
            key_file.display()
        )
    })
}

pub fn run(key_file: &Path, manifest: &Path) -> Result<()> {
    let n = sign_file(key_file, manifest)?;
    let key = read_key(key_file)?;
    eprintln!(
        "signed {} with key {}; it carries {n} signature(s) now",
        manifest.display(),
        update::key_id(&key.verifying_key())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudy_model::update::{Channel, Manifest, UpdateKeys};

    fn manifest(dir: &Path) -> std::path::PathBuf {
        let m = SignedManifest {
            manifest: Manifest {
                board: "pc-686-pae".into(),
                version: "1.0.1".parse().unwrap(),
                bundle: "cloudy-pc-686-pae-1.0.1.raucb".into(),
                sha256: "ab".repeat(32),
                size: 10,
                channel: Channel::Stable,
                min_version: "1.0.0".parse().unwrap(),
            },
            signatures: vec![],
        };
        let p = dir.join("pc-686-pae.manifest.json");
        std::fs::write(&p, m.to_json()).unwrap();
        p
    }

    #[test]
    fn each_signer_adds_one_distinct_signature() {
        let d = tempfile::tempdir().unwrap();
        let m = manifest(d.path());
        let a = super::super::keys::new_update_key(d.path(), "a").unwrap();
        let b = super::super::keys::new_update_key(d.path(), "b").unwrap();
        let keys = UpdateKeys::new(2, &[a.public.unwrap(), b.public.unwrap()]).unwrap();
        assert_eq!(sign_file(&d.path().join("a.key"), &m).unwrap(), 1);
        let once = SignedManifest::parse(&std::fs::read(&m).unwrap()).unwrap();
        assert!(once.verify(&keys).is_err(), "1 of 2 is not enough");
        // Signing twice with the same key still counts once.
        assert_eq!(sign_file(&d.path().join("a.key"), &m).unwrap(), 1);
        assert_eq!(sign_file(&d.path().join("b.key"), &m).unwrap(), 2);
        let twice = SignedManifest::parse(&std::fs::read(&m).unwrap()).unwrap();
        twice.verify(&keys).unwrap();
        assert_ne!(twice.signatures[0].key, twice.signatures[1].key);
    }

    #[test]
    fn bad_inputs_change_nothing() {
        let d = tempfile::tempdir().unwrap();
        let m = manifest(d.path());
        super::super::keys::new_update_key(d.path(), "a").unwrap();
        let before = std::fs::read(&m).unwrap();
        // The public half is not a signing key.
        let e = format!("{:#}", sign_file(&d.path().join("a.pub"), &m).unwrap_err());
        assert!(e.contains("a.pub"), "{e}");
        assert_eq!(std::fs::read(&m).unwrap(), before);
        // Not a manifest: named, left as it was.
        let junk = d.path().join("junk.json");
        std::fs::write(&junk, "{\"manifest\": 1}").unwrap();
        let e = format!(
            "{:#}",
            sign_file(&d.path().join("a.key"), &junk).unwrap_err()
        );
        assert!(
            e.contains("junk.json") && e.contains("not a bundle manifest"),
            "{e}"
        );
        assert_eq!(std::fs::read(&junk).unwrap(), b"{\"manifest\": 1}");
    }
}
