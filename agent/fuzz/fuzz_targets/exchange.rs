//! The exchange port (6655) as an attacker or a hostile member meets it, three ways, picked by
//! the first byte:
//!
//! - 0: a stranger's raw bytes into the server (`serve_all` over an in-memory stream). Without
//!   the community key nothing may reach a handler (each panics if called);
//! - 1: a member's authenticated request whose body is the fuzzer's: a member list swap, a
//!   service request (signed by the member's node key), a services, scores, ratings or info
//!   fetch, or a redeem asked for as if it were a member's request. The server
//!   runs the agent's own `Members::merge` on whatever list it gets, and must answer or refuse;
//! - 2: a hostile server's raw bytes into the client (`request_raw`);
//! - a first byte of 0xF0 or more: the approve handshake of a pending node (`mesh::pending`):
//!   a stranger's raw bytes into the pending node (even bytes), a hostile "pending node"'s
//!   bytes into the approving member (odd bytes). Nothing may be approved.
//!
//! A member's request may also be a rekey (signed; the server's key switches only for a
//! newer, well-formed key) or a newkey request.
//!
//! Nothing may panic, hang (the clock is paused, so a stall is a timeout) or grow unbounded.
#![no_main]

use std::sync::Mutex;

use cloudy_agent::mesh::exchange::{request_raw, serve_all, CommunityKey, Server};
use cloudy_agent::mesh::invite::Invites;
use cloudy_agent::mesh::members::{Member, Members};
use cloudy_agent::os::identity::NodeKey;
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

const PEM: &str =
    "-----BEGIN RSA PUBLIC KEY-----\nMIIBCgKCAQEAx2v0dQ+abc/def=\n-----END RSA PUBLIC KEY-----\n";

fn member(byte: u8, name: &str, key: &NodeKey) -> Member {
    let mut m = Member {
        id: std::iter::repeat_n(char::from(byte), 32).collect(),
        name: name.into(),
        address: format!("192.0.2.{byte}").parse().unwrap(),
        tinc_port: 655,
        exchange_port: 6655,
        vpn: format!("10.99.0.{byte}").parse().unwrap(),
        pubkey: PEM.into(),
        rev: 1,
        signkey: String::new(),
        sig: String::new(),
    };
    m.sign(key);
    m
}

/// One outstanding invitation, made once: a stranger's redeem reaches the token checks.
fn invites() -> &'static Invites {
    static INVITES: std::sync::OnceLock<Invites> = std::sync::OnceLock::new();
    INVITES.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("cloudy-fuzz-invites-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let i = Invites::load(path, "sants", "0123456789abcdef").unwrap();
        i.create(
            vec!["192.0.2.1:6655".into()],
            None,
            std::time::Duration::from_secs(3600),
            1,
        )
        .unwrap();
        i
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let key = CommunityKey::derive("sants", "0123456789abcdef");
    let (server_key, client_key) = (
        NodeKey::from_seed([b'a'; 32]),
        NodeKey::from_seed([b'b'; 32]),
    );
    let members = Mutex::new(Members::signed(
        member(b'a', "server", &server_key),
        server_key.clone(),
    ));
    members
        .lock()
        .unwrap()
        .merge(vec![member(b'b', "client", &client_key)]);
    let local = Server {
        key: &key,
        node: &server_key,
        members: &members,
        invites: None,
    };
    if sel >= 0xF0 {
        rt.block_on(pending(sel, rest, &server_key));
        return;
    }
    rt.block_on(async {
        match sel % 3 {
            0 => {
                let (mut peer, ours) = tokio::io::duplex(1 << 16);
                let _ = peer.write_all(rest).await;
                drop(peer);
                // A stranger may also try to redeem an invitation (from an address of its
                // choosing, so the per-address attempt limit does not end the search).
                let stranger = Server {
                    invites: Some((
                        invites(),
                        std::net::IpAddr::from([10, 0, rest.len() as u8, sel]),
                    )),
                    ..local
                };
                let r = serve_all(
                    ours,
                    stranger,
                    |_| panic!("a list merged without the key"),
                    || panic!("records served without the key"),
                    |_| panic!("an ask taken without the key"),
                    || panic!("scores served without the key"),
                )
                .await;
                assert!(r.is_err(), "a stranger's bytes passed the proof");
            }
            1 => {
                let want = match (sel / 3) % 9 {
                    0 => None,
                    1 => Some("ask"),
                    2 => Some("services"),
                    3 => Some("scores"),
                    4 => Some("ratings"),
                    5 => Some("info"),
                    6 => Some("redeem"),
                    7 => Some("rekey"),
                    _ => Some("newkey"),
                };
                let (c, s) = tokio::io::duplex(1 << 16);
                let server = serve_all(
                    s,
                    local,
                    |list| {
                        let mut ms = members.lock().unwrap();
                        ms.merge(list);
                        ms.list()
                    },
                    Vec::new,
                    |a| Ok([("service".to_string(), a.service)].into()),
                    || "[]".to_string(),
                );
                let client = request_raw(c, &key, want, rest.to_vec(), Some(&client_key));
                let _ = tokio::join!(server, client);
                let ms = members.lock().unwrap();
                assert!(ms.list().len() <= cloudy_agent::mesh::members::MAX_MEMBERS);
                assert_eq!(
                    ms.me().signkey,
                    server_key.public_hex(),
                    "our record is ours"
                );
            }
            _ => {
                let (mut hostile, c) = tokio::io::duplex(1 << 16);
                let _ = hostile.write_all(rest).await;
                drop(hostile);
                let r = request_raw(c, &key, None, b"[]".to_vec(), None).await;
                assert!(
                    r.is_err(),
                    "a keyless server's bytes were taken as an answer"
                );
            }
        }
    });
});

/// The approve handshake with hostile bytes on either side.
async fn pending(sel: u8, rest: &[u8], node: &NodeKey) {
    use cloudy_agent::mesh::pending::{approve_over, fingerprint, serve, Grant};
    let (mut peer, ours) = tokio::io::duplex(1 << 16);
    let _ = peer.write_all(rest).await;
    drop(peer);
    if sel % 2 == 0 {
        let r = serve(ours, node, "sants", &|_| Ok(())).await;
        assert!(r.is_err(), "a stranger's bytes approved a pending node");
    } else {
        let grant = Grant {
            community: "sants".into(),
            key: "0123456789abcdef".into(),
            peers: Vec::new(),
        };
        let fp = fingerprint(&NodeKey::from_seed([b'p'; 32]).public_hex()).unwrap();
        let r = approve_over(ours, &fp, &grant, node).await;
        assert!(r.is_err(), "a keyless peer confirmed an approval");
    }
}
