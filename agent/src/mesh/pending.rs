//! Approval of a pending node: a node whose seed names a community but holds neither its key
//! nor an invitation announces itself on the LAN (`catalog::pending`), shows a short
//! fingerprint of its node key on its console, and waits on its exchange port for one member
//! to approve it. This module holds the fingerprint, the announcement's TXT form and the
//! approve handshake, both sides.
//!
//! ```text
//! member  -> pending  {"v":1,"want":"approve","hello":NC}
//! pending -> member   {"v":1,"nonce":NS,"node":NK,"x":XP,"sig":SIG_NK("cloudy pending offer v1|" NC|NS|XP)}
//! member  -> pending  {"v":1,"eph":XE,"sealed":SEAL(k, 'D', {"community","key"}),"by":NK_M,
//!                      "sig":SIG_NK_M("cloudy approval v1|" NC|NS|XP|XE|sealed)}
//! pending -> member   {"v":1,"joined":SIG_NK("cloudy approved v1|" NC|NS|XP|XE)}  or {"v":1,"refused":"..."}
//! ```
//! XP is a fresh X25519 key of the pending node, signed by its node key in the offer: the
//! member checks that signature and that NK's fingerprint is the one the admin read off the
//! console, so only that node opens what follows. k = HKDF-SHA256 (salt NC NS) over the
//! X25519 secret of XE and XP, bound to the whole transcript; SEAL is ChaCha20-Poly1305 with
//! the role byte `D` as associated data (one message per key, so the nonce is zero).
//!
//! What it cannot do: the pending node has nothing to check an approver against, so anyone on
//! the LAN may "approve" it with a key of their own (README, Security model). It takes one
//! approval and is then a member of whatever it was given; the admin compares fingerprints and
//! sees the node join the member list, or not.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::os::identity::{self, hex, random_bytes, NodeKey};

/// The approve handshake's own version (it is not the member exchange).
pub const VERSION: u32 = 1;
/// The hello's `want`.
pub const WANT_APPROVE: &str = "approve";
/// Every line of the handshake; the approval, the longest, is ~600 bytes.
pub const MAX_LINE: usize = 1024;
/// The whole handshake.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The DNS-SD type a pending node announces (avahi file) and members browse.
pub const DNSSD_TYPE: &str = "_cloudy-pending._tcp";
/// Role byte of the sealed approval (the exchange's roles are other letters).
const ROLE_APPROVAL: u8 = b'D';
/// Characters of a fingerprint, without its dashes: 80 bits of SHA-256.
const FP_CHARS: usize = 16;
const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

#[derive(Debug, thiserror::Error)]
pub enum PendingError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("the node closed the connection (is it still pending?)")]
    Closed,
    #[error("line longer than allowed")]
    TooLong,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("the node's key has fingerprint {got}, not {want}: this is another node (compare the fingerprint on its console)")]
    WrongNode { want: String, got: String },
    #[error("bad signature from {0}")]
    BadSignature(&'static str),
    #[error("refused: {0}")]
    Refused(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    #[error("{0:?} is not a fingerprint: 16 letters A-Z and digits 2-7, as 4 groups of 4 (e.g. ABCD-EFGH-IJKL-MNOP)")]
    Form(String),
}

/// The fingerprint of a node key (hex): the first 80 bits of its SHA-256 in base32, as four
/// groups of four (`ABCD-EFGH-IJKL-MNOP`), short enough to read off a console and compare.
pub fn fingerprint(node_key_hex: &str) -> Option<String> {
    let key = identity::unhex(node_key_hex).filter(|k| k.len() == 32)?;
    let digest = Sha256::digest(&key);
    // 80 bits = 16 groups of 5.
    let mut bits: u128 = 0;
    for b in &digest[..10] {
        bits = (bits << 8) | u128::from(*b);
    }
    let chars: String = (0..FP_CHARS)
        .map(|i| B32[((bits >> (75 - 5 * i)) & 31) as usize] as char)
        .collect();
    Some(group(&chars))
}

fn group(chars: &str) -> String {
    chars
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("ASCII"))
        .collect::<Vec<_>>()
        .join("-")
}

