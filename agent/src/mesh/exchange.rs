//! The exchange protocol, on the exchange port (6655): two members swap their member lists over
//! TCP, each side proving it holds the community key before it learns anything, and every
//! body after that sealed. Nothing received is run; lists are parsed strictly, bounded in size
//! and merged by `members`, where each record must carry its own member's signature.
//!
//! ```text
//! client -> server  {"v":3,"hello":NC,"eph":XC}          NC, NS: 16 random bytes, hex
//! server -> client  {"v":3,"nonce":NS,"eph":XS}          XC, XS: ephemeral X25519 keys, hex
//! client -> server  {"v":3,"proof":HMAC(K, "K" NC|NS|WANT|XC|XS)}   (WANT: "" for a list swap)
//! client -> server  LEN(4, big-endian) SEAL(k_cs, role ask, REQUEST)
//! server -> client  LEN SEAL(k_sc, role answer, NODEKEY_S SIG_S BODY)   (only if all held)
//! ```
//! K = HMAC-SHA256(community key, "cloudy join v1" + community name). From the handshake
//! both sides derive k_cs and k_sc: HKDF-SHA256 (salt NC NS) over K's "exchange v3" subkey and
//! the X25519 secret of XC and XS, one key per direction (so a reflected message does not
//! open); SEAL is ChaCha20-Poly1305 with the role byte as associated data, one message per
//! key, so the nonce is zero. The AEAD tag replaces the MACs of protocol 2: only a holder of
//! K opens or makes a body, and with the ephemeral keys a recorded session stays closed to
//! whoever later learns K. A relay or the LAN sees the hello, the challenge and the proof
//! (nonces, ephemeral keys and one MAC) and the sizes; no member, record or request.
//!
//! The community key admits a node; it does not let it speak for another. Every answer is
//! signed by the answering node's own key (ed25519, `NODEKEY_S` in hex and `SIG_S` over the
//! role, NC NS XC XS and BODY), so a client knows which member answered: a services, scores,
//! ratings or ask request names the member it expects, and an answer signed by any other key is
//! refused. A list swap's answer must come from a key that signs one record of the list.
//!
//! Until the peer has proved the key, everything it sends is small: the hello and the proof
//! are lines of at most `MAX_PREAUTH` bytes and must come within `HANDSHAKE`; only then does
//! the server read a request that may be large (a member list, up to `MAX_LINE`). The client
//! sends the proof and the request back to back, so the proof costs no round trip. A peer
//! without the key makes the server hold a short line for a few seconds, never 2 MiB.
//!
//! Request kinds, by the hello's `want` (role bytes ask/answer):
//! - none: a list swap (`C`/`S`), our list for theirs.
//! - `services`: a member's service records (`Q`/`R`), empty request.
//! - `scores`: a member's probe summary (`P`/`V`), empty request.
//! - `ratings`: the user ratings a member gave (`G`/`H`), empty request; each rating is also
//!   signed by the rater's node key, and taken only as that member's (`probe::ratings`).
//! - `info`: a member's node info (`N`/`O`), empty request; the answer must be about the
//!   member whose pinned key signed it (`cloudy_model::info::parse_info`).
//! - `ask`: a member asks to use one of our services (`A`/`B`), e.g. Syncthing: add my device.
//!   The request is `SIG_C` then a `ServiceAsk`: its `node_id` member's pinned node key must
//!   have signed it (over NC NS XC XS and the ask), so no member asks in another's name.
//! - `rekey`: a member hands over a new community key (`E`/`F`): `SIG_C` then a `Rekey` (key,
//!   serial, removed members) signed by the pinned key of the member it names; adopted if
//!   newer (`mesh::rekey`).
//! - `newkey`: a member asks for the current key (`L`/`M`): `SIG_C` then its node id; answered
//!   with a `Rekey` only to a member whose node key we pin and have not removed.
//!
//! The key is a shared ring (`CommunityKey`): the current key opens every request; a replaced
//! one opens only the signed kinds (`ask` and `rekey` for `overlap()` after the switch,
//! `newkey` always), never a list swap, so holding an old key never makes a node a member.
//!
//! Protocol 2 (the same handshake, bodies in clear under MACs) is refused with an error that
//! says to update: a member that cannot sign its record cannot be told apart from a forger.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::mesh::invite::{Invites, Refusal, Token};
use crate::mesh::members::{Member, Members, MAX_MEMBERS};
use crate::os::identity::{self, hex, random_bytes, NodeKey};
use cloudy_model::record::{self, Record};

/// 3: bodies sealed, answers and requests signed by node keys (2 had them in clear under
/// community-key MACs; 1 had no proof before the request).
pub const PROTOCOL: u32 = 3;
/// 1024 members of ~1.4 KiB each (a tinc key, a node key and a signature), with room to
/// spare; the sealed body is binary, so no encoding grows it.
pub const MAX_LINE: usize = 2 << 20;
/// Every line before the peer has proved the key (hello, challenge, proof): ~200 bytes each.
/// (The sealed request of a services or scores fetch is empty: its tag only.)
pub const MAX_PREAUTH: usize = 512;
/// The whole exchange.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The hello and the proof of the key, from the connection's start.
pub const HANDSHAKE: Duration = Duration::from_secs(3);
/// The role byte of the proof of the key; no other message uses it.
const PROOF: u8 = b'K';
/// The Poly1305 tag on every sealed body.
const TAG: usize = 16;
/// A node key and a signature in hex, before an answer's body.
const SIGNER: usize = 64 + 128;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("peer closed the connection (it may not share our community key, or run an agent older than exchange protocol {PROTOCOL})")]
    Closed,
    #[error("message longer than allowed")]
    TooLong,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("wrong community key (MAC check failed)")]
    BadMac,
    #[error("the peer speaks exchange protocol {0}, this node {PROTOCOL}: update the older node's agent (cloudy-agent) so both speak {PROTOCOL}")]
    Version(u32),
    #[error("not signed by the node key of {0}")]
    WrongSigner(String),
    #[error("more than {MAX_MEMBERS} members offered")]
    TooMany,
    #[error("{0}")]
    Record(#[from] record::RecordError),
    #[error("refused: {0}")]
    Refused(String),
}

/// One community key as the protocol uses it: K = HMAC-SHA256(key, "cloudy join v1" +
/// community name), from which every purpose derives its own subkey.
#[derive(Clone)]
struct Secret([u8; 32]);

impl Secret {
    fn derive(community: &str, key: &str) -> Self {
        let mut m = HmacSha256::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
        m.update(b"cloudy join v1");
        m.update(community.as_bytes());
        Secret(m.finalize().into_bytes().into())
    }

    fn tag(&self) -> String {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("32-byte key");
        m.update(b"mdns tag");
        hex(&m.finalize().into_bytes()[..8])
    }

    fn subkey(&self, label: &[u8]) -> [u8; 32] {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("32-byte key");
        m.update(b"subkey|");
        m.update(label);
        m.finalize().into_bytes().into()
    }

    fn serf_key(&self) -> String {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("32-byte key");
        m.update(b"serf gossip");
        base64(&m.finalize().into_bytes())
    }

    fn serf_rpc_auth(&self) -> String {
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

/// One generation of the community key: the key as a seed holds it and its rekey serial (0 for
/// the key a seed or an invitation gave; each rekey counts up).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    pub key: String,
    pub serial: u64,
    /// When it was replaced (unix seconds); 0 for the current one.
    #[serde(default)]
    pub retired: u64,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Generation({}, key ..)", self.serial)
    }
}

impl Generation {
    /// Which of two generations wins: the higher serial, and between two rekeys made at once
    /// (one serial, two keys) the one whose key hashes higher, so every member picks the same.
    pub fn newer_than(&self, o: &Generation) -> bool {
        use sha2::Digest;
        (self.serial, Sha256::digest(self.key.as_bytes()).as_slice())
            > (o.serial, Sha256::digest(o.key.as_bytes()).as_slice())
    }
}

/// Old generations kept, newest first: a member away through this many rekeys still gets the
/// current key from anyone who pins it.
pub const MAX_OLD_KEYS: usize = 4;

