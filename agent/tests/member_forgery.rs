//! One member speaking for another (the hardening issue's defect 4) and the exchange in clear
//! (defect 12, first half), against the agent's own exchange server (`daemon::serve::serve`
//! over a mesh made here, as in exchange_flood.rs). Real sockets on loopback only; member B
//! holds the community key, as every member does, and tries to rewrite or act as member A.
//!
//! What the old code (protocol 2, commit 2293e0e) did, test by test, is said at each test.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use cloudy_agent::catalog::publish::Sharing;
use cloudy_agent::mesh::exchange::{self, CommunityKey, ExchangeError, ServiceAsk};
use cloudy_agent::mesh::members::{Member, Members};
use cloudy_agent::mesh::{tinc, Mesh};
use cloudy_agent::os::identity::NodeKey;
use cloudy_agent::os::system::System;
use cloudy_agent::registry::manager::Manager;
use cloudy_agent::registry::published::Local;
use cloudy_model::record::Record;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PEM: &str = "-----BEGIN RSA PUBLIC KEY-----\nMIIBCgKCAQEAx2v0dQ+abcSECRETTINCKEY/def=\n-----END RSA PUBLIC KEY-----\n";
const SERVER: char = 'e';
const A: char = 'a';
const B: char = 'b';

fn key_of(id_byte: char) -> NodeKey {
    NodeKey::from_seed([id_byte as u8; 32])
}

fn id(id_byte: char) -> String {
    std::iter::repeat_n(id_byte, 32).collect()
}

/// A member record signed by its own node key.
fn member(id_byte: char, name: &str) -> Member {
    let mut m = Member {
        id: id(id_byte),
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

/// Every line the agent logs, for the test to read.
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
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct Server {
    addr: SocketAddr,
    members: Arc<Mutex<Members>>,
    share: Arc<Sharing>,
    _dir: tempfile::TempDir,
}

/// The agent's exchange server for a node named `serverhost`, which knows A and B, and
/// publishes one record whose fields include a capability.
async fn server(key: &CommunityKey) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let sys = System::new(root);
    let mut ms = Members::signed(member(SERVER, "serverhost"), key_of(SERVER));
    let merged = ms.merge(vec![member(A, "alicehost"), member(B, "bobhost")]);
    assert!(merged.refused.is_empty(), "{merged:?}");
    let members = Arc::new(Mutex::new(ms));
    let (tincd, _) = tokio::sync::mpsc::unbounded_channel();
    let mesh = Arc::new(Mesh {
        sys: sys.clone(),
        key: key.clone(),
        node_key: key_of(SERVER),
        members: members.clone(),
        changed: Default::default(),
        wake: Default::default(),
        tincd,
        tincd_status: Default::default(),
        lan: Default::default(),
        mdns: Mutex::new(None),
        vpn_error: Mutex::new(None),
        paths: tinc::Paths::new(&sys, "forgery"),
        settings: tinc::Settings {
            mode: Default::default(),
            port: 655,
            vpn_prefix: 16,
            agent_exe: "/nonexistent".into(),
            root: root.into(),
        },
        subnet: (Ipv4Addr::new(10, 99, 0, 0), 16),
    });
    let share = Sharing::new(
        sys.clone(),
        key.clone(),
        "sants".into(),
        members.clone(),
        vec![],
    );
    share.ours.lock().unwrap().push(Record {
        kind: "tahoe-introducer".into(),
        description: "introducer".into(),
        node: "serverhost".into(),
        node_id: id(SERVER),
        host: "serverhost.local".into(),
        ip: "10.99.0.115".parse().unwrap(),
        port: 3456,
        microcloud: "sants".into(),
        fields: [(
            "furl".to_string(),
            "pb://SECRETFURLCAPABILITY@x/y".to_string(),
        )]
        .into(),
    });
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
        mesh,
        share.clone(),
        manager,
        listener,
    ));
    Server {
        addr,
        members,
        share,
        _dir: dir,
    }
}