/// A fingerprint as a person types it: any case, with dashes or spaces between groups or
/// none; the canonical form, or why not.
pub fn parse_fingerprint(s: &str) -> Result<String, FingerprintError> {
    let bad = || FingerprintError::Form(s.chars().take(40).collect());
    if s.len() > 40 {
        return Err(bad());
    }
    let chars: String = s
        .chars()
        .filter(|c| *c != '-' && *c != ' ')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if chars.len() != FP_CHARS || !chars.bytes().all(|b| B32.contains(&b)) {
        return Err(bad());
    }
    Ok(group(&chars))
}

/// What a pending node says of itself on the LAN: no secret, nothing to act on but an address
/// to offer an approval to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announcement {
    /// The community it waits to join (members list only their own community's).
    pub community: String,
    pub node_id: String,
    pub ip: IpAddr,
    /// Its exchange port, where it serves the approve handshake.
    pub port: u16,
    /// Its node key (hex); the fingerprint is of this.
    pub node_key: String,
}

/// TXT values longer than this are refused (a node key is 64).
const MAX_TXT_VALUE: usize = 64;
const MAX_TXT_PAIRS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pending announcement: {0}")]
pub struct AnnouncementError(String);

impl Announcement {
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.node_key).expect("checked when made or parsed")
    }

    /// The TXT pairs of the announcement (`v`, `mc`, `id`, `ip`, `nk`); the port is the SRV's.
    pub fn to_txt(&self) -> Vec<(String, String)> {
        vec![
            ("v".into(), VERSION.to_string()),
            ("mc".into(), self.community.clone()),
            ("id".into(), self.node_id.clone()),
            ("ip".into(), self.ip.to_string()),
            ("nk".into(), self.node_key.clone()),
        ]
    }

    /// Parses TXT pairs strictly: exactly the keys of `to_txt`, each once and in its syntax.
    pub fn from_txt(pairs: &[(&str, Option<&[u8]>)], port: u16) -> Result<Self, AnnouncementError> {
        let e = |m: &str| AnnouncementError(m.to_string());
        if pairs.len() > MAX_TXT_PAIRS {
            return Err(e("too many TXT keys"));
        }
        let mut got: std::collections::BTreeMap<&str, &str> = Default::default();
        for (k, v) in pairs {
            if !["v", "mc", "id", "ip", "nk"].contains(k) {
                return Err(AnnouncementError(format!("unknown TXT key {k:?}")));
            }
            let v = v.ok_or_else(|| e("TXT key without a value"))?;
            if v.len() > MAX_TXT_VALUE {
                return Err(e("TXT value too long"));
            }
            let v = std::str::from_utf8(v).map_err(|_| e("TXT value not UTF-8"))?;
            if got.insert(k, v).is_some() {
                return Err(AnnouncementError(format!("TXT key {k:?} twice")));
            }
        }
        let get = |k: &str| {
            got.get(k)
                .copied()
                .ok_or_else(|| AnnouncementError(format!("no {k:?}")))
        };
        if get("v")? != VERSION.to_string() {
            return Err(e("unknown version"));
        }
        let community = get("mc")?.to_string();
        cloudy_model::names::check_hostname(&community)
            .map_err(|p| AnnouncementError(format!("community: {p}")))?;
        let node_id = get("id")?.to_string();
        if !identity::is_node_id(&node_id) {
            return Err(e("bad node id"));
        }
        let ip: IpAddr = get("ip")?.parse().map_err(|_| e("bad ip"))?;
        if ip.is_loopback() || ip.is_multicast() || ip.is_unspecified() {
            return Err(e("unusable ip"));
        }
        let node_key = get("nk")?.to_string();
        if !identity::is_node_key(&node_key) || node_key.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(e("bad node key"));
        }
        if port == 0 {
            return Err(e("port 0"));
        }
        Ok(Announcement {
            community,
            node_id,
            ip,
            port,
            node_key,
        })
    }
}