/// How long after a rekey the old key still opens every request (members in flight, members
/// that have not been told yet); after it, only a pinned member's `newkey` request.
pub fn overlap() -> Duration {
    std::env::var("CLOUDY_REKEY_OVERLAP_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(120))
}

struct Ring {
    community: String,
    current: (Generation, Secret),
    /// Newest first, at most `MAX_OLD_KEYS`.
    old: Vec<(Generation, Secret)>,
    /// Serf's RPC token, from the key Serf started with: it keeps it for its lifetime.
    serf_rpc: String,
}

/// The community key every task of a node shares: clones see one ring, so a rekey switches
/// the exchange, the mDNS MAC and tag and Serf's gossip key for all of them at once, with the
/// replaced keys kept for the overlap (and for members that come back).
#[derive(Clone)]
pub struct CommunityKey {
    ring: std::sync::Arc<std::sync::RwLock<Ring>>,
    changed: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl CommunityKey {
    pub fn derive(community: &str, key: &str) -> Self {
        Self::with_history(
            community,
            Generation {
                key: key.into(),
                serial: 0,
                retired: 0,
            },
            Vec::new(),
        )
    }

    /// The current generation and the old ones (newest first) as stored.
    pub fn with_history(community: &str, current: Generation, old: Vec<Generation>) -> Self {
        let secret = Secret::derive(community, &current.key);
        let ring = Ring {
            community: community.into(),
            serf_rpc: secret.serf_rpc_auth(),
            current: (current, secret),
            old: old
                .into_iter()
                .take(MAX_OLD_KEYS)
                .map(|g| {
                    let s = Secret::derive(community, &g.key);
                    (g, s)
                })
                .collect(),
        };
        let serial = ring.current.0.serial;
        CommunityKey {
            ring: std::sync::Arc::new(std::sync::RwLock::new(ring)),
            changed: std::sync::Arc::new(tokio::sync::watch::channel(serial).0),
        }
    }

    fn secret(&self) -> Secret {
        self.ring.read().unwrap().current.1.clone()
    }

    /// The keys a peer's proof may be under: the current one, the old ones within the overlap
    /// (or all old ones kept, for a `newkey` request, which is answered only to pinned members).
    fn accepting(&self, all_old: bool) -> Vec<(Secret, bool)> {
        let r = self.ring.read().unwrap();
        let now = crate::mesh::members::now_secs();
        let overlap = overlap().as_secs();
        std::iter::once((r.current.1.clone(), true))
            .chain(
                r.old
                    .iter()
                    .filter(|(g, _)| all_old || now < g.retired.saturating_add(overlap))
                    .map(|(_, s)| (s.clone(), false)),
            )
            .collect()
    }

    pub fn community(&self) -> String {
        self.ring.read().unwrap().community.clone()
    }

    /// The current generation (key and serial).
    pub fn current(&self) -> Generation {
        self.ring.read().unwrap().current.0.clone()
    }

    /// The old generations kept, newest first.
    pub fn old(&self) -> Vec<Generation> {
        self.ring
            .read()
            .unwrap()
            .old
            .iter()
            .map(|(g, _)| g.clone())
            .collect()
    }

    /// Switches to `next` if it is newer than the current generation (which becomes the newest
    /// old one); true if it did. Everything derived from the key follows at once; watchers
    /// (`subscribe`) persist it and tell Serf.
    pub fn adopt(&self, next: Generation) -> bool {
        let mut r = self.ring.write().unwrap();
        if !next.newer_than(&r.current.0) {
            return false;
        }
        let secret = Secret::derive(&r.community, &next.key);
        let mut old = std::mem::replace(&mut r.current, (next, secret));
        old.0.retired = crate::mesh::members::now_secs();
        r.old.insert(0, old);
        r.old.truncate(MAX_OLD_KEYS);
        let serial = r.current.0.serial;
        drop(r);
        self.changed.send_replace(serial);
        true
    }

    /// Told the serial each time the key changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Marks our community's mDNS records; a one-way value, so it tells nothing of the key.
    pub fn tag(&self) -> String {
        self.secret().tag()
    }

    /// A key for one purpose, derived from the current community key; `label` names the
    /// purpose, so no two uses share a key.
    pub fn subkey(&self, label: &[u8]) -> [u8; 32] {
        self.secret().subkey(label)
    }

    /// The subkeys for `label` a peer's value may be under: the current key's, then those of
    /// old keys within the overlap.
    pub fn subkeys_accepted(&self, label: &[u8]) -> Vec<[u8; 32]> {
        self.accepting(false)
            .into_iter()
            .map(|(s, _)| s.subkey(label))
            .collect()
    }

    /// Serf's gossip key (32 bytes, base64): only community members can take part.
    pub fn serf_key(&self) -> String {
        self.secret().serf_key()
    }

    /// The gossip keys of the old generations within the overlap (Serf keeps them installed).
    pub fn serf_keys_old(&self) -> Vec<String> {
        self.accepting(false)
            .into_iter()
            .filter(|(_, cur)| !cur)
            .map(|(s, _)| s.serf_key())
            .collect()
    }

    /// Token for Serf's local RPC, so other local users cannot steer it; from the key Serf
    /// started with (it keeps it while it runs).
    pub fn serf_rpc_auth(&self) -> String {
        self.ring.read().unwrap().serf_rpc.clone()
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
    /// Absent only from a protocol 2 hello, which is refused by its `v`.
    #[serde(default)]
    eph: String,
    /// A redeem hello's invitation id (`invite::Token::id`); no other kind has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tok: Option<String>,
}

const WANT_SERVICES: &str = "services";
const WANT_ASK: &str = "ask";
const WANT_SCORES: &str = "scores";
const WANT_RATINGS: &str = "ratings";
/// A node without the community key redeems an invitation (see `redeem`).
const WANT_REDEEM: &str = "redeem";
/// Role bytes of a redeem's sealed request (the redeemer's name) and answer (name and key).
const REDEEM_ASK: u8 = b'I';
const REDEEM_ANSWER: u8 = b'J';
/// A redeem answer: the community's name and key, sealed; ~300 bytes in hex.
const MAX_REDEEM_LINE: usize = 2048;
const WANT_INFO: &str = "info";
/// A member hands the community's new key to another (`rekey`; role bytes `E`/`F`).
const WANT_REKEY: &str = "rekey";
/// A member asks for the current key, its proof maybe under a replaced one (`newkey`; `L`/`M`).
const WANT_NEWKEY: &str = "newkey";
/// A rekey message: a key (at most 1024 bytes), a serial, removed node ids (32 hex each).
const MAX_REKEY: usize = 1024 + 40 * MAX_MEMBERS + 256;
/// A service request or answer is a few typed fields.
const MAX_ASK: usize = 4096;

/// A member asks to use one of our services (see `services::Service::accept`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAsk {
    /// The service's record type, e.g. `syncthing`.
    pub service: String,
    /// The asker's node id; must be a member, and the request signed by its pinned node key.
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
    eph: String,
}

/// The client holds the key: sent before the request, which may be large.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Proof {
    v: u32,
    proof: String,
}

fn nonce_ok(n: &str) -> bool {
    n.len() == 32 && identity::unhex(n).is_some()
}

fn x25519_public(h: &str) -> Option<x25519_dalek::PublicKey> {
    let b: [u8; 32] = identity::unhex(h)?.try_into().ok()?;
    Some(x25519_dalek::PublicKey::from(b))
}

fn line<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(msg).expect("messages serialise");
    line.push(b'\n');
    line
}

/// What both sides know once the challenge is out: the nonces and the ephemeral keys, in a
/// fixed form every signature and key derivation covers.
struct Transcript {
    nc: String,
    ns: String,
    xc: String,
    xs: String,
}

impl Transcript {
    fn bytes(&self) -> Vec<u8> {
        [&self.nc, "|", &self.ns, "|", &self.xc, "|", &self.xs]
            .concat()
            .into_bytes()
    }

    /// The proof of the key binds the request kind and both ephemeral keys.
    fn proof_body(&self, want: &str) -> String {
        [want, "|", &self.xc, "|", &self.xs].concat()
    }

    /// One sealing key per direction from the community key and the X25519 secret; None when
    /// the peer's ephemeral key made a secret that is not one (a low-order point).
    fn keys(
        &self,
        key: &Secret,
        ours: &x25519_dalek::StaticSecret,
        theirs: &x25519_dalek::PublicKey,
    ) -> Option<SessionKeys> {
        let shared = ours.diffie_hellman(theirs);
        if !shared.was_contributory() {
            return None;
        }
        let mut ikm = key.subkey(b"exchange v3").to_vec();
        ikm.extend_from_slice(shared.as_bytes());
        let salt = [self.nc.as_bytes(), self.ns.as_bytes()].concat();
        let hk = hkdf::Hkdf::<Sha256>::new(Some(&salt), &ikm);
        let derive = |dir: &[u8]| {
            let mut k = [0u8; 32];
            let info = [b"cloudy exchange v3 ".as_slice(), dir, b"|", &self.bytes()].concat();
            hk.expand(&info, &mut k)
                .expect("32 bytes are a valid HKDF length");
            k
        };
        Some(SessionKeys {
            c2s: derive(b"c2s"),
            s2c: derive(b"s2c"),
        })
    }

    fn answer_msg(&self, role: u8, body: &[u8]) -> Vec<u8> {
        [
            b"cloudy exchange answer v3|".as_slice(),
            &[role],
            b"|",
            &self.bytes(),
            b"|",
            body,
        ]
        .concat()
    }

    fn ask_msg(&self, body: &[u8]) -> Vec<u8> {
        [
            b"cloudy exchange ask v3|".as_slice(),
            &self.bytes(),
            b"|",
            body,
        ]
        .concat()
    }
}

struct SessionKeys {
    c2s: [u8; 32],
    s2c: [u8; 32],
}

fn seal(key: &[u8; 32], role: u8, msg: &[u8]) -> Vec<u8> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    // Each key seals one message (it is fresh per connection and direction): nonce zero.
    chacha20poly1305::ChaCha20Poly1305::new(key.into())
        .encrypt(&Default::default(), Payload { msg, aad: &[role] })
        .expect("sealing a bounded message")
}

fn open(key: &[u8; 32], role: u8, sealed: &[u8]) -> Result<Vec<u8>, ExchangeError> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    chacha20poly1305::ChaCha20Poly1305::new(key.into())
        .decrypt(
            &Default::default(),
            Payload {
                msg: sealed,
                aad: &[role],
            },
        )
        .map_err(|_| ExchangeError::BadMac)
}

/// What [`bounded_line`] read.
pub(crate) enum Bounded {
    Line(Vec<u8>),
    /// The peer closed before a whole line.
    Closed,
    /// The line is longer than allowed (nothing more of it was read).
    TooLong,
}

/// Reads one line (with its `\n`) without ever holding more than `max` bytes of it (and the
/// reader's buffer): the pre-authentication lines of the exchange and of the approve handshake.
pub(crate) async fn bounded_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Bounded> {
    let mut buf = Vec::new();
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(Bounded::Closed);
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if buf.len() + take > max {
            return Ok(Bounded::TooLong);
        }
        buf.extend_from_slice(&chunk[..take]);
        r.consume(take);
        if done {
            return Ok(Bounded::Line(buf));
        }
    }
}

fn frame(sealed: &[u8]) -> Vec<u8> {
    let mut f = u32::try_from(sealed.len())
        .expect("bodies are bounded far below 4 GiB")
        .to_be_bytes()
        .to_vec();
    f.extend_from_slice(sealed);
    f
}

struct Conn<S> {
    r: BufReader<tokio::io::ReadHalf<S>>,
    w: tokio::io::WriteHalf<S>,
}

impl<S: AsyncRead + AsyncWrite> Conn<S> {
    fn new(s: S) -> Self {
        let (r, w) = tokio::io::split(s);
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
        match bounded_line(&mut self.r, max).await? {
            Bounded::Line(buf) => {
                serde_json::from_slice(&buf).map_err(|e| ExchangeError::Malformed(e.to_string()))
            }
            Bounded::Closed => Err(ExchangeError::Closed),
            Bounded::TooLong => Err(ExchangeError::TooLong),
        }
    }

    /// One sealed frame of at most `max` bytes of plaintext; its length is checked before a
    /// byte of it is held.
    async fn recv_sealed(&mut self, max: usize) -> Result<Vec<u8>, ExchangeError> {
        let mut len = [0u8; 4];
        self.r.read_exact(&mut len).await.map_err(eof_is_closed)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > max + TAG {
            return Err(ExchangeError::TooLong);
        }
        if len < TAG {
            return Err(ExchangeError::BadMac);
        }
        let mut buf = vec![0u8; len];
        self.r.read_exact(&mut buf).await.map_err(eof_is_closed)?;
        Ok(buf)
    }
}

fn eof_is_closed(e: std::io::Error) -> ExchangeError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ExchangeError::Closed
    } else {
        e.into()
    }
}

