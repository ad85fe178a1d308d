//! The exchange server under a keyless flood (the hardening issue's defect 2): one address
//! without the community key holds 70 connections and sends 2 MiB on each, again and again,
//! while a member exchanges its list. The member must still be answered, promptly; the log
//! must not grow by a line per dropped connection; the memory held for peers that never proved
//! the key must stay small.
//!
//! Real sockets on loopback only: the server listens on 127.0.0.1, the member connects from
//! 127.0.0.1 and the flood comes from 127.0.0.2 (both route on `lo`). The server is the agent's
//! own `daemon::serve::serve` over a mesh made here, without tincd or any other process.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudy_agent::catalog::publish::Sharing;
use cloudy_agent::mesh::exchange::{self, CommunityKey};
use cloudy_agent::mesh::members::{Member, Members};
use cloudy_agent::mesh::{tinc, Mesh};
use cloudy_agent::os::identity::NodeKey;
use cloudy_agent::os::system::System;
use cloudy_agent::registry::manager::Manager;
use cloudy_agent::registry::published::Local;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PEM: &str =
    "-----BEGIN RSA PUBLIC KEY-----\nMIIBCgKCAQEAx2v0dQ+abc/def=\n-----END RSA PUBLIC KEY-----\n";
const FLOOD: usize = 70;
const EACH: usize = 2 << 20;

/// The node key of the test member whose id is `id_byte` repeated.
fn key_of(id_byte: char) -> NodeKey {
    NodeKey::from_seed([id_byte as u8; 32])
}

/// A member record signed by its own node key (protocol 3).
fn member(id_byte: char, name: &str) -> Member {
    let mut m = Member {
        id: std::iter::repeat_n(id_byte, 32).collect(),
        name: name.into(),
        address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        tinc_port: 655,
        exchange_port: 6655,
        vpn: Ipv4Addr::new(10, 99, 0, id_byte as u8),
        pubkey: PEM.into(),
        rev: 1,
        signkey: String::new(),
        sig: String::new(),
    };
    m.sign(&key_of(id_byte));
    m
}

/// Every line the agent logs, kept for the test to count.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn lines(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The agent's exchange server over a mesh of one node (this test's), on 127.0.0.1.
async fn server(root: &std::path::Path, key: &CommunityKey) -> SocketAddr {
    let sys = System::new(root);
    let members = Arc::new(Mutex::new(Members::signed(
        member('a', "server"),
        key_of('a'),
    )));
    let (tincd, _) = tokio::sync::mpsc::unbounded_channel();
    let mesh = Arc::new(Mesh {
        sys: sys.clone(),
        key: key.clone(),
        node_key: key_of('a'),
        members: members.clone(),
        changed: Default::default(),
        wake: Default::default(),
        tincd,
        tincd_status: Default::default(),
        lan: Default::default(),
        mdns: Mutex::new(None),
        vpn_error: Mutex::new(None),
        paths: tinc::Paths::new(&sys, "flood"),
        settings: tinc::Settings {
            mode: Default::default(),
            port: 655,
            vpn_prefix: 16,
            agent_exe: "/nonexistent".into(),
            root: root.into(),
        },
        subnet: (Ipv4Addr::new(10, 99, 0, 0), 16),
    });
    let share = Sharing::new(sys.clone(), key.clone(), "flood".into(), members, vec![]);
    let manager = Manager::new(
        sys,
        "/nonexistent".into(),
        vec![],
        share.clone(),
        Local::new(vec![]),
        vec![],
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(cloudy_agent::daemon::serve::serve(
        mesh, share, manager, listener,
    ));
    addr
}

/// One keyless connection from 127.0.0.2: 2 MiB without a line end, then held until the
/// server lets go; then again, while `go`. Counts the connections the server closed.
async fn flooder(
    to: SocketAddr,
    junk: &'static [u8],
    go: Arc<AtomicBool>,
    closed: Arc<AtomicUsize>,
) {
    while go.load(Ordering::SeqCst) {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        if let Ok(mut c) = s.connect(to).await {
            let _ = c.write_all(junk).await;
            let mut b = [0u8; 64];
            while let Ok(n) = c.read(&mut b).await {
                if n == 0 {
                    break;
                }
            }
            closed.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn keyless_flood_from_one_address_does_not_block_a_member() {
    let log = Log::default();
    let l = log.clone();
    tracing_subscriber::fmt()
        // The agent's own default (`CLOUDY_LOG` unset: info).
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || l.clone())
        .init();
    let dir = tempfile::tempdir().unwrap();
    let key = CommunityKey::derive("flood", "0123456789abcdef");
    let addr = server(dir.path(), &key).await;
    let junk: &'static [u8] = vec![b'x'; EACH].leak();

    let rss0 = rss_kib();
    let lines0 = log.lines();
    let go = Arc::new(AtomicBool::new(true));
    let closed = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| tokio::spawn(flooder(addr, junk, go.clone(), closed.clone())))
        .collect();
    // Let the flood fill whatever it can.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss_flood = rss_kib();

    let mut took = Vec::new();
    let mut failed = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        match exchange::exchange(addr, &key, &[member('b', "member")]).await {
            Ok(list) => assert!(list.iter().any(|m| m.name == "server"), "{list:?}"),
            Err(e) => failed.push(e.to_string()),
        }
        took.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let rss_peak = rss_kib().max(rss_flood);
    go.store(false, Ordering::SeqCst);
    let closed = closed.load(Ordering::SeqCst);
    let lines = log.lines() - lines0;
    eprintln!(
        "flood: {FLOOD} x {} MiB from 127.0.0.2; member exchanges took {took:?}, failed {failed:?}; \
         server closed {closed} flood connections; {lines} log lines; RSS {rss0} KiB -> {rss_peak} KiB",
        EACH >> 20
    );
    for f in flood {
        f.abort();
    }

    assert!(
        failed.is_empty(),
        "the member's exchange failed: {failed:?}"
    );
    assert!(
        took.iter().all(|t| *t < Duration::from_secs(2)),
        "the member waited: {took:?}"
    );
    assert!(
        closed >= FLOOD - 10,
        "the server let go of only {closed} of {FLOOD} keyless connections"
    );
    assert!(
        lines <= 6,
        "{lines} log lines for {closed} dropped connections:\n{}",
        String::from_utf8_lossy(&log.0.lock().unwrap())
    );
    // 64 connections each holding 2 MiB would be 128 MiB; what a keyless peer may make the
    // server hold is a short line.
    assert!(
        rss_peak.saturating_sub(rss0) < 24 << 10,
        "RSS grew from {rss0} KiB to {rss_peak} KiB under the flood"
    );
}
