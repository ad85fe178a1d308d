//! The exchange protocol, on the exchange port (6655): two members swap their member lists over
//! TCP, each side proving it holds the community key before it learns anything. Nothing
//! received is run; lists are parsed strictly, bounded in size and merged by `members`.
//!
//! ```text
//! client -> server  {"v":2,"hello":NC}            NC, NS: 16 random bytes, hex
//! server -> client  {"v":2,"nonce":NS}
//! client -> server  {"v":2,"proof":HMAC(K, "K" NC NS WANT)}       (WANT: "" for a list swap)
//! client -> server  {"v":2,"body":LIST,"mac":HMAC(K, "C" NC NS LIST)}
//! server -> client  {"v":2,"body":LIST,"mac":HMAC(K, "S" NC NS LIST)}   (only if the MAC held)
//! ```
//! K = HMAC-SHA256(community key, "cloudy join v1" + community name). Fresh nonces on both
//! sides stop replays; the role byte stops a reflected answer passing as a request.
//!
//! Until the peer has proved the key, everything it sends is small: the hello and the proof
//! are lines of at most `MAX_PREAUTH` bytes and must come within `HANDSHAKE`; only then does
//! the server read a request that may be large (a member list, up to `MAX_LINE`). The client
//! sends the proof and the request back to back, so the proof costs no round trip. A peer
//! without the key makes the server hold a short line for a few seconds, never 2 MiB.
//!
//! The same handshake fetches a member's service records (no size limit of Serf tags):
//! the hello carries `"want":"services"`, the request body is empty, the reply body is the
//! member's records as JSON, and the role bytes are `Q`/`R` so neither kind of message can
//! stand in for the other.
//!
//! A member's probe summary (its own view of every provider's score) travels the same way with
//! `"want":"scores"`, an empty request body and role bytes `P`/`V`.
//!
//! And it carries a service request (`"want":"ask"`): a member asks another member's agent to
//! let it use a service (e.g. Syncthing: add my device, share the folder with it). The request
//! body is a `ServiceAsk`, the reply a `ServiceAnswer`, role bytes `A`/`B`; the server checks
//! the asker's node id against its member list before the service sees the request.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::mesh::members::{Member, MAX_MEMBERS};
use crate::os::identity::{hex, random_bytes};
use cloudy_model::record::{self, Record};

/// 2: the proof of the key before the request (1 had none: a keyless peer could send 2 MiB).
pub const PROTOCOL: u32 = 2;
/// 1024 members of ~1.2 KiB each, with room to spare.
pub const MAX_LINE: usize = 2 << 20;
/// Every line before the peer has proved the key (hello, challenge, proof), and the request of
/// a services or scores fetch (an empty body): ~100 bytes each.
pub const MAX_PREAUTH: usize = 512;
/// The whole exchange.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The hello and the proof of the key, from the connection's start.
pub const HANDSHAKE: Duration = Duration::from_secs(3);
/// The role byte of the proof of the key; no other message uses it.
const PROOF: u8 = b'K';

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("peer closed the connection (it may not share our community key)")]
    Closed,
    #[error("message longer than allowed")]
    TooLong,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("wrong community key (MAC check failed)")]
    BadMac,
    #[error("more than {MAX_MEMBERS} members offered")]
    TooMany,
    #[error("{0}")]
    Record(#[from] record::RecordError),
    #[error("refused: {0}")]
    Refused(String),
}

#[derive(Clone)]
pub struct CommunityKey([u8; 32]);

impl CommunityKey {
    pub fn derive(community: &str, key: &str) -> Self {
        let mut m = HmacSha256::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
        m.update(b"cloudy join v1");
        m.update(community.as_bytes());
        CommunityKey(m.finalize().into_bytes().into())
    }

    /// Marks our community's mDNS records; a one-way value, so it tells nothing of the key.
    pub fn tag(&self) -> String {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("32-byte key");
        m.update(b"mdns tag");
        hex(&m.finalize().into_bytes()[..8])
    }

    /// A key for one purpose, derived from the community key; `label` names the purpose, so
    /// no two uses share a key.
    pub fn subkey(&self, label: &[u8]) -> [u8; 32] {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("32-byte key");
        m.update(b"subkey|");
        m.update(label);
        m.finalize().into_bytes().into()
    }