fn encode(members: &[Member]) -> String {
    serde_json::to_string(members).expect("members serialise")
}

fn decode(body: &[u8]) -> Result<Vec<Member>, ExchangeError> {
    let list: Vec<Member> =
        serde_json::from_slice(body).map_err(|e| ExchangeError::Malformed(e.to_string()))?;
    if list.len() > MAX_MEMBERS {
        return Err(ExchangeError::TooMany);
    }
    Ok(list)
}

/// A signed answer: who signed it (hex node key) and the body.
struct Answer {
    signer: String,
    body: Vec<u8>,
}

/// Client side of every request: hello (with what we want and our ephemeral key), the peer's
/// challenge, the proof and our sealed request (`sign` makes its signature prefix, if the
/// kind has one), and the sealed reply opened and its signature checked. Roles differ per
/// request kind so an answer of one kind never passes for another.
async fn request(
    addr: SocketAddr,
    key: &CommunityKey,
    want: Option<&str>,
    (ask, answer): (u8, u8),
    body: Vec<u8>,
    sign: Option<&NodeKey>,
) -> Result<Answer, ExchangeError> {
    tokio::time::timeout(TIMEOUT, async {
        let s = TcpStream::connect(addr).await?;
        request_over(s, key, want, (ask, answer), body, sign).await
    })
    .await
    .map_err(|_| ExchangeError::Timeout)?
}

/// The fuzzer's client: a request of kind `want` (None: a list swap) whose body is `body`, as
/// the agent would send it, over any byte stream; gives the answer's body. Not for the agent:
/// its requests go through the typed functions below.
#[doc(hidden)]
pub async fn request_raw<S: AsyncRead + AsyncWrite>(
    stream: S,
    key: &CommunityKey,
    want: Option<&str>,
    body: Vec<u8>,
    sign: Option<&NodeKey>,
) -> Result<Vec<u8>, ExchangeError> {
    let roles = match want {
        None => (b'C', b'S'),
        Some(WANT_SERVICES) => (b'Q', b'R'),
        Some(WANT_SCORES) => (b'P', b'V'),
        Some(WANT_RATINGS) => (b'G', b'H'),
        Some(WANT_INFO) => (b'N', b'O'),
        Some(WANT_ASK) => (b'A', b'B'),
        Some(WANT_REKEY) => (b'E', b'F'),
        Some(WANT_NEWKEY) => (b'L', b'M'),
        Some(_) => (b'?', b'!'),
    };
    tokio::time::timeout(TIMEOUT, request_over(stream, key, want, roles, body, sign))
        .await
        .map_err(|_| ExchangeError::Timeout)?
        .map(|a| a.body)
}

