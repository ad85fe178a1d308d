//! The dashboard's TLS certificate: made on the node at first boot (self-signed, rcgen), kept in
//! /var/lib/cloudy beside the other secrets, and never replaced by the agent. Browsers and
//! clients pin it by its SHA-256 fingerprint, which the console and `cloudy-agent status` show;
//! the addresses in it are those known at first boot and matter to no one who pins.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::os::system::System;

/// The certificate (PEM); public, so readable by anyone on the node.
pub const CERT_FILE: &str = "/var/lib/cloudy/dashboard.crt";
/// Its private key (PKCS#8 PEM), 0600 like the other secrets.
pub const KEY_FILE: &str = "/var/lib/cloudy/dashboard.key";

/// How to get a working certificate back, for every error that needs the operator.
fn fix(sys: &System) -> String {
    format!(
        "remove {} and {} and restart the agent to make a new certificate (its fingerprint \
         changes: browsers that pinned the old one must pin the new one)",
        sys.path(CERT_FILE).display(),
        sys.path(KEY_FILE).display()
    )
}

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is damaged ({why}); the agent does not replace it by itself; fix: {fix}")]
    Damaged {
        path: String,
        why: String,
        fix: String,
    },
    #[error("{present} exists but {missing} does not; fix: put {missing} back, or {fix}")]
    HalfMissing {
        present: String,
        missing: String,
        fix: String,
    },
    #[error("making the certificate: {0}")]
    Make(#[from] rcgen::Error),
}

/// The certificate and key as PEM, checked to parse and to belong together.
#[derive(Clone)]
pub struct Certificate {
    pub cert_pem: String,
    pub key_pem: String,
    /// SHA-256 of the DER certificate, `AB:CD:...`: what browsers show and clients pin.
    pub fingerprint: String,
}

impl std::fmt::Debug for Certificate {
    // Never the key, whatever prints this.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Whether `ensure` found the certificate or made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Kept,
    Made,
}

/// The node's certificate: the stored one, or on first boot (neither file there) a new one for
/// `names` (the node's name, `<name>.local`, its addresses; IP literals become IP SANs). A
/// damaged or half-missing pair is an error, never replaced: a key that changes under a pinned
/// fingerprint is what an impostor looks like, and only the operator can tell them apart.
pub fn ensure(sys: &System, names: &[String]) -> Result<(Certificate, Origin), CertificateError> {
    let (cert_path, key_path) = (sys.path(CERT_FILE), sys.path(KEY_FILE));
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => return Ok((load(sys)?, Origin::Kept)),
        (false, false) => {}
        (cert, _) => {
            let (present, missing) = if cert {
                (&cert_path, &key_path)
            } else {
                (&key_path, &cert_path)
            };
            return Err(CertificateError::HalfMissing {
                present: present.display().to_string(),
                missing: missing.display().to_string(),
                fix: fix(sys),
            });
        }
    }
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        names.first().map(String::as_str).unwrap_or("cloudy"),
    );
    params.distinguished_name = dn;
    let cert = params.self_signed(&key)?;
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| CertificateError::Io { path, source }
    };
    // The key first: a crash between the two leaves a key without a certificate, which the
    // next boot reports rather than pairing with a new key.
    sys.write_atomic(KEY_FILE, key.serialize_pem().as_bytes(), 0o600)
        .map_err(io(&key_path))?;
    sys.write_atomic(CERT_FILE, cert.pem().as_bytes(), 0o644)
        .map_err(io(&cert_path))?;
    Ok((load(sys)?, Origin::Made))
}

/// The stored certificate and key, checked: each parses, and the key is the certificate's.
pub fn load(sys: &System) -> Result<Certificate, CertificateError> {
    let (cert_path, key_path) = (sys.path(CERT_FILE), sys.path(KEY_FILE));
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| match source.kind() {
            std::io::ErrorKind::InvalidData => CertificateError::Damaged {
                path: p.display().to_string(),
                why: "not text".into(),
                fix: fix(sys),
            },
            _ => CertificateError::Io {
                path: p.display().to_string(),
                source,
            },
        })
    };
    let (cert_pem, key_pem) = (read(&cert_path)?, read(&key_path)?);
    let damaged = |p: &Path, why: String| CertificateError::Damaged {
        path: p.display().to_string(),
        why,
        fix: fix(sys),
    };
    let der = cert_der(&cert_pem).map_err(|why| damaged(&cert_path, why))?;
    let key = rcgen::KeyPair::from_pem(&key_pem)
        .map_err(|e| damaged(&key_path, format!("not a private key: {e}")))?;
    let spki = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| damaged(&cert_path, format!("not an X.509 certificate: {e:?}")))?
        .subject_public_key_info();
    if spki.as_ref() != key.public_key_der().as_slice() {
        return Err(damaged(
            &key_path,
            format!("not the key of {}", cert_path.display()),
        ));
    }
    Ok(Certificate {
        fingerprint: fingerprint(&der),
        cert_pem,
        key_pem,
    })
}