fn log_to(log: &Log) -> tracing::subscriber::DefaultGuard {
    let log = log.clone();
    tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || log.clone())
            .with_ansi(false)
            .finish(),
    )
}

/// Member B sends, over the exchange, a record for member A's id: rewritten and signed with
/// B's own key (B's key swapped in), then with A's key left in but B's signature, then with
/// `rev = u64::MAX`. The old code (protocol 2) took the first (higher revision, same tinc
/// key: only the tinc key was pinned) and the third, after which A could never update its
/// record again. Now all are refused, and A's own update still goes through.
#[tokio::test(flavor = "current_thread")]
async fn a_member_cannot_rewrite_another_over_the_exchange() {
    let log = Log::default();
    let _g = log_to(&log);
    let key = CommunityKey::derive("sants", "0123456789abcdef");
    let s = server(&key).await;
    let original = member(A, "alicehost");

    let mut swapped = original.clone();
    swapped.address = "192.0.2.66".parse().unwrap();
    swapped.rev = 7;
    swapped.sign(&key_of(B));
    let mut kept_key = swapped.clone();
    kept_key.signkey = original.signkey.clone();
    let mut frozen = original.clone();
    frozen.rev = u64::MAX;
    frozen.address = "192.0.2.67".parse().unwrap();
    frozen.sign(&key_of(A));
    let mut frozen_by_b = frozen.clone();
    frozen_by_b.sign(&key_of(B));
    for forged in [swapped, kept_key, frozen, frozen_by_b] {
        let list = exchange::exchange(s.addr, &key, &[member(B, "bobhost"), forged])
            .await
            .expect("B is a member: the exchange itself goes through");
        assert!(list.iter().any(|m| m.name == "serverhost"));
        assert_eq!(
            s.members.lock().unwrap().members[&id(A)],
            original,
            "A's record as A signed it"
        );
    }
    let text = log.text();
    assert!(text.contains("signing key"), "{text}");
    assert!(text.contains("not signed by the node key"), "{text}");
    assert!(text.contains("field `rev` refused"), "{text}");

    // A's own update: taken.
    let mut update = original.clone();
    update.address = "192.0.2.9".parse().unwrap();
    update.rev = 2;
    update.sign(&key_of(A));
    exchange::exchange(s.addr, &key, &[update.clone()])
        .await
        .unwrap();
    assert_eq!(s.members.lock().unwrap().members[&id(A)], update);
}

/// Member B asks the server, in A's name (`node_id` = A), to use a service, e.g. to remove
/// A's Syncthing device. The old code checked only that the node id was a member: B's ask
/// reached the service (here: the service layer's own refusal, "no syncthing service here").
/// Now the ask is taken only under A's pinned node key: B's never gets past the exchange;
/// A's own ask still reaches the service.
#[tokio::test(flavor = "current_thread")]
async fn an_ask_in_another_members_name_is_refused() {
    let log = Log::default();
    let _g = log_to(&log);
    let key = CommunityKey::derive("sants", "0123456789abcdef");
    let s = server(&key).await;
    let provider = member(SERVER, "serverhost");
    let req = ServiceAsk {
        service: "syncthing".into(),
        node_id: id(A),
        fields: [("remove_device".to_string(), "A-DEVICE".to_string())].into(),
    };
    let by_b = exchange::ask_service(s.addr, &key, &key_of(B), &provider, &req).await;
    assert!(
        !matches!(by_b, Err(ExchangeError::Refused(_)) | Ok(_)),
        "B's ask in A's name reached the service: {by_b:?}"
    );
    let by_a = exchange::ask_service(s.addr, &key, &key_of(A), &provider, &req).await;
    match by_a {
        Err(ExchangeError::Refused(e)) => assert!(e.contains("no syncthing service"), "{e}"),
        r => panic!("A's own ask should reach the service: {r:?}"),
    }
    let text = log.text();
    assert!(text.contains("asks to use our syncthing"), "{text}");
    assert_eq!(
        text.matches("asks to use our syncthing").count(),
        1,
        "only A's ask reached the service: {text}"
    );
}