async fn request_over<S: AsyncRead + AsyncWrite>(
    stream: S,
    key: &CommunityKey,
    want: Option<&str>,
    (ask, answer): (u8, u8),
    body: Vec<u8>,
    sign: Option<&NodeKey>,
) -> Result<Answer, ExchangeError> {
    let mut c = Conn::new(stream);
    let eph = x25519_dalek::StaticSecret::from(random_bytes::<32>());
    let nc = hex(&random_bytes::<16>());
    let xc = hex(x25519_dalek::PublicKey::from(&eph).as_bytes());
    c.send(&Hello {
        v: PROTOCOL,
        hello: nc.clone(),
        want: want.map(String::from),
        eph: xc.clone(),
        tok: None,
    })
    .await?;
    let ch: Challenge = c.recv(MAX_PREAUTH).await.map_err(reset_is_closed)?;
    if ch.v != PROTOCOL {
        return Err(ExchangeError::Version(ch.v));
    }
    let theirs = x25519_public(&ch.eph);
    let (true, Some(theirs)) = (nonce_ok(&ch.nonce), theirs) else {
        return Err(ExchangeError::Malformed("bad challenge".into()));
    };
    let t = Transcript {
        nc,
        ns: ch.nonce,
        xc,
        xs: ch.eph,
    };
    let key = key.secret();
    let keys = t
        .keys(&key, &eph, &theirs)
        .ok_or_else(|| ExchangeError::Malformed("bad ephemeral key".into()))?;
    let proof = Proof {
        v: PROTOCOL,
        proof: key.sign(PROOF, &t.nc, &t.ns, &t.proof_body(want.unwrap_or(""))),
    };
    let plain = match sign {
        Some(k) => [k.sign_hex(&t.ask_msg(&body)).into_bytes(), body].concat(),
        None => body,
    };
    // The proof and the request in one write (two would wait on Nagle and a delayed ACK).
    // From here a reset is the server turning our proof away, before reading our body.
    let mut out = line(&proof);
    out.extend(frame(&seal(&keys.c2s, ask, &plain)));
    c.w.write_all(&out)
        .await
        .map_err(|e| reset_is_closed(e.into()))?;
    let sealed = c.recv_sealed(MAX_LINE).await.map_err(reset_is_closed)?;
    let reply = open(&keys.s2c, answer, &sealed)?;
    if reply.len() < SIGNER {
        return Err(ExchangeError::Malformed(
            "answer without a signature".into(),
        ));
    }
    let (who, rest) = reply.split_at(SIGNER);
    let signer = String::from_utf8_lossy(&who[..64]).into_owned();
    let sig = String::from_utf8_lossy(&who[64..]).into_owned();
    if !identity::signature_ok(&signer, &t.answer_msg(answer, rest), &sig) {
        return Err(ExchangeError::WrongSigner("the answering node".into()));
    }
    Ok(Answer {
        signer,
        body: rest.to_vec(),
    })
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

/// The answer came from `from` (its pinned node key signed it), or an error.
fn answered_by(a: &Answer, from: &Member) -> Result<(), ExchangeError> {
    if a.signer != from.signkey || from.signkey.is_empty() {
        return Err(ExchangeError::WrongSigner(from.id.clone()));
    }
    Ok(())
}

/// Client side: sends our list to the exchange service at `addr`, returns the peer's list.
/// Whoever answers must sign with the node key of a record in its own list (its own), so an
/// answer is always some member's word; each record is still checked by `Members::merge`.
pub async fn exchange(
    addr: SocketAddr,
    key: &CommunityKey,
    ours: &[Member],
) -> Result<Vec<Member>, ExchangeError> {
    let a = request(
        addr,
        key,
        None,
        (b'C', b'S'),
        encode(ours).into_bytes(),
        None,
    )
    .await?;
    let list = decode(&a.body)?;
    if !list
        .iter()
        .any(|m| m.signkey == a.signer && m.signature_ok())
    {
        return Err(ExchangeError::WrongSigner(
            "any member of the list it sent".into(),
        ));
    }
    Ok(list)
}

/// Client side of a services fetch: the records the member `from` publishes at `addr`, signed
/// by its pinned node key, each checked and all of them that member's.
pub async fn fetch_services(
    addr: SocketAddr,
    key: &CommunityKey,
    from: &Member,
) -> Result<Vec<Record>, ExchangeError> {
    let a = request(addr, key, Some(WANT_SERVICES), (b'Q', b'R'), vec![], None).await?;
    answered_by(&a, from)?;
    Ok(cloudy_model::record::parse_list(&a.body, &from.id)?)
}

/// Client side of a scores fetch: the probe summary of member `from`, signed by its pinned
/// node key; checked by `probe`.
pub async fn fetch_scores(
    addr: SocketAddr,
    key: &CommunityKey,
    from: &Member,
) -> Result<Vec<cloudy_model::summary::Summary>, ExchangeError> {
    let a = request(addr, key, Some(WANT_SCORES), (b'P', b'V'), vec![], None).await?;
    answered_by(&a, from)?;
    cloudy_model::summary::parse_summary(&a.body).map_err(ExchangeError::Malformed)
}

/// Client side of a ratings fetch: the ratings member `from` gave, its answer signed by its
/// pinned node key, the list bounded and each rating in form (`cloudy_model::rating`); whose
/// they are and their own signatures `probe::ratings` checks.
pub async fn fetch_ratings(
    addr: SocketAddr,
    key: &CommunityKey,
    from: &Member,
) -> Result<Vec<cloudy_model::rating::Rating>, ExchangeError> {
    let a = request(addr, key, Some(WANT_RATINGS), (b'G', b'H'), vec![], None).await?;
    answered_by(&a, from)?;
    cloudy_model::rating::parse_list(&a.body).map_err(|e| ExchangeError::Malformed(e.to_string()))
}

/// Client side of an info fetch: the node info of member `from`, signed by its pinned node key
/// and about that member, with the time the TCP connect took (our latency to it: the cheapest
/// real measure, taken on a connection we make anyway).
pub async fn fetch_info(
    addr: SocketAddr,
    key: &CommunityKey,
    from: &Member,
) -> Result<(cloudy_model::info::NodeInfo, Duration), ExchangeError> {
    let (a, rtt) = tokio::time::timeout(TIMEOUT, async {
        let t0 = std::time::Instant::now();
        let s = TcpStream::connect(addr).await?;
        let rtt = t0.elapsed();
        let a = request_over(s, key, Some(WANT_INFO), (b'N', b'O'), vec![], None).await?;
        Ok::<_, ExchangeError>((a, rtt))
    })
    .await
    .map_err(|_| ExchangeError::Timeout)??;
    answered_by(&a, from)?;
    let info = cloudy_model::info::parse_info(&a.body, &from.id)
        .map_err(|e| ExchangeError::Malformed(e.to_string()))?;
    Ok((info, rtt))
}

/// Client side of a service request to member `to`: signed with our node key (`req.node_id`
/// must be ours), answered under `to`'s pinned key; its answer fields, or its refusal.
pub async fn ask_service(
    addr: SocketAddr,
    key: &CommunityKey,
    node: &NodeKey,
    to: &Member,
    req: &ServiceAsk,
) -> Result<std::collections::BTreeMap<String, String>, ExchangeError> {
    let body = serde_json::to_vec(req).expect("requests serialise");
    let a = request(addr, key, Some(WANT_ASK), (b'A', b'B'), body, Some(node)).await?;
    answered_by(&a, to)?;
    if a.body.len() > MAX_ASK {
        return Err(ExchangeError::TooLong);
    }
    let a: ServiceAnswer =
        serde_json::from_slice(&a.body).map_err(|e| ExchangeError::Malformed(e.to_string()))?;
    match a.error {
        Some(e) => Err(ExchangeError::Refused(e)),
        None => Ok(a.fields),
    }
}

/// Who answers on our side: the community key admits peers, `node` signs our answers, and
/// `members` gives the node keys pinned for each member (an ask is taken only under the
/// asker's).
#[derive(Clone, Copy)]
pub struct Server<'a> {
    pub key: &'a CommunityKey,
    pub node: &'a NodeKey,
    pub members: &'a Mutex<Members>,
    /// Our invitations, and the peer's address (for its attempt count): a node holding a
    /// token and no key may redeem one. None: no redeem is served.
    pub invites: Option<(&'a Invites, std::net::IpAddr)>,
}

/// Server side for one connection. `merge` takes the authenticated peer's list and returns
/// ours (after merging) to send back; `services` gives our records for a services fetch. A
/// peer that fails the proof gets nothing but our nonce and ephemeral key.
pub async fn serve(
    stream: TcpStream,
    local: Server<'_>,
    merge: impl FnOnce(Vec<Member>) -> Vec<Member>,
    services: impl FnOnce() -> Vec<Record>,
    ask: impl FnOnce(ServiceAsk) -> Result<std::collections::BTreeMap<String, String>, String>,
) -> Result<usize, ExchangeError> {
    serve_all(stream, local, merge, services, ask, || "[]".to_string()).await
}

/// `serve`, also answering a scores fetch with `scores` (our probe summary, JSON). Any byte
/// stream will do (a fuzzer drives it with raw bytes through `tokio::io::duplex`).
pub async fn serve_all<S: AsyncRead + AsyncWrite>(
    stream: S,
    local: Server<'_>,
    merge: impl FnOnce(Vec<Member>) -> Vec<Member>,
    services: impl FnOnce() -> Vec<Record>,
    ask: impl FnOnce(ServiceAsk) -> Result<std::collections::BTreeMap<String, String>, String>,
    scores: impl FnOnce() -> String,
) -> Result<usize, ExchangeError> {
    serve_node(
        stream,
        local,
        merge,
        services,
        ask,
        scores,
        Published {
            ratings: || "[]".into(),
            info: || "{}".into(),
        },
    )
    .await
}

/// What we answer to the fetches that need nothing from the asker: the ratings our users gave
/// and our node info (JSON each), made only when a peer asks for them.
pub struct Published<R, I> {
    pub ratings: R,
    pub info: I,
}

/// `serve_all`, also answering a ratings fetch and an info fetch from `published`, and
/// redeeming invitations for a hello that wants `redeem` when `local.invites` is set (without
/// it such a hello is refused like any unknown request).
pub async fn serve_node<S: AsyncRead + AsyncWrite>(
    stream: S,
    local: Server<'_>,
    merge: impl FnOnce(Vec<Member>) -> Vec<Member>,
    services: impl FnOnce() -> Vec<Record>,
    ask: impl FnOnce(ServiceAsk) -> Result<std::collections::BTreeMap<String, String>, String>,
    scores: impl FnOnce() -> String,
    published: Published<impl FnOnce() -> String, impl FnOnce() -> String>,
) -> Result<usize, ExchangeError> {
    let key = local.key;
    let mut c = Conn::new(stream);
    let r = tokio::time::timeout(TIMEOUT, async {
        // Until the proof holds, only short lines, and only for HANDSHAKE.
        let deadline = tokio::time::Instant::now() + HANDSHAKE;
        let hello: Hello = tokio::time::timeout_at(deadline, c.recv(MAX_PREAUTH))
            .await
            .map_err(|_| ExchangeError::Timeout)??;
        if hello.want.as_deref() == Some(WANT_REDEEM) {
            let Some((invites, ip)) = local.invites else {
                return Err(ExchangeError::Malformed("unknown request".into()));
            };
            return redeem_serve(&mut c, hello, invites, ip, deadline)
                .await
                .map(|()| 0);
        }
        let (hello, t, keys, (asked, answers), max) = tokio::time::timeout_at(deadline, async {
            if hello.v != PROTOCOL {
                return Err(ExchangeError::Version(hello.v));
            }
            let theirs = x25519_public(&hello.eph);
            let (true, Some(theirs)) = (nonce_ok(&hello.hello), theirs) else {
                return Err(ExchangeError::Malformed("bad hello".into()));
            };
            // The same sealed, signed request/answer for every kind; only the role bytes and
            // the body (and so its bound) differ (the client side is `request`).
            let (roles, max) = match hello.want.as_deref() {
                None => ((b'C', b'S'), MAX_LINE),
                Some(WANT_SERVICES) => ((b'Q', b'R'), 0),
                Some(WANT_ASK) => ((b'A', b'B'), 128 + MAX_ASK),
                Some(WANT_SCORES) => ((b'P', b'V'), 0),
                Some(WANT_RATINGS) => ((b'G', b'H'), 0),
                Some(WANT_INFO) => ((b'N', b'O'), 0),
                Some(WANT_REKEY) => ((b'E', b'F'), 128 + MAX_REKEY),
                Some(WANT_NEWKEY) => ((b'L', b'M'), 128 + 128),
                Some(_) => return Err(ExchangeError::Malformed("unknown request".into())),
            };
            let eph = x25519_dalek::StaticSecret::from(random_bytes::<32>());
            let t = Transcript {
                nc: hello.hello.clone(),
                ns: hex(&random_bytes::<16>()),
                xc: hello.eph.clone(),
                xs: hex(x25519_dalek::PublicKey::from(&eph).as_bytes()),
            };
            c.send(&Challenge {
                v: PROTOCOL,
                nonce: t.ns.clone(),
                eph: t.xs.clone(),
            })
            .await?;
            let proof: Proof = c.recv(MAX_PREAUTH).await?;
            let want = hello.want.as_deref().unwrap_or("");
            // The current key opens every request. A replaced one opens only requests a
            // pinned member signs (checked below): `ask` and `rekey` within the overlap, so a
            // member in the middle of a switch is not cut, and `newkey` always, so one that
            // was away catches up. An unsigned request (a list swap, a fetch) under an old key
            // could come from anyone who ever held it, and a list swap would make it a member.
            let signed = matches!(want, WANT_ASK | WANT_REKEY | WANT_NEWKEY);
            let Some((secret, _)) = key
                .accepting(want == WANT_NEWKEY)
                .into_iter()
                .filter(|(_, current)| *current || signed)
                .find(|(k, _)| k.verify(PROOF, &t.nc, &t.ns, &t.proof_body(want), &proof.proof))
                .filter(|_| proof.v == PROTOCOL)
            else {
                return Err(ExchangeError::BadMac);
            };
            let keys = t
                .keys(&secret, &eph, &theirs)
                .ok_or_else(|| ExchangeError::Malformed("bad ephemeral key".into()))?;
            Ok((hello, t, keys, roles, max))
        })
        .await
        .map_err(|_| ExchangeError::Timeout)??;
        let sealed = c.recv_sealed(max).await?;
        let req = open(&keys.c2s, asked, &sealed)?;
        let (body, n) = match hello.want.as_deref() {
            None => {
                let theirs = decode(&req)?;
                let n = theirs.len();
                (encode(&merge(theirs)), n)
            }
            Some(WANT_ASK) => {
                let asked = signed_ask(&t, &req, local.members)?;
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
            // Services and scores fetches carry no body (`max` was 0).
            Some(WANT_SERVICES) => (
                serde_json::to_string(&services()).expect("records serialise"),
                0,
            ),
            Some(WANT_REKEY) => {
                let (from, msg) = signed_rekey(&t, &req, local.members)?;
                let error = take_rekey(key, local.members, &from, msg).err();
                if let Some(e) = &error {
                    tracing::warn!("rekey from {from}: {e}");
                }
                let a = ServiceAnswer {
                    error,
                    fields: Default::default(),
                };
                (serde_json::to_string(&a).expect("answers serialise"), 0)
            }
            Some(WANT_NEWKEY) => {
                let from = signed_newkey(&t, &req, local.members)?;
                let g = key.current();
                let ms = local.members.lock().unwrap();
                tracing::info!(
                    "{from} asks for the community key (we hold serial {})",
                    g.serial
                );
                let msg = Rekey {
                    from: ms.me.clone(),
                    community: key.community(),
                    key: g.key,
                    serial: g.serial,
                    removed: ms.removed.iter().cloned().collect(),
                };
                (serde_json::to_string(&msg).expect("serialises"), 0)
            }
            Some(WANT_RATINGS) => ((published.ratings)(), 0),
            Some(WANT_INFO) => ((published.info)(), 0),
            _ => (scores(), 0),
        };
        let sig = local.node.sign_hex(&t.answer_msg(answers, body.as_bytes()));
        let plain = [local.node.public_hex(), sig, body].concat();
        c.w.write_all(&frame(&seal(&keys.s2c, answers, plain.as_bytes())))
            .await?;
        Ok(n)
    })
    .await
    .map_err(|_| ExchangeError::Timeout)
    .and_then(|r| r);
    if let Err(ExchangeError::Version(v)) = &r {
        // Tell an older peer in a line it can log (it cannot open a sealed one).
        let refusal = format!(
            "{{\"v\":{PROTOCOL},\"error\":\"this member speaks exchange protocol {PROTOCOL}, you speak {v}: update cloudy-agent\"}}\n"
        );
        let _ = tokio::time::timeout(
            Duration::from_millis(100),
            c.w.write_all(refusal.as_bytes()),
        )
        .await;
    }
    if r.is_err() {
        // Our end first (FIN), so a client whose request we never read sees a close, not
        // only the reset that unread data brings.
        let _ = tokio::time::timeout(Duration::from_millis(100), c.w.shutdown()).await;
    }
    r
}

/// A redeem's lines after the hello, both ways: the challenge (`nonce`, `eph`), the proof and
/// the sealed request (`proof`, `sealed`), and the answer (`sealed`) or a refusal (`refused`,
/// in clear: a short reason the redeemer shows; it tells nothing of the community).
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemLine {
    v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    eph: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    proof: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemAsk {
    name: String,
}

/// What a redeemed invitation gives: the community to join, as a seed's `[community]` would.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redeemed {
    pub community: String,
    pub key: String,
}

impl std::fmt::Debug for Redeemed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redeemed({}, key ..)", self.community)
    }
}