    /// Serf's gossip key (32 bytes, base64): only community members can take part.
    pub fn serf_key(&self) -> String {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("32-byte key");
        m.update(b"serf gossip");
        base64(&m.finalize().into_bytes())
    }

    /// Token for Serf's local RPC, so other local users cannot steer it.
    pub fn serf_rpc_auth(&self) -> String {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("32-byte key");
        m.update(b"serf rpc");
        hex(&m.finalize().into_bytes()[..16])
    }

    fn mac(&self, role: u8, nc: &str, ns: &str, body: &str) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("32-byte key");
        for part in [
            &[role][..],
            nc.as_bytes(),
            b"|",
            ns.as_bytes(),
            b"|",
            body.as_bytes(),
        ] {
            m.update(part);
        }
        m
    }

    fn sign(&self, role: u8, nc: &str, ns: &str, body: &str) -> String {
        hex(&self.mac(role, nc, ns, body).finalize().into_bytes())
    }

    fn verify(&self, role: u8, nc: &str, ns: &str, body: &str, mac_hex: &str) -> bool {
        let Some(tag) = unhex(mac_hex) else {
            return false;
        };
        // verify_slice compares in constant time.
        self.mac(role, nc, ns, body).verify_slice(&tag).is_ok()
    }
}

impl std::fmt::Debug for CommunityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommunityKey(..)")
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut o = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                o.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                o.push('=');
            }
        }
    }
    o
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hello {
    v: u32,
    hello: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    want: Option<String>,
}

const WANT_SERVICES: &str = "services";
const WANT_ASK: &str = "ask";
const WANT_SCORES: &str = "scores";
/// A service request or answer is a few typed fields.
const MAX_ASK: usize = 4096;

/// A member asks to use one of our services (see `services::Service::accept`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAsk {
    /// The service's record type, e.g. `syncthing`.
    pub service: String,
    /// The asker's node id; must be a member.
    pub node_id: String,
    #[serde(default)]
    pub fields: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceAnswer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default)]
    fields: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Challenge {
    v: u32,
    nonce: String,
}

/// The client holds the key: sent before the request, which may be large.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Proof {
    v: u32,
    proof: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Signed {
    v: u32,
    body: String,
    mac: String,
}

fn nonce_ok(n: &str) -> bool {
    n.len() == 32 && unhex(n).is_some()
}

fn line<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(msg).expect("messages serialise");
    line.push(b'\n');
    line
}

struct Conn {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Conn {
    fn new(s: TcpStream) -> Self {
        let (r, w) = s.into_split();
        Conn {
            r: BufReader::new(r),
            w,
        }
    }

    async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), ExchangeError> {
        self.w.write_all(&line(msg)).await?;
        Ok(())
    }

    /// Reads one line without ever holding more than `max` bytes of it (and the reader's
    /// buffer, 8 KiB).
    async fn recv<T: for<'de> Deserialize<'de>>(&mut self, max: usize) -> Result<T, ExchangeError> {
        let mut buf = Vec::new();
        loop {
            let chunk = self.r.fill_buf().await?;
            if chunk.is_empty() {
                return Err(ExchangeError::Closed);
            }
            let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if buf.len() + take > max {
                return Err(ExchangeError::TooLong);
            }
            buf.extend_from_slice(&chunk[..take]);
            self.r.consume(take);
            if done {
                break;
            }
        }
        serde_json::from_slice(&buf).map_err(|e| ExchangeError::Malformed(e.to_string()))
    }
}

fn encode(members: &[Member]) -> String {
    serde_json::to_string(members).expect("members serialise")
}

fn decode(body: &str) -> Result<Vec<Member>, ExchangeError> {
    let list: Vec<Member> =
        serde_json::from_str(body).map_err(|e| ExchangeError::Malformed(e.to_string()))?;
    if list.len() > MAX_MEMBERS {
        return Err(ExchangeError::TooMany);
    }
    Ok(list)
}

