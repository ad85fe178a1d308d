//! The dashboard's HTTPS listener: rustls (ring) with the node's own certificate
//! (`os::certificate`). Each TLS handshake runs in a task of its own under a deadline, at most
//! `MAX_HANDSHAKES` at once, so a client that stalls its handshake holds one slot and never the
//! accept loop; finished connections go to axum.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Handshakes under way at once; more connections are closed at once.
const MAX_HANDSHAKES: usize = 64;
/// A handshake not done by then is dropped.
const HANDSHAKE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the certificate: {0}")]
    Certificate(String),
    #[error("the private key: {0}")]
    Key(String),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A server configuration for the certificate and key (PEM): TLS 1.2 and 1.3 with ring's
/// defaults, HTTP/1.1 only (the dashboard's axum speaks nothing else).
pub fn config(cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;
    let cert = crate::os::certificate::cert_der(cert_pem).map_err(TlsError::Certificate)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// TLS connections accepted on a TCP listener, for `axum::serve`.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        tokio::spawn(handshakes(tcp, TlsAcceptor::from(config), tx));
        Ok(TlsListener { local, ready })
    }
}

async fn handshakes(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: let it pass rather than spin.
                tracing::debug!("dashboard: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("dashboard: {peer} dropped: {MAX_HANDSHAKES} handshakes under way");
            continue;
        };
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                // A browser that has not pinned the certificate yet ends here: not worth a warning.
                Ok(Err(e)) => tracing::debug!("dashboard: TLS handshake with {peer}: {e}"),
                Err(_) => tracing::debug!("dashboard: TLS handshake with {peer} timed out"),
            }
        });
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The handshake task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