/// What the approver sends, sealed: the community to join, as a seed's `[community]` would.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub community: String,
    pub key: String,
    /// The approver's exchange address (`ip:port`), a first peer for the new member.
    #[serde(default)]
    pub peers: Vec<String>,
}

/// Peers a grant may name.
pub const MAX_GRANT_PEERS: usize = 4;

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Grant({}, key ..)", self.community)
    }
}

/// An approval the pending node took: the grant and who signed it (a node key, hex).
#[derive(Debug, Clone)]
pub struct Approved {
    pub grant: Grant,
    pub by: String,
}

/// Every line of the handshake, both ways; each step uses its own fields.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    want: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hello: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    eph: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sig: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    joined: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
}

/// The largest grant: a community name (63) and key (the seed allows 1024) in JSON.
const MAX_GRANT: usize = 1200;

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

    async fn send(&mut self, l: &Line) -> Result<(), PendingError> {
        let mut b = serde_json::to_vec(l).expect("lines serialise");
        b.push(b'\n');
        self.w.write_all(&b).await?;
        Ok(())
    }

    async fn recv(&mut self, max: usize) -> Result<Line, PendingError> {
        use super::exchange::{bounded_line, Bounded};
        let buf = match bounded_line(&mut self.r, max).await? {
            Bounded::Line(buf) => buf,
            Bounded::Closed => return Err(PendingError::Closed),
            Bounded::TooLong => return Err(PendingError::TooLong),
        };
        let l: Line =
            serde_json::from_slice(&buf).map_err(|e| PendingError::Malformed(e.to_string()))?;
        if let Some(r) = l.refused {
            return Err(PendingError::Refused(r.chars().take(200).collect()));
        }
        if l.v != VERSION {
            return Err(PendingError::Malformed(format!("version {}", l.v)));
        }
        Ok(l)
    }
}

fn hex32(s: Option<&str>) -> Option<[u8; 32]> {
    identity::unhex(s?)?.try_into().ok()
}

fn nonce_ok(n: Option<&str>) -> bool {
    n.is_some_and(|n| n.len() == 32 && identity::unhex(n).is_some())
}

fn offer_msg(nc: &str, ns: &str, xp: &str) -> Vec<u8> {
    [
        b"cloudy pending offer v1|".as_slice(),
        nc.as_bytes(),
        b"|",
        ns.as_bytes(),
        b"|",
        xp.as_bytes(),
    ]
    .concat()
}

fn transcript(nc: &str, ns: &str, xp: &str, xe: &str) -> Vec<u8> {
    [nc, "|", ns, "|", xp, "|", xe].concat().into_bytes()
}

fn approval_msg(t: &[u8], sealed: &str) -> Vec<u8> {
    [
        b"cloudy approval v1|".as_slice(),
        t,
        b"|",
        sealed.as_bytes(),
    ]
    .concat()
}

fn joined_msg(t: &[u8]) -> Vec<u8> {
    [b"cloudy approved v1|".as_slice(), t].concat()
}

/// The sealing key of one approval: only the holder of XP's secret (the pending node) and of
/// XE's (the approver) derive it. None for a non-contributory (low-order) peer key.
fn sealing_key(
    ours: &x25519_dalek::StaticSecret,
    theirs: &x25519_dalek::PublicKey,
    nc: &str,
    ns: &str,
    t: &[u8],
) -> Option<[u8; 32]> {
    let shared = ours.diffie_hellman(theirs);
    if !shared.was_contributory() {
        return None;
    }
    let salt = [nc.as_bytes(), ns.as_bytes()].concat();
    let hk = hkdf::Hkdf::<Sha256>::new(Some(&salt), shared.as_bytes());
    let mut k = [0u8; 32];
    hk.expand(&[b"cloudy approval v1|".as_slice(), t].concat(), &mut k)
        .expect("32 bytes are a valid HKDF length");
    Some(k)
}