/// The one certificate in a PEM text, as DER.
pub fn cert_der(pem: &str) -> Result<rustls::pki_types::CertificateDer<'static>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes());
    match (certs.next(), certs.next()) {
        (Some(Ok(der)), None) => Ok(der),
        (None, _) => Err("no PEM certificate in it".into()),
        (Some(Err(e)), _) => Err(format!("not a PEM certificate: {e}")),
        (Some(Ok(_)), Some(_)) => Err("more than one certificate in it".into()),
    }
}

/// SHA-256 of DER bytes as browsers show it: upper-case hex pairs joined by colons.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The stored certificate's fingerprint for `status`: None when there is none yet, the error
/// when the pair is damaged. Without the right to read the key (not root) the certificate alone
/// is checked.
pub fn stored_fingerprint(sys: &System) -> Option<Result<String, String>> {
    let (cert_path, key_path) = (sys.path(CERT_FILE), sys.path(KEY_FILE));
    if !cert_path.exists() && !key_path.exists() {
        return None;
    }
    match load(sys) {
        Ok(c) => Some(Ok(c.fingerprint)),
        Err(CertificateError::Io { path, source })
            if source.kind() == std::io::ErrorKind::PermissionDenied
                && path == key_path.display().to_string() =>
        {
            let pem = std::fs::read_to_string(&cert_path).unwrap_or_default();
            Some(cert_der(&pem).map(|der| fingerprint(&der)).map_err(|why| {
                format!(
                    "{} is damaged ({why}); fix: {}",
                    cert_path.display(),
                    fix(sys)
                )
            }))
        }
        Err(e) => Some(Err(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names() -> Vec<String> {
        ["n1", "n1.local", "10.0.0.1", "fd00::1"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn made_once_then_kept_with_its_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        let (made, origin) = ensure(&sys, &names()).unwrap();
        assert_eq!(origin, Origin::Made);
        assert_eq!(made.fingerprint.len(), 32 * 3 - 1);
        assert!(made
            .fingerprint
            .bytes()
            .all(|b| b == b':' || b.is_ascii_hexdigit() && !b.is_ascii_lowercase()));
        let mode = |f: &str| std::fs::metadata(sys.path(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(KEY_FILE), 0o600);
        assert_eq!(mode(CERT_FILE), 0o644);
        let (kept, origin) = ensure(&sys, &["other".to_string()]).unwrap();
        assert_eq!(origin, Origin::Kept);
        assert_eq!(kept.fingerprint, made.fingerprint, "kept across restarts");
        assert_eq!(kept.key_pem, made.key_pem);
        assert_eq!(
            stored_fingerprint(&sys).unwrap().unwrap(),
            made.fingerprint,
            "status reads the same"
        );
        assert!(!format!("{kept:?}").contains("PRIVATE"), "no key in Debug");
    }

    #[test]
    fn a_damaged_or_foreign_key_is_an_error_naming_the_file_and_nothing_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        let (made, _) = ensure(&sys, &names()).unwrap();
        for (what, garbage) in [
            (
                "truncated",
                made.key_pem[..made.key_pem.len() / 2].to_string(),
            ),
            ("empty", String::new()),
            (
                "another key",
                rcgen::KeyPair::generate().unwrap().serialize_pem(),
            ),
        ] {
            std::fs::write(sys.path(KEY_FILE), &garbage).unwrap();
            let e = ensure(&sys, &names()).unwrap_err().to_string();
            assert!(
                e.contains(&sys.path(KEY_FILE).display().to_string()),
                "{what}: {e}"
            );
            assert!(e.contains("remove"), "{what}: says how to fix: {e}");
            assert_eq!(
                std::fs::read_to_string(sys.path(KEY_FILE)).unwrap(),
                garbage,
                "{what}: left as found"
            );
            assert_eq!(
                std::fs::read_to_string(sys.path(CERT_FILE)).unwrap(),
                made.cert_pem
            );
        }
        std::fs::write(sys.path(CERT_FILE), "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        std::fs::write(sys.path(KEY_FILE), &made.key_pem).unwrap();
        let e = ensure(&sys, &names()).unwrap_err().to_string();
        assert!(
            e.contains(&sys.path(CERT_FILE).display().to_string()),
            "{e}"
        );
        assert!(stored_fingerprint(&sys).unwrap().is_err());
        std::fs::remove_file(sys.path(CERT_FILE)).unwrap();
        let e = ensure(&sys, &names()).unwrap_err().to_string();
        assert!(e.contains("does not"), "{e}");
        assert!(
            !sys.path(CERT_FILE).exists(),
            "no new certificate for an old key"
        );
    }

    #[test]
    fn fingerprint_is_sha256_in_browser_form() {
        assert_eq!(
            fingerprint(b"abc"),
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }
}