/// The redeem handshake, server side. It is the member handshake with the token's stored hash
/// in place of the community key: the redeemer names the invitation (`tok`, a hash of the
/// token), proves it holds the token with an HMAC under the hash over both nonces and both
/// ephemeral keys, and seals its name; only then is the invitation used, and its answer is
/// the community's name and key sealed under keys from the hash and the X25519 secret (so a
/// recorded session stays closed to whoever later learns the token). Every line is
/// `MAX_PREAUTH` or less and all of it within the handshake's deadline, as for a stranger.
async fn redeem_serve<S: AsyncRead + AsyncWrite>(
    c: &mut Conn<S>,
    hello: Hello,
    invites: &Invites,
    ip: std::net::IpAddr,
    deadline: tokio::time::Instant,
) -> Result<(), ExchangeError> {
    let refuse = |r: Refusal| RedeemLine {
        v: PROTOCOL,
        refused: Some(r.to_string()),
        ..Default::default()
    };
    if hello.v != PROTOCOL {
        return Err(ExchangeError::Version(hello.v));
    }
    let theirs = x25519_public(&hello.eph);
    let id = hello.tok.clone().unwrap_or_default();
    let (true, Some(theirs), true) = (
        nonce_ok(&hello.hello),
        theirs,
        id.len() == 16 && identity::unhex(&id).is_some(),
    ) else {
        return Err(ExchangeError::Malformed("bad hello".into()));
    };
    if !invites.attempt(ip) {
        c.send(&refuse(Refusal::TooMany)).await?;
        return Err(ExchangeError::Refused(Refusal::TooMany.to_string()));
    }
    let Some(hash) = invites.hash_of(&id) else {
        c.send(&refuse(Refusal::Unknown)).await?;
        return Err(ExchangeError::Refused(Refusal::Unknown.to_string()));
    };
    let key = Secret(hash);
    let eph = x25519_dalek::StaticSecret::from(random_bytes::<32>());
    let t = Transcript {
        nc: hello.hello.clone(),
        ns: hex(&random_bytes::<16>()),
        xc: hello.eph.clone(),
        xs: hex(x25519_dalek::PublicKey::from(&eph).as_bytes()),
    };
    c.send(&RedeemLine {
        v: PROTOCOL,
        nonce: Some(t.ns.clone()),
        eph: Some(t.xs.clone()),
        ..Default::default()
    })
    .await?;
    let req: RedeemLine = tokio::time::timeout_at(deadline, c.recv(MAX_PREAUTH))
        .await
        .map_err(|_| ExchangeError::Timeout)??;
    let proof = req.proof.unwrap_or_default();
    if req.v != PROTOCOL
        || !key.verify(
            PROOF,
            &t.nc,
            &t.ns,
            &t.proof_body(&redeem_want(&id)),
            &proof,
        )
    {
        c.send(&refuse(Refusal::Wrong)).await?;
        return Err(ExchangeError::Refused(Refusal::Wrong.to_string()));
    }
    let keys = t
        .keys(&key, &eph, &theirs)
        .ok_or_else(|| ExchangeError::Malformed("bad ephemeral key".into()))?;
    let sealed = req
        .sealed
        .as_deref()
        .and_then(identity::unhex)
        .ok_or_else(|| ExchangeError::Malformed("no sealed request".into()))?;
    let ask: RedeemAsk = serde_json::from_slice(&open(&keys.c2s, REDEEM_ASK, &sealed)?)
        .map_err(|e| ExchangeError::Malformed(e.to_string()))?;
    match invites.take(&id, &ask.name) {
        Err(r) => {
            tracing::info!("invitation {id}: refused {} ({ip}): {r}", ask.name);
            c.send(&refuse(r.clone())).await?;
            Err(ExchangeError::Refused(r.to_string()))
        }
        Ok((community, key)) => {
            tracing::info!("invitation {id}: redeemed by {} ({ip})", ask.name);
            let body = serde_json::to_vec(&Redeemed { community, key }).expect("serialises");
            c.send(&RedeemLine {
                v: PROTOCOL,
                sealed: Some(hex(&seal(&keys.s2c, REDEEM_ANSWER, &body))),
                ..Default::default()
            })
            .await?;
            Ok(())
        }
    }
}

/// The proof of a redeem binds the kind and the invitation it names.
fn redeem_want(id: &str) -> String {
    [WANT_REDEEM, ":", id].concat()
}

/// Redeems `token` at each of its addresses in turn, as a node named `name`: the community's
/// name and key, or the first refusal (`ExchangeError::Refused`, a reason to show), or the
/// last address's error.
pub async fn redeem(token: &Token, name: &str) -> Result<Redeemed, ExchangeError> {
    let mut last = ExchangeError::Malformed("the token has no address".into());
    for a in &token.addrs {
        let r = tokio::time::timeout(TIMEOUT, async {
            let s = TcpStream::connect(a.as_str()).await?;
            redeem_over(s, token, name).await
        })
        .await
        .map_err(|_| ExchangeError::Timeout)
        .and_then(|r| r);
        match r {
            Ok(r) => return Ok(r),
            Err(e @ ExchangeError::Refused(_)) => return Err(e),
            Err(e) => {
                tracing::warn!("redeeming at {a}: {e}");
                last = e;
            }
        }
    }
    Err(last)
}

/// The redeem handshake, client side, over any stream (see `redeem_serve`).
pub async fn redeem_over<S: AsyncRead + AsyncWrite>(
    stream: S,
    token: &Token,
    name: &str,
) -> Result<Redeemed, ExchangeError> {
    let mut c = Conn::new(stream);
    let id = token.id();
    let eph = x25519_dalek::StaticSecret::from(random_bytes::<32>());
    let nc = hex(&random_bytes::<16>());
    let xc = hex(x25519_dalek::PublicKey::from(&eph).as_bytes());
    c.send(&Hello {
        v: PROTOCOL,
        hello: nc.clone(),
        want: Some(WANT_REDEEM.into()),
        eph: xc.clone(),
        tok: Some(id.clone()),
    })
    .await?;
    let ch: RedeemLine = c.recv(MAX_REDEEM_LINE).await.map_err(reset_is_closed)?;
    if let Some(r) = ch.refused {
        return Err(ExchangeError::Refused(r));
    }
    if ch.v != PROTOCOL {
        return Err(ExchangeError::Version(ch.v));
    }
    let (Some(ns), Some(xs)) = (ch.nonce, ch.eph) else {
        return Err(ExchangeError::Malformed("bad challenge".into()));
    };
    let (true, Some(theirs)) = (nonce_ok(&ns), x25519_public(&xs)) else {
        return Err(ExchangeError::Malformed("bad challenge".into()));
    };
    let t = Transcript { nc, ns, xc, xs };
    let key = Secret(token.hash());
    let keys = t
        .keys(&key, &eph, &theirs)
        .ok_or_else(|| ExchangeError::Malformed("bad ephemeral key".into()))?;
    let ask = serde_json::to_vec(&RedeemAsk { name: name.into() }).expect("serialises");
    c.send(&RedeemLine {
        v: PROTOCOL,
        proof: Some(key.sign(PROOF, &t.nc, &t.ns, &t.proof_body(&redeem_want(&id)))),
        sealed: Some(hex(&seal(&keys.c2s, REDEEM_ASK, &ask))),
        ..Default::default()
    })
    .await
    .map_err(reset_is_closed)?;
    let a: RedeemLine = c.recv(MAX_REDEEM_LINE).await.map_err(reset_is_closed)?;
    if let Some(r) = a.refused {
        return Err(ExchangeError::Refused(r));
    }
    let sealed = a
        .sealed
        .as_deref()
        .and_then(identity::unhex)
        .ok_or_else(|| ExchangeError::Malformed("no answer".into()))?;
    let got: Redeemed = serde_json::from_slice(&open(&keys.s2c, REDEEM_ANSWER, &sealed)?)
        .map_err(|e| ExchangeError::Malformed(e.to_string()))?;
    cloudy_model::names::check_hostname(&got.community)
        .map_err(|e| ExchangeError::Malformed(format!("community name: {e}")))?;
    if got.key.chars().count() < cloudy_model::seed::MIN_COMMUNITY_KEY {
        return Err(ExchangeError::Malformed("community key too short".into()));
    }
    Ok(got)
}

/// A new community key, as one member hands it to another (`rekey`) or answers a member that
/// asks for it (`newkey`): the key, its serial, the node ids removed from the member list
/// (they are not sent the key and are refused from now on), and who says so.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rekey {
    pub from: String,
    pub community: String,
    pub key: String,
    pub serial: u64,
    #[serde(default)]
    pub removed: Vec<String>,
}

impl std::fmt::Debug for Rekey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Rekey({} serial {} from {}, key .., removed {:?})",
            self.community, self.serial, self.from, self.removed
        )
    }
}

impl Rekey {
    /// Strict: a usable key, node ids in form, bounded.
    pub fn check(&self, community: &str) -> Result<(), String> {
        if self.community != community {
            return Err(format!(
                "a key for community {:?}, not ours",
                self.community
            ));
        }
        if self.key.chars().count() < cloudy_model::seed::MIN_COMMUNITY_KEY
            || self.key.len() > 1024
            || self.key.chars().any(char::is_control)
        {
            return Err("not a usable community key".into());
        }
        if !identity::is_node_id(&self.from)
            || self.removed.len() > MAX_MEMBERS
            || !self.removed.iter().all(|r| identity::is_node_id(r))
        {
            return Err("malformed node ids".into());
        }
        Ok(())
    }