/// The server's answers are its own: member B's server publishes a record in A's name, and
/// a services fetch that expects A's records gets B's answer. The old code took it (the
/// records named A, and the community-key MAC said only that some member answered). Now the
/// answer must be signed by A's pinned node key: B's is refused.
#[tokio::test(flavor = "current_thread")]
async fn an_answer_from_another_member_is_refused() {
    let key = CommunityKey::derive("sants", "0123456789abcdef");
    let s = server(&key).await;
    s.share.ours.lock().unwrap()[0].node_id = id(A);
    let got = exchange::fetch_services(s.addr, &key, &member(A, "alicehost")).await;
    assert!(
        matches!(got, Err(ExchangeError::WrongSigner(_))),
        "an answer for A from another member was taken: {got:?}"
    );
    s.share.ours.lock().unwrap()[0].node_id = id(SERVER);
    let got = exchange::fetch_services(s.addr, &key, &member(SERVER, "serverhost"))
        .await
        .unwrap();
    assert_eq!(got[0].fields["furl"], "pb://SECRETFURLCAPABILITY@x/y");
}

/// Copies one direction of a relayed connection, keeping every byte in `rec`.
async fn pipe(
    mut r: impl tokio::io::AsyncRead + Unpin,
    mut w: impl tokio::io::AsyncWrite + Unpin,
    rec: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = [0u8; 8192];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        rec.lock().unwrap().extend_from_slice(&buf[..n]);
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}

/// A TCP relay between member B and the server records every byte of a list swap, a services
/// fetch and a service request. On the old code (protocol 2: JSON bodies under MACs) all of
/// it was readable: member names, tinc keys, the introducer FURL, the ask's fields. Now the
/// relay sees only the handshake: nonces, ephemeral keys, the proof.
#[tokio::test(flavor = "current_thread")]
async fn a_relay_sees_nothing_in_clear() {
    let key = CommunityKey::derive("sants", "0123456789abcdef");
    let s = server(&key).await;
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let (upstream, rec) = (s.addr, seen.clone());
    tokio::spawn(async move {
        loop {
            let (c, _) = relay.accept().await.unwrap();
            let u = tokio::net::TcpStream::connect(upstream).await.unwrap();
            let (cr, cw) = c.into_split();
            let (ur, uw) = u.into_split();
            tokio::spawn(pipe(cr, uw, rec.clone()));
            tokio::spawn(pipe(ur, cw, rec.clone()));
        }
    });

    let bob = member(B, "bobhost");
    let list = exchange::exchange(relay_addr, &key, std::slice::from_ref(&bob))
        .await
        .unwrap();
    assert!(
        list.iter().any(|m| m.name == "alicehost"),
        "the swap worked"
    );
    let records = exchange::fetch_services(relay_addr, &key, &member(SERVER, "serverhost"))
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    let req = ServiceAsk {
        service: "syncthing".into(),
        node_id: id(B),
        fields: [("device_id".to_string(), "BOBSDEVICEID".to_string())].into(),
    };
    let asked = exchange::ask_service(
        relay_addr,
        &key,
        &key_of(B),
        &member(SERVER, "serverhost"),
        &req,
    )
    .await;
    assert!(matches!(asked, Err(ExchangeError::Refused(_))), "{asked:?}");

    let bytes = seen.lock().unwrap().clone();
    assert!(bytes.len() > 1000, "the relay carried the sessions");
    let clear = String::from_utf8_lossy(&bytes);
    for secret in [
        "alicehost",
        "bobhost",
        "serverhost",
        "SECRETTINCKEY",
        "BEGIN RSA",
        bob.signkey.as_str(),
        &id(A),
        "192.0.2.1",
        "SECRETFURLCAPABILITY",
        "tahoe-introducer",
        "syncthing",
        "BOBSDEVICEID",
        "device_id",
        "node_id",
    ] {
        assert!(
            !clear.contains(secret),
            "{secret:?} crossed the relay in clear"
        );
    }
}