fn seal(key: &[u8; 32], msg: &[u8]) -> Vec<u8> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    chacha20poly1305::ChaCha20Poly1305::new(key.into())
        .encrypt(
            &Default::default(),
            Payload {
                msg,
                aad: &[ROLE_APPROVAL],
            },
        )
        .expect("sealing a bounded message")
}

fn open(key: &[u8; 32], sealed: &[u8]) -> Option<Vec<u8>> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    chacha20poly1305::ChaCha20Poly1305::new(key.into())
        .decrypt(
            &Default::default(),
            Payload {
                msg: sealed,
                aad: &[ROLE_APPROVAL],
            },
        )
        .ok()
}

/// Pending side of one connection: our offer, then an approval that must open under our key,
/// be signed by the node key it names, and grant `community` (ours, by name) a usable key. A
/// refusal is told to the approver in clear (it says nothing of any key). `claim` takes a
/// valid grant before it is confirmed (it stores the key): an error (another approval came
/// first, the key could not be stored) refuses this one, so a pending node confirms exactly
/// one approval, and only once it holds the key.
pub async fn serve<S: AsyncRead + AsyncWrite>(
    stream: S,
    node: &NodeKey,
    community: &str,
    claim: &(dyn Fn(&Grant) -> Result<(), String> + Sync),
) -> Result<Approved, PendingError> {
    let mut c = Conn::new(stream);
    tokio::time::timeout(TIMEOUT, async {
        let hello = c.recv(MAX_LINE).await?;
        let nc = hello.hello.clone().unwrap_or_default();
        if hello.want.as_deref() != Some(WANT_APPROVE) || !nonce_ok(Some(&nc)) {
            return Err(PendingError::Malformed("not an approve hello".into()));
        }
        let ns = hex(&random_bytes::<16>());
        let x = x25519_dalek::StaticSecret::from(random_bytes::<32>());
        let xp = hex(x25519_dalek::PublicKey::from(&x).as_bytes());
        c.send(&Line {
            v: VERSION,
            nonce: Some(ns.clone()),
            node: Some(node.public_hex()),
            x: Some(xp.clone()),
            sig: Some(node.sign_hex(&offer_msg(&nc, &ns, &xp))),
            ..Default::default()
        })
        .await?;
        let a = c.recv(MAX_LINE + 2 * MAX_GRANT).await?;
        let got = open_approval(&a, &x, &nc, &ns, &xp, community)
            .and_then(|(g, xe)| claim(&g).map(|()| (g, xe)));
        match got {
            Ok((grant, xe)) => {
                let by = a.by.clone().unwrap_or_default();
                let t = transcript(&nc, &ns, &xp, &xe);
                // Taken (the key is ours now) whether or not the approver still listens.
                let _ = c
                    .send(&Line {
                        v: VERSION,
                        joined: Some(node.sign_hex(&joined_msg(&t))),
                        ..Default::default()
                    })
                    .await;
                let _ = c.w.shutdown().await;
                Ok(Approved { grant, by })
            }
            Err(reason) => {
                c.send(&Line {
                    v: VERSION,
                    refused: Some(reason.clone()),
                    ..Default::default()
                })
                .await?;
                Err(PendingError::Refused(reason))
            }
        }
    })
    .await
    .map_err(|_| PendingError::Timeout)?
}