    pub fn generation(&self) -> Generation {
        Generation {
            key: self.key.clone(),
            serial: self.serial,
            retired: 0,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewkeyAsk {
    from: String,
}

/// The request's signature prefix and body, the body signed in this session by the node key
/// pinned for the member `id_of` names, that member not removed; else an error.
fn signed_by_member<'a>(
    t: &Transcript,
    req: &'a [u8],
    max: usize,
    members: &Mutex<Members>,
    id_of: impl FnOnce(&[u8]) -> Result<String, ExchangeError>,
) -> Result<(String, &'a [u8]), ExchangeError> {
    if req.len() < 128 || req.len() > 128 + max {
        return Err(ExchangeError::TooLong);
    }
    let (sig, body) = req.split_at(128);
    let id = id_of(body)?;
    let ms = members.lock().unwrap();
    if ms.removed.contains(&id) {
        return Err(ExchangeError::Refused(format!(
            "{id} was removed from the member list"
        )));
    }
    let pinned = ms
        .members
        .get(&id)
        .map(|m| m.signkey.clone())
        .unwrap_or_default();
    let sig = String::from_utf8_lossy(sig);
    if id == ms.me || !identity::signature_ok(&pinned, &t.ask_msg(body), &sig) {
        return Err(ExchangeError::WrongSigner(id));
    }
    Ok((id, body))
}

fn signed_rekey(
    t: &Transcript,
    req: &[u8],
    members: &Mutex<Members>,
) -> Result<(String, Rekey), ExchangeError> {
    let mut msg = None;
    let (from, _) = signed_by_member(t, req, MAX_REKEY, members, |b| {
        let m: Rekey =
            serde_json::from_slice(b).map_err(|e| ExchangeError::Malformed(e.to_string()))?;
        let from = m.from.clone();
        msg = Some(m);
        Ok(from)
    })?;
    Ok((from, msg.expect("parsed above")))
}

fn signed_newkey(
    t: &Transcript,
    req: &[u8],
    members: &Mutex<Members>,
) -> Result<String, ExchangeError> {
    signed_by_member(t, req, 128, members, |b| {
        let a: NewkeyAsk =
            serde_json::from_slice(b).map_err(|e| ExchangeError::Malformed(e.to_string()))?;
        Ok(a.from)
    })
    .map(|(id, _)| id)
}

/// A member's rekey, checked: the removed leave our list, and the key is adopted if newer.
fn take_rekey(
    key: &CommunityKey,
    members: &Mutex<Members>,
    from: &str,
    msg: Rekey,
) -> Result<(), String> {
    msg.check(&key.community())?;
    {
        let mut ms = members.lock().unwrap();
        let removed: Vec<String> = msg
            .removed
            .iter()
            .filter(|r| **r != ms.me)
            .cloned()
            .collect();
        ms.remove(&removed);
    }
    if key.adopt(msg.generation()) {
        tracing::info!(
            "community key replaced (serial {}), from {from}",
            msg.serial
        );
    }
    Ok(())
}

/// Client side of a rekey: hands `msg` (the new key) to member `to`, under the key we hold
/// now and signed by our node key; its answer signed by `to`'s pinned key.
pub async fn send_rekey(
    addr: SocketAddr,
    key: &CommunityKey,
    node: &NodeKey,
    to: &Member,
    msg: &Rekey,
) -> Result<(), ExchangeError> {
    let body = serde_json::to_vec(msg).expect("serialises");
    let a = request(addr, key, Some(WANT_REKEY), (b'E', b'F'), body, Some(node)).await?;
    answered_by(&a, to)?;
    if a.body.len() > MAX_ASK {
        return Err(ExchangeError::TooLong);
    }
    let a: ServiceAnswer =
        serde_json::from_slice(&a.body).map_err(|e| ExchangeError::Malformed(e.to_string()))?;
    match a.error {
        Some(e) => Err(ExchangeError::Refused(e)),
        None => Ok(()),
    }
}

/// Client side of a newkey request: member `from`'s current key, asked as member `me` under
/// the key we hold (maybe a replaced one), its answer signed by `from`'s pinned key.
pub async fn fetch_newkey(
    addr: SocketAddr,
    key: &CommunityKey,
    node: &NodeKey,
    me: &str,
    from: &Member,
) -> Result<Rekey, ExchangeError> {
    let body = serde_json::to_vec(&NewkeyAsk { from: me.into() }).expect("serialises");
    let a = request(addr, key, Some(WANT_NEWKEY), (b'L', b'M'), body, Some(node)).await?;
    answered_by(&a, from)?;
    if a.body.len() > MAX_REKEY {
        return Err(ExchangeError::TooLong);
    }
    let msg: Rekey =
        serde_json::from_slice(&a.body).map_err(|e| ExchangeError::Malformed(e.to_string()))?;
    msg.check(&key.community())
        .map_err(ExchangeError::Malformed)?;
    if msg.from != from.id {
        return Err(ExchangeError::WrongSigner(from.id.clone()));
    }
    Ok(msg)
}

/// An ask, taken only when the node key pinned for its `node_id` signed it in this session.
fn signed_ask(
    t: &Transcript,
    req: &[u8],
    members: &Mutex<Members>,
) -> Result<ServiceAsk, ExchangeError> {
    if req.len() < 128 || req.len() > 128 + MAX_ASK {
        return Err(ExchangeError::TooLong);
    }
    let (sig, body) = req.split_at(128);
    let asked: ServiceAsk =
        serde_json::from_slice(body).map_err(|e| ExchangeError::Malformed(e.to_string()))?;
    let pinned = members
        .lock()
        .unwrap()
        .members
        .get(&asked.node_id)
        .map(|m| m.signkey.clone())
        .unwrap_or_default();
    let sig = String::from_utf8_lossy(sig);
    if !identity::signature_ok(&pinned, &t.ask_msg(body), &sig) {
        return Err(ExchangeError::WrongSigner(asked.node_id));
    }
    Ok(asked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::members::tests::{key_of, member};
    use tokio::io::AsyncReadExt;

    /// The server's side of a test: its list (itself, signed by its key `b`, and `a`), its
    /// node key.
    struct Srv {
        members: Mutex<Members>,
        node: NodeKey,
    }

    fn srv() -> Srv {
        let mut ms = Members::signed(member('b', "server"), key_of('b'));
        ms.merge(vec![member('a', "client")]);
        Srv {
            members: Mutex::new(ms),
            node: key_of('b'),
        }
    }

    impl Srv {
        fn local<'a>(&'a self, key: &'a CommunityKey) -> Server<'a> {
            Server {
                key,
                node: &self.node,
                members: &self.members,
                invites: None,
            }
        }
    }

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
            let srv = srv();
            serve(
                s,
                srv.local(&server_key),
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
                let srv = srv();
                serve(
                    s,
                    srv.local(&sk),
                    |_| panic!("not a join"),
                    || vec![record('b', "serf", 7946)],
                    |_| panic!("not an ask"),
                )
                .await
            });
            let got =
                fetch_services(addr, &CommunityKey::derive("c", client), &member('b', "s")).await;
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
                let srv = srv();
                serve(
                    s,
                    srv.local(&sk),
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
            let got = ask_service(
                addr,
                &CommunityKey::derive("c", client),
                &key_of('a'),
                &member('b', "s"),
                &req,
            )
            .await;
            let _ = srv.await.unwrap();
            match expect {
                "ok" => assert_eq!(got.unwrap()["folder"], "yes"),
                "bad" => assert!(got.is_err()),
                e => assert_eq!(got.unwrap_err().to_string(), e),
            }
        }
    }

    /// A protocol 2 peer (what today's main speaks) is refused with an error that says to
    /// update, on both sides: the server's error, and a line the older client can read.
    #[tokio::test(flavor = "current_thread")]
    async fn protocol_2_is_refused_with_a_clear_error() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("{{\"v\":2,\"hello\":\"{}\"}}\n", "0".repeat(32)).as_bytes())
                .await
                .unwrap();
            let mut got = String::new();
            let _ = s.read_to_string(&mut got).await;
            got
        });
        let (s, _) = l.accept().await.unwrap();
        let srv = srv();
        let r = serve(
            s,
            srv.local(&CommunityKey::derive("c", "0123456789abcdef")),
            |_| panic!("never merged"),
            || panic!("never fetched"),
            |_| panic!("never asked"),
        )
        .await;
        assert!(matches!(r, Err(ExchangeError::Version(2))), "{r:?}");
        let e = r.unwrap_err().to_string();
        assert!(e.contains("protocol 2") && e.contains("update"), "{e}");
        let told = client.await.unwrap();
        assert!(told.contains("update cloudy-agent"), "{told}");
    }

    /// Defect 4: `ServiceAsk.node_id` was not bound to the caller; on the old code any key
    /// holder could ask in A's name (e.g. to drop A's Syncthing device) and the service saw
    /// the request. Now B's ask in A's name, signed by B's key, never reaches the service.
    #[tokio::test(flavor = "current_thread")]
    async fn an_ask_in_another_members_name_is_refused() {
        let k = CommunityKey::derive("c", "0123456789abcdef");
        for (signer, ok) in [('a', true), ('c', false)] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let sk = k.clone();
            let srv = tokio::spawn(async move {
                let (s, _) = l.accept().await.unwrap();
                let srv = srv();
                srv.members
                    .lock()
                    .unwrap()
                    .merge(vec![member('c', "other")]);
                serve(
                    s,
                    srv.local(&sk),
                    |_| panic!("not a join"),
                    Vec::new,
                    |a| Ok([("as".to_string(), a.node_id)].into()),
                )
                .await
            });
            let req = ServiceAsk {
                service: "syncthing".into(),
                node_id: "a".repeat(32),
                fields: Default::default(),
            };
            let got = ask_service(addr, &k, &key_of(signer), &member('b', "s"), &req).await;
            let s = srv.await.unwrap();
            if ok {
                assert_eq!(got.unwrap()["as"], "a".repeat(32));
            } else {
                assert!(matches!(s, Err(ExchangeError::WrongSigner(_))), "{s:?}");
                assert!(got.is_err());
            }
        }
    }

    /// A ratings fetch: the member's list, under its pinned key; another member's answer is
    /// refused, and so is a list past the bounds (1000 ratings).
    #[tokio::test(flavor = "current_thread")]
    async fn ratings_are_fetched_from_the_member_asked_and_bounded() {
        use cloudy_model::rating::Rating;
        let k = CommunityKey::derive("c", "0123456789abcdef");
        let one = Rating {
            rater: "b".repeat(32),
            provider: "a".repeat(32),
            kind: "syncthing".into(),
            stars: 4,
            comment: "<script>x</script>".into(),
            seq: 1,
            sig: "0".repeat(128),
        };
        for (n, ask, ok) in [(1, 'b', true), (1, 'c', false), (1000, 'b', false)] {
            let list = serde_json::to_string(&vec![one.clone(); n]).unwrap();
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let sk = k.clone();
            let srv = tokio::spawn(async move {
                let (s, _) = l.accept().await.unwrap();
                let srv = srv();
                serve_node(
                    s,
                    srv.local(&sk),
                    |_| panic!("not a join"),
                    Vec::new,
                    |_| panic!("not an ask"),
                    || panic!("not scores"),
                    Published {
                        ratings: move || list,
                        info: || "{}".into(),
                    },
                )
                .await
            });
            let got = fetch_ratings(addr, &k, &member(ask, "m")).await;
            let _ = srv.await.unwrap();
            match ok {
                true => assert_eq!(got.unwrap(), vec![one.clone()]),
                false => assert!(got.is_err(), "{n} {ask}"),
            }
        }
    }

    /// An answer signed by a key other than the one pinned for the member we asked is
    /// refused: a member cannot answer for another.
    #[tokio::test(flavor = "current_thread")]
    async fn answers_are_bound_to_the_member_asked() {
        use crate::catalog::tests::record;
        let k = CommunityKey::derive("c", "0123456789abcdef");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let sk = k.clone();
        let srv = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let srv = srv();
            serve(
                s,
                srv.local(&sk),
                |_| panic!("not a join"),
                || vec![record('c', "serf", 1)],
                |_| panic!("not an ask"),
            )
            .await
        });
        // We expect member c's records, but b (the server) answers.
        let got = fetch_services(addr, &k, &member('c', "other")).await;
        let _ = srv.await.unwrap();
        assert!(matches!(got, Err(ExchangeError::WrongSigner(_))), "{got:?}");
    }

    /// Node info (request kind `info`, new in issue 17): fetched from the member asked, under
    /// its pinned key and about itself. An info that names another node (c's id, signed by
    /// b's key) is refused whether we asked b (not b's own info) or c (not c's key).
    #[tokio::test(flavor = "current_thread")]
    async fn infos_are_bound_to_the_member_and_its_key() {
        let k = CommunityKey::derive("c", "0123456789abcdef");
        let info_of = |byte: char, name: &str| cloudy_model::info::NodeInfo {
            id: byte.to_string().repeat(32),
            name: name.into(),
            version: "1".into(),
            ..Default::default()
        };
        for (says, ask, ok) in [('b', 'b', true), ('c', 'b', false), ('c', 'c', false)] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let sk = k.clone();
            let body = info_of(says, "server").to_json();
            let srv = tokio::spawn(async move {
                let (s, _) = l.accept().await.unwrap();
                let srv = srv();
                serve_node(
                    s,
                    srv.local(&sk),
                    |_| panic!("not a join"),
                    Vec::new,
                    |_| panic!("not an ask"),
                    || "[]".into(),
                    Published {
                        ratings: || "[]".into(),
                        info: move || body,
                    },
                )
                .await
            });
            let got = fetch_info(addr, &k, &member(ask, "server")).await;
            let _ = srv.await.unwrap();
            match got {
                Ok((info, rtt)) => {
                    assert!(ok, "{says} {ask}: {info:?}");
                    assert_eq!(info.id, "b".repeat(32));
                    assert!(rtt < TIMEOUT);
                }
                Err(e) => assert!(!ok, "{says} {ask}: {e}"),
            }
        }
    }

    /// The fuzzer's entry: `serve_all` over an in-memory stream, fed raw bytes (here a few
    /// shapes of garbage, before and after a valid hello); it answers with an error, never a
    /// panic, and never reaches the handlers.
    #[tokio::test(flavor = "current_thread")]
    async fn serve_all_takes_raw_bytes_from_any_stream() {
        let hello = format!(
            "{{\"v\":3,\"hello\":\"{}\",\"eph\":\"{}\"}}\n",
            "0".repeat(32),
            hex(&[7u8; 32])
        );
        for input in [
            b"\n".to_vec(),
            vec![0xff; 600],
            [hello.as_bytes(), b"{\"v\":3,\"proof\":\"00\"}\n"].concat(),
            [hello.as_bytes(), &[0, 0, 0, 16], &[1; 16]].concat(),
            format!(
                "{{\"v\":3,\"hello\":\"{}\",\"eph\":\"{}\"}}\n",
                "0".repeat(32),
                "0".repeat(64)
            )
            .into_bytes(),
        ] {
            let (mut peer, ours) = tokio::io::duplex(1 << 16);
            peer.write_all(&input).await.unwrap();
            drop(peer);
            let srv = srv();
            let k = CommunityKey::derive("c", "0123456789abcdef");
            let r = serve_all(
                ours,
                srv.local(&k),
                |_| panic!("never merged"),
                || panic!("never fetched"),
                |_| panic!("never asked"),
                || panic!("never scored"),
            )
            .await;
            assert!(r.is_err(), "{input:?}");
        }
    }

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
        let srv = srv();
        let r = serve(
            s,
            srv.local(&CommunityKey::derive("c", "0123456789abcdef")),
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
        let srv = srv();
        let r = serve(
            s,
            srv.local(&CommunityKey::derive("c", "0123456789abcdef")),
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
                    eph: hex(&[9u8; 32]),
                    tok: None,
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
                let _ = s.write_all(b"{\"v\":3,\"hello\":").await;
                std::future::pending::<()>().await;
            })
        })
        .await;
        assert!(matches!(r, Err(ExchangeError::Timeout)), "{r:?}");
        assert!(took >= HANDSHAKE && took < TIMEOUT, "{took:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_member_list_passes_after_the_proof() {
        // Records as large as real ones: a 4096-bit tinc key, a node key, a signature.
        let big: Vec<Member> = (0..MAX_MEMBERS)
            .map(|i| Member {
                id: format!("{i:032x}"),
                pubkey: "k".repeat(1100),
                ..member('b', "m")
            })
            .collect();
        assert!(encode(&big).len() > 1 << 20, "a large list");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let k = CommunityKey::derive("c", "0123456789abcdef");
        let (sk, back) = (k.clone(), big.clone());
        let srv = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let srv = srv();
            serve(
                s,
                srv.local(&sk),
                move |theirs| {
                    assert_eq!(theirs.len(), MAX_MEMBERS);
                    // The answerer's own record (key `b`) is in what it sends.
                    let mut back = back;
                    back[0] = member('b', "server");
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

    /// One redeem served by `inv` on loopback, through a relay that records every byte both
    /// ways (as the LAN would see them): the redeemer's result, the server's, and the bytes.
    async fn redeem_seen(
        inv: std::sync::Arc<Invites>,
        token: Token,
        name: &str,
    ) -> (
        Result<Redeemed, ExchangeError>,
        Result<usize, ExchangeError>,
        Vec<u8>,
    ) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, peer) = l.accept().await.unwrap();
            let srv = srv();
            let key = CommunityKey::derive("lab", "0123456789abcdef");
            serve_all(
                s,
                Server {
                    invites: Some((&inv, peer.ip())),
                    ..srv.local(&key)
                },
                |_| panic!("no list swap"),
                || panic!("no services"),
                |_| panic!("no ask"),
                || panic!("no scores"),
            )
            .await
        });
        // The relay: the redeemer talks to it, it to the server, and it keeps all it passes.
        let (ours, relay) = tokio::io::duplex(4096);
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        tokio::spawn(async move {
            let up = TcpStream::connect(addr).await.unwrap();
            let (mut ur, mut uw) = tokio::io::split(up);
            let (mut rr, mut rw) = tokio::io::split(relay);
            let s3 = s2.clone();
            let a = async move {
                let mut b = [0u8; 1024];
                while let Ok(n @ 1..) = rr.read(&mut b).await {
                    s2.lock().unwrap().extend_from_slice(&b[..n]);
                    if uw.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                }
            };
            let b = async move {
                let mut b = [0u8; 1024];
                while let Ok(n @ 1..) = ur.read(&mut b).await {
                    s3.lock().unwrap().extend_from_slice(&b[..n]);
                    if rw.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                }
            };
            tokio::join!(a, b);
        });
        let got = redeem_over(ours, &token, name).await;
        let served = server.await.unwrap();
        let seen = seen.lock().unwrap().clone();
        (got, served, seen)
    }

    fn invites() -> (tempfile::TempDir, std::sync::Arc<Invites>) {
        let dir = tempfile::tempdir().unwrap();
        let inv =
            Invites::load(dir.path().join("invites.json"), "lab", "0123456789abcdef").unwrap();
        (dir, std::sync::Arc::new(inv))
    }

    const DAY: Duration = Duration::from_secs(86400);

    #[tokio::test]
    async fn an_invitation_gives_the_key_once_and_never_in_clear() {
        let (_d, inv) = invites();
        let t = inv
            .create(vec!["127.0.0.1:1".into()], None, DAY, 1)
            .unwrap();
        let (got, served, seen) = redeem_seen(inv.clone(), t.clone(), "newnode").await;
        let got = got.unwrap();
        assert_eq!(
            (got.community.as_str(), got.key.as_str()),
            ("lab", "0123456789abcdef")
        );
        served.unwrap();
        // What a relay or the LAN saw: no key, in any spelling, and not the community's name.
        let seen = String::from_utf8_lossy(&seen).into_owned();
        for secret in [
            "0123456789abcdef",
            &hex(b"0123456789abcdef"),
            "MDEyMzQ1Njc4OWFiY2RlZg",
        ] {
            assert!(!seen.contains(secret), "the key crossed in clear: {seen}");
        }
        assert!(!seen.contains("lab\""), "{seen}");
        // The same token again: refused, with a reason the redeemer can show.
        let (again, _, _) = redeem_seen(inv.clone(), t, "newnode").await;
        match again {
            Err(ExchangeError::Refused(r)) => assert!(r.contains("already used"), "{r}"),
            r => panic!("a used token was not refused: {r:?}"),
        }
    }

    #[tokio::test]
    async fn expired_unknown_and_misnamed_invitations_are_refused_clearly() {
        let (_d, inv) = invites();
        let old = inv
            .create(vec!["127.0.0.1:1".into()], None, Duration::from_secs(0), 1)
            .unwrap();
        let refused = |r: Result<Redeemed, ExchangeError>| match r {
            Err(ExchangeError::Refused(r)) => r,
            r => panic!("not refused: {r:?}"),
        };
        let (r, _, seen) = redeem_seen(inv.clone(), old, "n").await;
        assert!(refused(r).contains("expired"));
        assert!(!String::from_utf8_lossy(&seen).contains("0123456789abcdef"));
        // A token this node never made (a stranger's guess): unknown, and nothing else said.
        let stranger = Token::new(vec!["127.0.0.1:1".into()]);
        let (r, _, seen) = redeem_seen(inv.clone(), stranger, "n").await;
        assert!(refused(r).contains("unknown"));
        let seen = String::from_utf8_lossy(&seen).into_owned();
        assert!(
            !seen.contains("nonce") && !seen.contains("0123456789abcdef"),
            "{seen}"
        );
        let bound = inv
            .create(vec!["127.0.0.1:1".into()], Some("alice".into()), DAY, 1)
            .unwrap();
        let (r, _, _) = redeem_seen(inv.clone(), bound.clone(), "mallory").await;
        assert!(refused(r).contains("\"alice\""));
        // The refused name did not use it up.
        let (r, _, _) = redeem_seen(inv.clone(), bound, "alice").await;
        assert_eq!(r.unwrap().community, "lab");
    }

    #[tokio::test]
    async fn a_wrong_secret_for_a_known_invitation_is_refused() {
        let (_d, inv) = invites();
        let t = inv
            .create(vec!["127.0.0.1:1".into()], None, DAY, 1)
            .unwrap();
        // A redeemer that knows the invitation's id (it crossed the LAN in a hello) but not
        // its secret: it proves under a hash of its own.
        let wrong = Token::new(vec!["127.0.0.1:1".into()]);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let inv2 = inv.clone();
        let server = tokio::spawn(async move {
            let (s, peer) = l.accept().await.unwrap();
            let srv = srv();
            let key = CommunityKey::derive("lab", "0123456789abcdef");
            serve_all(
                s,
                Server {
                    invites: Some((&inv2, peer.ip())),
                    ..srv.local(&key)
                },
                |_| vec![],
                Vec::new,
                |_| Err(String::new()),
                String::new,
            )
            .await
        });
        let mut c = Conn::new(TcpStream::connect(addr).await.unwrap());
        let eph = x25519_dalek::StaticSecret::from(random_bytes::<32>());
        let nc = hex(&random_bytes::<16>());
        let xc = hex(x25519_dalek::PublicKey::from(&eph).as_bytes());
        c.send(&Hello {
            v: PROTOCOL,
            hello: nc.clone(),
            want: Some(WANT_REDEEM.into()),
            eph: xc.clone(),
            tok: Some(t.id()),
        })
        .await
        .unwrap();
        let ch: RedeemLine = c.recv(MAX_REDEEM_LINE).await.unwrap();
        let tr = Transcript {
            nc,
            ns: ch.nonce.unwrap(),
            xc,
            xs: ch.eph.unwrap(),
        };
        let key = Secret(wrong.hash());
        c.send(&RedeemLine {
            v: PROTOCOL,
            proof: Some(key.sign(PROOF, &tr.nc, &tr.ns, &tr.proof_body(&redeem_want(&t.id())))),
            sealed: Some(String::new()),
            ..Default::default()
        })
        .await
        .unwrap();
        let a: RedeemLine = c.recv(MAX_REDEEM_LINE).await.unwrap();
        assert_eq!(a.refused.as_deref(), Some("wrong invitation token"));
        assert!(a.sealed.is_none());
        assert!(matches!(
            server.await.unwrap(),
            Err(ExchangeError::Refused(_))
        ));
        // The real token still works: a wrong guess does not use it up.
        let (r, _, _) = redeem_seen(inv, t, "n").await;
        assert_eq!(r.unwrap().key, "0123456789abcdef");
    }

    #[tokio::test]
    async fn a_member_server_without_invitations_refuses_a_redeem() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let srv = srv();
            let key = CommunityKey::derive("lab", "0123456789abcdef");
            serve(
                s,
                srv.local(&key),
                |_| vec![],
                Vec::new,
                |_| Err(String::new()),
            )
            .await
        });
        let t = Token::new(vec![addr.to_string()]);
        let r = redeem(&t, "n").await;
        assert!(r.is_err(), "{r:?}");
        assert!(matches!(
            server.await.unwrap(),
            Err(ExchangeError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn redeem_attempts_are_limited_per_address() {
        let (_d, inv) = invites();
        for _ in 0..crate::mesh::invite::MAX_ATTEMPTS {
            let (r, _, _) =
                redeem_seen(inv.clone(), Token::new(vec!["127.0.0.1:1".into()]), "n").await;
            assert!(
                matches!(r, Err(ExchangeError::Refused(ref m)) if m.contains("unknown")),
                "{r:?}"
            );
        }
        let (r, _, _) = redeem_seen(inv.clone(), Token::new(vec!["127.0.0.1:1".into()]), "n").await;
        assert!(
            matches!(r, Err(ExchangeError::Refused(ref m)) if m.contains("too many")),
            "{r:?}"
        );
    }

    /// One connection served by `b` (members a and b, plus c when `with_c`), under `key`; `a`
    /// removed first when `a_removed`.
    async fn serve_rekeyed(
        key: CommunityKey,
        a_removed: bool,
    ) -> (
        SocketAddr,
        tokio::task::JoinHandle<Result<usize, ExchangeError>>,
    ) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let srv = srv();
            if a_removed {
                srv.members.lock().unwrap().remove(&["a".repeat(32)]);
            }
            serve(
                s,
                srv.local(&key),
                |_| vec![member('b', "server")],
                Vec::new,
                |_| Err("no".into()),
            )
            .await
        });
        (addr, h)
    }

    fn rekey_msg(from: char, serial: u64) -> Rekey {
        Rekey {
            from: from.to_string().repeat(32),
            community: "c".into(),
            key: format!("the community key number {serial}"),
            serial,
            removed: Vec::new(),
        }
    }

    const OLD: &str = "0123456789abcdef";

    /// A key replaced long ago (past any overlap), and the new one current.
    fn rekeyed_long_ago() -> CommunityKey {
        CommunityKey::with_history(
            "c",
            rekey_msg('a', 1).generation(),
            vec![Generation {
                key: OLD.into(),
                serial: 0,
                retired: 1,
            }],
        )
    }

    /// A pinned member's rekey switches the server's key (every clone of it); a rekey signed
    /// by a key that is not the named member's is refused and changes nothing.
    #[tokio::test(flavor = "current_thread")]
    async fn a_members_rekey_switches_the_key_and_a_forged_one_does_not() {
        let k = CommunityKey::derive("c", OLD);
        let (addr, h) = serve_rekeyed(k.clone(), false).await;
        // 'c' signs a message naming 'a': refused.
        let forged = send_rekey(
            addr,
            &k,
            &key_of('c'),
            &member('b', "s"),
            &rekey_msg('a', 1),
        )
        .await;
        assert!(forged.is_err());
        assert!(matches!(
            h.await.unwrap(),
            Err(ExchangeError::WrongSigner(_))
        ));
        assert_eq!(k.current().serial, 0);
        let (addr, h) = serve_rekeyed(k.clone(), false).await;
        send_rekey(
            addr,
            &k,
            &key_of('a'),
            &member('b', "s"),
            &rekey_msg('a', 1),
        )
        .await
        .unwrap();
        h.await.unwrap().unwrap();
        assert_eq!(k.current().serial, 1);
        assert_eq!(k.old()[0].key, OLD);
        // Within the overlap a member still on the old key may hand over a rekey (signed),
        // but nobody swaps lists under it: at first a list swap under the old key during the
        // overlap made its holder, member or not, a member for good.
        let behind = CommunityKey::derive("c", OLD);
        let (addr, h) = serve_rekeyed(k.clone(), false).await;
        assert!(exchange(addr, &behind, &[member('a', "client")])
            .await
            .is_err());
        assert!(matches!(h.await.unwrap(), Err(ExchangeError::BadMac)));
        let (addr, h) = serve_rekeyed(k.clone(), false).await;
        send_rekey(
            addr,
            &behind,
            &key_of('a'),
            &member('b', "s"),
            &rekey_msg('a', 1),
        )
        .await
        .unwrap();
        h.await.unwrap().unwrap();
    }

    /// Past the overlap, the old key opens nothing but a pinned member's `newkey` request,
    /// which gets the current key; a node that only holds the old key and is no member, or
    /// was removed, is refused. (Before rekeys, any holder of the key was a member for good.)
    #[tokio::test(flavor = "current_thread")]
    async fn after_the_overlap_the_old_key_only_fetches_the_new_one_for_members() {
        let old = CommunityKey::derive("c", OLD);
        let (addr, h) = serve_rekeyed(rekeyed_long_ago(), false).await;
        assert!(exchange(addr, &old, &[member('a', "client")])
            .await
            .is_err());
        assert!(matches!(h.await.unwrap(), Err(ExchangeError::BadMac)));

        let (addr, h) = serve_rekeyed(rekeyed_long_ago(), false).await;
        let got = fetch_newkey(addr, &old, &key_of('a'), &"a".repeat(32), &member('b', "s"))
            .await
            .unwrap();
        h.await.unwrap().unwrap();
        assert_eq!(
            (got.serial, got.key.as_str()),
            (1, "the community key number 1")
        );
        assert!(old.adopt(got.generation()));

        // A stranger with the old key, in its own name or in a member's.
        for (signer, as_id) in [('c', 'c'), ('c', 'a')] {
            let (addr, h) = serve_rekeyed(rekeyed_long_ago(), false).await;
            let stale = CommunityKey::derive("c", OLD);
            let r = fetch_newkey(
                addr,
                &stale,
                &key_of(signer),
                &as_id.to_string().repeat(32),
                &member('b', "s"),
            )
            .await;
            assert!(r.is_err());
            assert!(matches!(
                h.await.unwrap(),
                Err(ExchangeError::WrongSigner(_))
            ));
        }
        // A removed member.
        let (addr, h) = serve_rekeyed(rekeyed_long_ago(), true).await;
        let stale = CommunityKey::derive("c", OLD);
        let r = fetch_newkey(
            addr,
            &stale,
            &key_of('a'),
            &"a".repeat(32),
            &member('b', "s"),
        )
        .await;
        assert!(r.is_err());
        assert!(matches!(h.await.unwrap(), Err(ExchangeError::Refused(_))));
    }

    #[test]
    fn rekey_messages_are_checked_and_generations_ordered() {
        let ok = rekey_msg('a', 2);
        assert!(ok.check("c").is_ok());
        assert!(ok.check("d").is_err());
        for bad in [
            Rekey {
                key: "short".into(),
                ..ok.clone()
            },
            Rekey {
                key: "x".repeat(1025),
                ..ok.clone()
            },
            Rekey {
                key: format!("{}\n", "k".repeat(20)),
                ..ok.clone()
            },
            Rekey {
                from: "a".into(),
                ..ok.clone()
            },
            Rekey {
                removed: vec!["zz".into()],
                ..ok.clone()
            },
            Rekey {
                removed: vec!["a".repeat(32); MAX_MEMBERS + 1],
                ..ok.clone()
            },
        ] {
            assert!(bad.check("c").is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<Rekey>(
            r#"{"from":"x","community":"c","key":"k","serial":1,"extra":1}"#
        )
        .is_err());
        let k = CommunityKey::derive("c", OLD);
        assert!(
            !k.adopt(Generation {
                key: "an older one of length".into(),
                serial: 0,
                retired: 0
            }) || k.current().serial == 0
        );
        assert!(k.adopt(rekey_msg('a', 3).generation()));
        assert!(!k.adopt(rekey_msg('a', 2).generation()), "never back");
        assert!(!k.adopt(rekey_msg('a', 3).generation()), "the same again");
        for i in 4..12 {
            k.adopt(rekey_msg('a', i).generation());
        }
        assert_eq!(k.old().len(), MAX_OLD_KEYS);
    }
}