/// Client side of every request: hello (with what we want), the peer's challenge, our body
/// signed with role byte `ask`, and the reply checked under role byte `answer`; gives the reply
/// body. Roles differ per request kind so an answer of one kind never passes for another.
async fn request(
    addr: SocketAddr,
    key: &CommunityKey,
    want: Option<&str>,
    (ask, answer): (u8, u8),
    body: String,
) -> Result<String, ExchangeError> {
    tokio::time::timeout(TIMEOUT, async {
        let mut c = Conn::new(TcpStream::connect(addr).await?);
        let nc = hex(&random_bytes::<16>());
        c.send(&Hello {
            v: PROTOCOL,
            hello: nc.clone(),
            want: want.map(String::from),
        })
        .await?;
        let ch: Challenge = c.recv(MAX_PREAUTH).await?;
        if ch.v != PROTOCOL || !nonce_ok(&ch.nonce) {
            return Err(ExchangeError::Malformed("bad challenge".into()));
        }
        // The proof and the request in one write (two would wait on Nagle and a delayed ACK).
        // From here a reset is the server turning our proof away, before reading our body.
        let proof = Proof {
            v: PROTOCOL,
            proof: key.sign(PROOF, &nc, &ch.nonce, want.unwrap_or("")),
        };
        let mac = key.sign(ask, &nc, &ch.nonce, &body);
        let req = Signed {
            v: PROTOCOL,
            body,
            mac,
        };
        let mut lines = line(&proof);
        lines.extend(line(&req));
        c.w.write_all(&lines)
            .await
            .map_err(|e| reset_is_closed(e.into()))?;
        let reply: Signed = c.recv(MAX_LINE).await.map_err(reset_is_closed)?;
        if !key.verify(answer, &nc, &ch.nonce, &reply.body, &reply.mac) {
            return Err(ExchangeError::BadMac);
        }
        Ok(reply.body)
    })
    .await
    .map_err(|_| ExchangeError::Timeout)?
}

fn reset_is_closed(e: ExchangeError) -> ExchangeError {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
    match e {
        ExchangeError::Io(e) if matches!(e.kind(), ConnectionReset | BrokenPipe) => {
            ExchangeError::Closed
        }
        e => e,
    }
}

/// Client side: sends our list to the exchange service at `addr`, returns the peer's list.
pub async fn exchange(
    addr: SocketAddr,
    key: &CommunityKey,
    ours: &[Member],
) -> Result<Vec<Member>, ExchangeError> {
    let reply = request(addr, key, None, (b'C', b'S'), encode(ours)).await?;
    decode(&reply)
}

/// Client side of a services fetch: the records the member at `addr` publishes, each
/// checked and all of them that member's (`node_id`).
pub async fn fetch_services(
    addr: SocketAddr,
    key: &CommunityKey,
    node_id: &str,
) -> Result<Vec<Record>, ExchangeError> {
    let reply = request(addr, key, Some(WANT_SERVICES), (b'Q', b'R'), String::new()).await?;
    Ok(cloudy_model::record::parse_list(reply.as_bytes(), node_id)?)
}

/// Client side of a scores fetch: the member's probe summary, checked by `probe`.
pub async fn fetch_scores(
    addr: SocketAddr,
    key: &CommunityKey,
) -> Result<Vec<cloudy_model::summary::Summary>, ExchangeError> {
    let reply = request(addr, key, Some(WANT_SCORES), (b'P', b'V'), String::new()).await?;
    cloudy_model::summary::parse_summary(reply.as_bytes()).map_err(ExchangeError::Malformed)
}

/// Client side of a service request: the provider's answer fields, or its refusal.
pub async fn ask_service(
    addr: SocketAddr,
    key: &CommunityKey,
    req: &ServiceAsk,
) -> Result<std::collections::BTreeMap<String, String>, ExchangeError> {
    let body = serde_json::to_string(req).expect("requests serialise");
    let reply = request(addr, key, Some(WANT_ASK), (b'A', b'B'), body).await?;
    if reply.len() > MAX_ASK {
        return Err(ExchangeError::TooLong);
    }
    let a: ServiceAnswer =
        serde_json::from_str(&reply).map_err(|e| ExchangeError::Malformed(e.to_string()))?;
    match a.error {
        Some(e) => Err(ExchangeError::Refused(e)),
        None => Ok(a.fields),
    }
}

/// Server side for one connection. `merge` takes the authenticated peer's list and returns
/// ours (after merging) to send back; `services` gives our records for a services fetch. A
/// peer that fails the MAC gets nothing but our nonce.
pub async fn serve(
    stream: TcpStream,
    key: &CommunityKey,
    merge: impl FnOnce(Vec<Member>) -> Vec<Member>,
    services: impl FnOnce() -> Vec<Record>,
    ask: impl FnOnce(ServiceAsk) -> Result<std::collections::BTreeMap<String, String>, String>,
) -> Result<usize, ExchangeError> {
    serve_all(stream, key, merge, services, ask, || "[]".to_string()).await
}