/// The approval opened and checked, with the approver's ephemeral key; or the reason to tell.
fn open_approval(
    a: &Line,
    x: &x25519_dalek::StaticSecret,
    nc: &str,
    ns: &str,
    xp: &str,
    community: &str,
) -> Result<(Grant, String), String> {
    let (Some(xe), Some(sealed), Some(by), Some(sig)) = (&a.eph, &a.sealed, &a.by, &a.sig) else {
        return Err("malformed approval".into());
    };
    let Some(theirs) = hex32(Some(xe)).map(x25519_dalek::PublicKey::from) else {
        return Err("malformed approval".into());
    };
    let t = transcript(nc, ns, xp, xe);
    if !identity::signature_ok(by, &approval_msg(&t, sealed), sig) {
        return Err("the approval is not signed by the node key it names".into());
    }
    let key = sealing_key(x, &theirs, nc, ns, &t).ok_or("malformed approval")?;
    let plain = identity::unhex(sealed)
        .filter(|s| s.len() <= MAX_GRANT + 16)
        .and_then(|s| open(&key, &s))
        .ok_or("the approval does not open under this node's key")?;
    let grant: Grant =
        serde_json::from_slice(&plain).map_err(|e| format!("malformed grant: {e}"))?;
    if grant.community != community {
        return Err(format!(
            "this node waits to join community {community:?}, not {:?}",
            grant.community
        ));
    }
    if grant.key.chars().count() < cloudy_model::seed::MIN_COMMUNITY_KEY
        || grant.key.len() > 1024
        || grant.key.chars().any(char::is_control)
    {
        return Err("the community key granted is not a usable key".into());
    }
    if grant.peers.len() > MAX_GRANT_PEERS
        || grant.peers.iter().any(|p| p.parse::<SocketAddr>().is_err())
    {
        return Err("the peers granted are not addresses".into());
    }
    Ok((grant, xe.clone()))
}

/// Member side: approves the pending node at `addr` if its node key has fingerprint `fp`,
/// granting it `grant`, signed by our node key. Ok once the node confirmed, under the key
/// of that fingerprint, that it took the approval.
pub async fn approve(
    addr: SocketAddr,
    fp: &str,
    grant: &Grant,
    node: &NodeKey,
) -> Result<(), PendingError> {
    tokio::time::timeout(TIMEOUT, async {
        let s = tokio::net::TcpStream::connect(addr).await?;
        approve_over(s, fp, grant, node).await
    })
    .await
    .map_err(|_| PendingError::Timeout)?
}

