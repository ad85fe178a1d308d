//! HTTPS to the dashboard as a client that pins the node's certificate by its SHA-256
//! fingerprint (the `AB:CD:...` form `cloudy-agent status` prints) instead of trusting a CA:
//! rustls with ring, a verifier that accepts exactly that certificate and checks the handshake
//! signatures with it.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use super::Reply;

/// SHA-256 of DER bytes, `AB:CD:...`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate {} is not the pinned {}",
                fingerprint(end_entity),
                self.fingerprint
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub type Stream = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// A TLS session over `tcp` (any transport: a namespace's socket, a relay), its handshake
/// done; fails unless the server shows the certificate with `pin`.
pub fn over(tcp: std::net::TcpStream, host: &str, pin: &str) -> std::io::Result<Stream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            fingerprint: pin.to_string(),
            provider,
        }))
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// A pinned TLS connection to `addr` (`ip:port`) made inside namespace `ns`.
pub fn connect_in(ns: &str, addr: &str, pin: &str) -> std::io::Result<Stream> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    over(super::connect_in(ns, addr)?, host, pin)
}

/// The certificate the server at `addr` shows, whatever it is (DER).
pub fn served_certificate(ns: &str, addr: &str) -> Vec<u8> {
    // Pinning something else fails the handshake, but only after the certificate came.
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_string();
    let seen = Arc::new(std::sync::Mutex::new(None));
    #[derive(Debug)]
    struct Keep(Arc<std::sync::Mutex<Option<Vec<u8>>>>, Pinned);
    impl ServerCertVerifier for Keep {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            *self.0.lock().unwrap() = Some(end_entity.to_vec());
            Err(rustls::Error::General("only looking".into()))
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.1.verify_tls12_signature(m, c, d)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.1.verify_tls13_signature(m, c, d)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.1.supported_verify_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Keep(
            seen.clone(),
            Pinned {
                fingerprint: String::new(),
                provider,
            },
        )))
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(Arc::new(config), ServerName::try_from(host).unwrap())
        .unwrap();
    let mut s = rustls::StreamOwned::new(conn, super::connect_in(ns, addr).unwrap());
    while s.conn.is_handshaking() {
        if s.conn.complete_io(&mut s.sock).is_err() {
            break;
        }
    }
    let der = seen.lock().unwrap().take();
    der.expect("the server showed a certificate")
}

/// One HTTPS request to `addr` in `ns`, pinning `pin`.
pub fn request(
    ns: &str,
    addr: &str,
    pin: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut s = connect_in(ns, addr, pin)?;
    super::exchange(&mut s, addr, method, path, headers, body)
}

pub fn get(ns: &str, addr: &str, pin: &str, path: &str, cookie: Option<&str>) -> Reply {
    let h: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
    request(ns, addr, pin, "GET", path, &h, b"").unwrap()
}

pub fn post_form(
    ns: &str,
    addr: &str,
    pin: &str,
    path: &str,
    cookie: Option<&str>,
    form: &str,
) -> Reply {
    let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if let Some(c) = cookie {
        h.push(("Cookie", c));
    }
    request(ns, addr, pin, "POST", path, &h, form.as_bytes()).unwrap()
}

pub fn post_json(
    ns: &str,
    addr: &str,
    pin: &str,
    path: &str,
    cookie: Option<&str>,
    json: &str,
) -> Reply {
    let mut h = vec![("Content-Type", "application/json")];
    if let Some(c) = cookie {
        h.push(("Cookie", c));
    }
    request(ns, addr, pin, "POST", path, &h, json.as_bytes()).unwrap()
}

/// Logs in; the session cookie (`name=value`).
pub fn login(ns: &str, addr: &str, pin: &str, password: &str) -> String {
    let r = post_form(
        ns,
        addr,
        pin,
        "/login",
        None,
        &format!("user=admin&password={}", super::urlencode(password)),
    );
    assert_eq!(r.status, 303, "login refused: {}", r.text());
    r.cookie().expect("a session cookie")
}

/// The certificate fingerprint `cloudy-agent status` prints for the node at `root`.
pub fn status_fingerprint(root: &std::path::Path) -> String {
    let o = std::process::Command::new(crate::microcloud::agent())
        .arg("--root")
        .arg(root)
        .arg("status")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    out.lines()
        .find_map(|l| l.split_once("certificate SHA-256 "))
        .map(|(_, f)| f.trim().to_string())
        .unwrap_or_else(|| panic!("no fingerprint in status:\n{out}"))
}