/// `serve`, also answering a scores fetch with `scores` (our probe summary, JSON).
pub async fn serve_all(
    stream: TcpStream,
    key: &CommunityKey,
    merge: impl FnOnce(Vec<Member>) -> Vec<Member>,
    services: impl FnOnce() -> Vec<Record>,
    ask: impl FnOnce(ServiceAsk) -> Result<std::collections::BTreeMap<String, String>, String>,
    scores: impl FnOnce() -> String,
) -> Result<usize, ExchangeError> {
    let mut c = Conn::new(stream);
    let r = tokio::time::timeout(TIMEOUT, async {
        // Until the proof holds, only short lines, and only for HANDSHAKE.
        let (hello, ns, (asked, answers), max) = tokio::time::timeout(HANDSHAKE, async {
            let hello: Hello = c.recv(MAX_PREAUTH).await?;
            if hello.v != PROTOCOL || !nonce_ok(&hello.hello) {
                return Err(ExchangeError::Malformed("bad hello".into()));
            }
            // The same signed request/answer for every kind; only the role bytes and the
            // body (and so its bound) differ (the client side is `request`).
            let (roles, max) = match hello.want.as_deref() {
                None => ((b'C', b'S'), MAX_LINE),
                Some(WANT_SERVICES) => ((b'Q', b'R'), MAX_PREAUTH),
                // A JSON string in a JSON string: every byte escaped at worst to 6.
                Some(WANT_ASK) => ((b'A', b'B'), MAX_PREAUTH + 6 * MAX_ASK),
                Some(WANT_SCORES) => ((b'P', b'V'), MAX_PREAUTH),
                Some(_) => return Err(ExchangeError::Malformed("unknown request".into())),
            };
            let ns = hex(&random_bytes::<16>());
            c.send(&Challenge {
                v: PROTOCOL,
                nonce: ns.clone(),
            })
            .await?;
            let proof: Proof = c.recv(MAX_PREAUTH).await?;
            let want = hello.want.as_deref().unwrap_or("");
            if proof.v != PROTOCOL || !key.verify(PROOF, &hello.hello, &ns, want, &proof.proof) {
                return Err(ExchangeError::BadMac);
            }
            Ok((hello, ns, roles, max))
        })
        .await
        .map_err(|_| ExchangeError::Timeout)??;
        let req: Signed = c.recv(max).await?;
        if !key.verify(asked, &hello.hello, &ns, &req.body, &req.mac) {
            return Err(ExchangeError::BadMac);
        }
        let (body, n) = match hello.want.as_deref() {
            None => {
                let theirs = decode(&req.body)?;
                let n = theirs.len();
                (encode(&merge(theirs)), n)
            }
            Some(WANT_ASK) => {
                if req.body.len() > MAX_ASK {
                    return Err(ExchangeError::TooLong);
                }
                let asked: ServiceAsk = serde_json::from_str(&req.body)
                    .map_err(|e| ExchangeError::Malformed(e.to_string()))?;
                let answer = match ask(asked) {
                    Ok(fields) => ServiceAnswer {
                        error: None,
                        fields,
                    },
                    Err(e) => ServiceAnswer {
                        error: Some(e),
                        fields: Default::default(),
                    },
                };
                (
                    serde_json::to_string(&answer).expect("answers serialise"),
                    0,
                )
            }
            // Services and scores fetches carry no body.
            _ if !req.body.is_empty() => return Err(ExchangeError::BadMac),
            Some(WANT_SERVICES) => (
                serde_json::to_string(&services()).expect("records serialise"),
                0,
            ),
            _ => (scores(), 0),
        };
        let mac = key.sign(answers, &hello.hello, &ns, &body);
        c.send(&Signed {
            v: PROTOCOL,
            body,
            mac,
        })
        .await?;
        Ok(n)
    })
    .await
    .map_err(|_| ExchangeError::Timeout)
    .and_then(|r| r);
    if r.is_err() {
        // Our end first (FIN), so a client whose request we never read sees a close, not
        // only the reset that unread data brings.
        let _ = tokio::time::timeout(Duration::from_millis(100), c.w.shutdown()).await;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::members::tests::member;

    async fn pair(
        server_key: CommunityKey,
        client_key: CommunityKey,
    ) -> (
        Result<Vec<Member>, ExchangeError>,
        Result<usize, ExchangeError>,
        bool,
    ) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let got_theirs = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let g = got_theirs.clone();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            serve(
                s,
                &server_key,
                |_theirs| {
                    g.store(true, std::sync::atomic::Ordering::SeqCst);
                    vec![member('b', "server")]
                },
                Vec::new,
                |_| Err("no".into()),
            )
            .await
        });
        let client = exchange(addr, &client_key, &[member('a', "client")]).await;
        let s = server.await.unwrap();
        (
            client,
            s,
            got_theirs.load(std::sync::atomic::Ordering::SeqCst),
        )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn same_key_swaps_lists() {
        let k = CommunityKey::derive("sants", "0123456789abcdef");
        let (c, s, merged) = pair(k.clone(), k).await;
        assert_eq!(c.unwrap()[0].name, "server");
        assert_eq!(s.unwrap(), 1);
        assert!(merged);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn wrong_key_gets_nothing() {
        let (c, s, merged) = pair(
            CommunityKey::derive("sants", "0123456789abcdef"),
            CommunityKey::derive("sants", "0123456789abcdeX"),
        )
        .await;
        assert!(matches!(s, Err(ExchangeError::BadMac)), "{s:?}");
        assert!(matches!(c, Err(ExchangeError::Closed)), "{c:?}");
        assert!(!merged, "the server never looked at the list");
        let (_, s, _) = pair(
            CommunityKey::derive("sants", "0123456789abcdef"),
            CommunityKey::derive("other", "0123456789abcdef"),
        )
        .await;
        assert!(
            matches!(s, Err(ExchangeError::BadMac)),
            "another community's key is a wrong key"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn services_are_fetched_only_with_the_key() {
        use crate::catalog::tests::record;
        for (server, client, ok) in [
            ("k0123456789abcdef", "k0123456789abcdef", true),
            ("k0123456789abcdef", "wrong0123456789ab", false),
        ] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let sk = CommunityKey::derive("c", server);
            let srv = tokio::spawn(async move {
                let (s, _) = l.accept().await.unwrap();
                serve(
                    s,
                    &sk,
                    |_| panic!("not a join"),
                    || vec![record('a', "serf", 7946)],
                    |_| panic!("not an ask"),
                )
                .await
            });
            let got =
                fetch_services(addr, &CommunityKey::derive("c", client), &"a".repeat(32)).await;
            let s = srv.await.unwrap();
            if ok {
                assert_eq!(got.unwrap()[0].port, 7946);
                s.unwrap();
            } else {
                assert!(matches!(s, Err(ExchangeError::BadMac)), "{s:?}");
                assert!(got.is_err());
            }
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn service_requests_need_the_key_and_carry_refusals() {
        for (client, answer, expect) in [
            ("k0123456789abcdef", Ok("yes"), "ok"),
            ("k0123456789abcdef", Err("full"), "refused: full"),
            ("wrong0123456789ab", Ok("yes"), "bad"),
        ] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let sk = CommunityKey::derive("c", "k0123456789abcdef");
            let srv = tokio::spawn(async move {
                let (s, _) = l.accept().await.unwrap();
                serve(
                    s,
                    &sk,
                    |_| panic!("not a join"),
                    Vec::new,
                    move |a| {
                        assert_eq!(a.fields["device_id"], "D");
                        answer
                            .map(|v| [("folder".to_string(), v.to_string())].into())
                            .map_err(str::to_string)
                    },
                )
                .await
            });
            let req = ServiceAsk {
                service: "syncthing".into(),
                node_id: "a".repeat(32),
                fields: [("device_id".to_string(), "D".to_string())].into(),
            };
            let got = ask_service(addr, &CommunityKey::derive("c", client), &req).await;
            let _ = srv.await.unwrap();
            match expect {
                "ok" => assert_eq!(got.unwrap()["folder"], "yes"),
                "bad" => assert!(got.is_err()),
                e => assert_eq!(got.unwrap_err().to_string(), e),
            }
        }
    }

    // The record MAC's checks moved with it to `catalog::signing`.
    #[test]
    fn record_macs_and_derived_keys() {
        let k = CommunityKey::derive("c", "0123456789abcdef");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(k.serf_key().len(), 44, "32 bytes in base64");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn oversized_line_is_cut_off() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let junk = vec![b'x'; MAX_LINE + 10];
            let _ = s.write_all(&junk).await;
        });
        let (s, _) = l.accept().await.unwrap();
        let r = serve(
            s,
            &CommunityKey::derive("c", "0123456789abcdef"),
            |_| vec![],
            Vec::new,
            |_| Err("no".into()),
        )
        .await;
        assert!(matches!(r, Err(ExchangeError::TooLong)), "{r:?}");
        client.await.unwrap();
    }

    /// A peer holding a connection: the server's result and how long it took.
    async fn served_while(
        peer: impl FnOnce(SocketAddr) -> tokio::task::JoinHandle<()>,
    ) -> (Result<usize, ExchangeError>, std::time::Duration) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = peer(l.local_addr().unwrap());
        let (s, _) = l.accept().await.unwrap();
        let t = std::time::Instant::now();
        let r = serve(
            s,
            &CommunityKey::derive("c", "0123456789abcdef"),
            |_| panic!("never merged"),
            || panic!("never fetched"),
            |_| panic!("never asked"),
        )
        .await;
        client.abort();
        (r, t.elapsed())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn keyless_peers_get_a_short_line_and_a_short_time() {
        // 2 MiB of hello, then held open: cut off at MAX_PREAUTH, not MAX_LINE.
        let (r, took) = served_while(|addr| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let _ = s.write_all(&vec![b'x'; MAX_LINE]).await;
                std::future::pending::<()>().await;
            })
        })
        .await;
        assert!(matches!(r, Err(ExchangeError::TooLong)), "{r:?}");
        assert!(took < std::time::Duration::from_secs(1), "{took:?}");

        // A good hello, then a long "proof": the same.
        let (r, took) = served_while(|addr| {
            tokio::spawn(async move {
                let mut c = Conn::new(TcpStream::connect(addr).await.unwrap());
                let nc = hex(&random_bytes::<16>());
                c.send(&Hello {
                    v: PROTOCOL,
                    hello: nc,
                    want: None,
                })
                .await
                .unwrap();
                let _: Challenge = c.recv(MAX_PREAUTH).await.unwrap();
                let _ = c.w.write_all(&vec![b'x'; MAX_LINE]).await;
                std::future::pending::<()>().await;
            })
        })
        .await;
        assert!(matches!(r, Err(ExchangeError::TooLong)), "{r:?}");
        assert!(took < std::time::Duration::from_secs(1), "{took:?}");

        // A member list signed with a wrong key is never read: the proof fails first.
        let (r, _) = served_while(|addr| {
            tokio::spawn(async move {
                let k = CommunityKey::derive("c", "0123456789abcdeX");
                let _ = exchange(addr, &k, &[member('a', "client")]).await;
            })
        })
        .await;
        assert!(matches!(r, Err(ExchangeError::BadMac)), "{r:?}");

        // A hello, then silence: let go after HANDSHAKE, not the whole exchange's TIMEOUT.
        let (r, took) = served_while(|addr| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let _ = s.write_all(b"{\"v\":2,\"hello\":").await;
                std::future::pending::<()>().await;
            })
        })
        .await;
        assert!(matches!(r, Err(ExchangeError::Timeout)), "{r:?}");
        assert!(took >= HANDSHAKE && took < TIMEOUT, "{took:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_member_list_passes_after_the_proof() {
        let big: Vec<Member> = (0..MAX_MEMBERS)
            .map(|i| Member {
                id: format!("{i:032x}"),
                pubkey: "k".repeat(1100),
                ..member('a', "m")
            })
            .collect();
        assert!(encode(&big).len() > 1 << 20, "a large list");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let k = CommunityKey::derive("c", "0123456789abcdef");
        let (sk, back) = (k.clone(), big.clone());
        let srv = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            serve(
                s,
                &sk,
                move |theirs| {
                    assert_eq!(theirs.len(), MAX_MEMBERS);
                    back
                },
                Vec::new,
                |_| Err("no".into()),
            )
            .await
        });
        let got = exchange(addr, &k, &big).await.unwrap();
        assert_eq!(got.len(), MAX_MEMBERS);
        assert_eq!(srv.await.unwrap().unwrap(), MAX_MEMBERS);
    }
}