/// `approve` over any stream.
pub async fn approve_over<S: AsyncRead + AsyncWrite>(
    stream: S,
    fp: &str,
    grant: &Grant,
    node: &NodeKey,
) -> Result<(), PendingError> {
    let mut c = Conn::new(stream);
    let nc = hex(&random_bytes::<16>());
    c.send(&Line {
        v: VERSION,
        want: Some(WANT_APPROVE.into()),
        hello: Some(nc.clone()),
        ..Default::default()
    })
    .await?;
    let offer = c.recv(MAX_LINE).await?;
    let (Some(ns), Some(nk), Some(xp), Some(sig)) = (offer.nonce, offer.node, offer.x, offer.sig)
    else {
        return Err(PendingError::Malformed("not an offer".into()));
    };
    if !nonce_ok(Some(&ns)) {
        return Err(PendingError::Malformed("bad nonce".into()));
    }
    let got = fingerprint(&nk).ok_or_else(|| PendingError::Malformed("bad node key".into()))?;
    if got != fp {
        return Err(PendingError::WrongNode {
            want: fp.into(),
            got,
        });
    }
    if !identity::signature_ok(&nk, &offer_msg(&nc, &ns, &xp), &sig) {
        return Err(PendingError::BadSignature("the pending node"));
    }
    let theirs = hex32(Some(&xp))
        .map(x25519_dalek::PublicKey::from)
        .ok_or_else(|| PendingError::Malformed("bad X25519 key".into()))?;
    let e = x25519_dalek::StaticSecret::from(random_bytes::<32>());
    let xe = hex(x25519_dalek::PublicKey::from(&e).as_bytes());
    let t = transcript(&nc, &ns, &xp, &xe);
    let key = sealing_key(&e, &theirs, &nc, &ns, &t)
        .ok_or_else(|| PendingError::Malformed("bad X25519 key".into()))?;
    let sealed = hex(&seal(
        &key,
        &serde_json::to_vec(grant).expect("grants serialise"),
    ));
    c.send(&Line {
        v: VERSION,
        eph: Some(xe),
        sig: Some(node.sign_hex(&approval_msg(&t, &sealed))),
        sealed: Some(sealed),
        by: Some(node.public_hex()),
        ..Default::default()
    })
    .await?;
    let done = c.recv(MAX_LINE).await?;
    match done.joined {
        Some(s) if identity::signature_ok(&nk, &joined_msg(&t), &s) => Ok(()),
        _ => Err(PendingError::BadSignature(
            "the pending node's confirmation",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(c: &str) -> Grant {
        Grant {
            community: c.into(),
            key: "a community key of enough length".into(),
            peers: vec!["10.0.0.1:6655".into()],
        }
    }

    #[test]
    fn fingerprints_are_short_stable_and_parsed_strictly() {
        let k = NodeKey::from_seed([7; 32]);
        let fp = fingerprint(&k.public_hex()).unwrap();
        assert_eq!(fp.len(), 19);
        assert_eq!(fp.split('-').count(), 4);
        assert_eq!(fingerprint(&k.public_hex()).unwrap(), fp);
        assert_ne!(
            fingerprint(&NodeKey::from_seed([8; 32]).public_hex()).unwrap(),
            fp
        );
        assert_eq!(parse_fingerprint(&fp), Ok(fp.clone()));
        assert_eq!(parse_fingerprint(&fp.to_lowercase()), Ok(fp.clone()));
        assert_eq!(parse_fingerprint(&fp.replace('-', "")), Ok(fp.clone()));
        assert_eq!(parse_fingerprint(&fp.replace('-', " ")), Ok(fp.clone()));
        for bad in [
            "",
            "ABCD-EFGH-IJKL",
            "ABCD-EFGH-IJKL-MNOP-Q",
            "ABCD-EFGH-IJKL-MNO1",
            "ABCD-EFGH-IJKL-MNO8",
            "ABCD-EFGH-IJKL-MNOÄ",
            &"A".repeat(1000),
        ] {
            assert!(parse_fingerprint(bad).is_err(), "{bad:?}");
        }
        assert!(fingerprint("00").is_none());
        assert!(fingerprint("zz").is_none());
    }

    fn ann() -> Announcement {
        Announcement {
            community: "test".into(),
            node_id: "0123456789abcdef0123456789abcdef".into(),
            ip: "10.0.0.3".parse().unwrap(),
            port: 6655,
            node_key: NodeKey::from_seed([3; 32]).public_hex(),
        }
    }

    fn parse(txt: &[(String, String)], port: u16) -> Result<Announcement, AnnouncementError> {
        let pairs: Vec<(&str, Option<&[u8]>)> = txt
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_bytes())))
            .collect();
        Announcement::from_txt(&pairs, port)
    }

    #[test]
    fn announcements_round_trip_and_are_parsed_strictly() {
        let a = ann();
        assert_eq!(parse(&a.to_txt(), 6655), Ok(a.clone()));
        let with = |k: &str, v: &str| {
            let mut t = a.to_txt();
            t.retain(|(key, _)| key != k);
            t.push((k.into(), v.into()));
            t
        };
        for (k, v) in [
            ("v", "2"),
            ("mc", "not a name!"),
            ("id", "xyz"),
            ("ip", "127.0.0.1"),
            ("ip", "224.0.0.251"),
            ("ip", "nope"),
            ("nk", "00"),
            ("nk", &"A".repeat(64)),
            ("nk", &"0".repeat(200)),
        ] {
            assert!(parse(&with(k, v), 6655).is_err(), "{k}={v}");
        }
        let mut extra = a.to_txt();
        extra.push(("key".into(), "secret".into()));
        assert!(parse(&extra, 6655).is_err());
        let mut twice = a.to_txt();
        twice.push(("id".into(), a.node_id.clone()));
        assert!(parse(&twice, 6655).is_err());
        let mut missing = a.to_txt();
        missing.pop();
        assert!(parse(&missing, 6655).is_err());
        assert!(parse(&a.to_txt(), 0).is_err());
        let pairs = [("v", None)];
        assert!(Announcement::from_txt(&pairs, 1).is_err());
    }

    async fn run(
        pending: NodeKey,
        community: &str,
        fp: &str,
        g: Grant,
    ) -> (Result<Approved, PendingError>, Result<(), PendingError>) {
        let (a, b) = tokio::io::duplex(8192);
        let approver = NodeKey::from_seed([9; 32]);
        let fp = fp.to_string();
        let client = tokio::spawn(async move { approve_over(b, &fp, &g, &approver).await });
        let served = serve(a, &pending, community, &|_| Ok(())).await;
        (served, client.await.unwrap())
    }

    #[tokio::test]
    async fn an_approval_to_the_right_fingerprint_grants_the_key() {
        let k = NodeKey::from_seed([1; 32]);
        let fp = fingerprint(&k.public_hex()).unwrap();
        let (served, client) = run(k, "test", &fp, grant("test")).await;
        client.unwrap();
        let got = served.unwrap();
        assert_eq!(got.grant.key, "a community key of enough length");
        assert_eq!(got.by, NodeKey::from_seed([9; 32]).public_hex());
    }

    #[tokio::test]
    async fn an_approval_for_another_fingerprint_is_not_sent() {
        let k = NodeKey::from_seed([1; 32]);
        let other = fingerprint(&NodeKey::from_seed([2; 32]).public_hex()).unwrap();
        let (served, client) = run(k, "test", &other, grant("test")).await;
        assert!(
            matches!(client, Err(PendingError::WrongNode { .. })),
            "{client:?}"
        );
        // The approver stopped before sending anything sealed.
        assert!(served.is_err());
    }

    #[tokio::test]
    async fn a_grant_for_another_community_is_refused_with_a_reason() {
        let k = NodeKey::from_seed([1; 32]);
        let fp = fingerprint(&k.public_hex()).unwrap();
        let (served, client) = run(k, "test", &fp, grant("other")).await;
        assert!(served.is_err());
        let e = client.unwrap_err().to_string();
        assert!(e.contains("waits to join community \"test\""), "{e}");
    }

    #[tokio::test]
    async fn a_second_approval_is_refused() {
        let k = NodeKey::from_seed([1; 32]);
        let fp = fingerprint(&k.public_hex()).unwrap();
        let (a, b) = tokio::io::duplex(8192);
        let approver = NodeKey::from_seed([9; 32]);
        let f = fp.clone();
        let client =
            tokio::spawn(async move { approve_over(b, &f, &grant("test"), &approver).await });
        let taken = |_: &Grant| Err("this node was approved already".to_string());
        assert!(serve(a, &k, "test", &taken).await.is_err());
        let e = client.await.unwrap().unwrap_err().to_string();
        assert!(e.contains("approved already"), "{e}");
    }

    #[tokio::test]
    async fn garbage_and_oversized_lines_are_refused() {
        let k = NodeKey::from_seed([1; 32]);
        for input in [
            b"{\"v\":1,\"want\":\"approve\"}\n".to_vec(),
            b"{\"v\":1,\"want\":\"redeem\",\"hello\":\"00112233445566778899aabbccddeeff\"}\n"
                .to_vec(),
            b"{\"v\":1,\"hello\":\"00\",\"extra\":1}\n".to_vec(),
            vec![b'x'; 5000],
        ] {
            let (mut a, b) = tokio::io::duplex(16384);
            a.write_all(&input).await.unwrap();
            drop(a);
            assert!(serve(b, &k, "test", &|_| Ok(())).await.is_err());
        }
    }
}
