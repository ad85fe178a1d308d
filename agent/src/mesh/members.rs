//! The community's member list as this node knows it. Every member passes its list on, so one
//! reachable member is enough to learn them all. Records arrive from the network: each is
//! validated field by field and must be signed by its member's own node key (ed25519). A
//! member's signing key and tinc key, once known, are never replaced: the first record seen for
//! an id pins them, so the community key admits a node but does not let it speak for another.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use cloudy_model::names::check_hostname;
use cloudy_model::names::is_node_id;

use crate::os::identity::{is_node_key, signature_ok, NodeKey};

/// Far above any microcloud; bounds memory and the size of what a peer can make us store.
pub const MAX_MEMBERS: usize = 1024;
/// A 4096-bit RSA public key in PEM is ~780 bytes.
const MAX_PUBKEY: usize = 2048;
/// The highest revision a record may carry. A member bumps its revision once per change of
/// its record (an address or port change, a VPN move): 2^40 changes are out of reach of any
/// node, so a higher one is a record made to stay on top for good (with `u64::MAX` no later
/// record could ever replace it). A counter, not a timestamp: a node without a real-time
/// clock boots in the past.
pub const MAX_REV: u64 = 1 << 40;
/// Two members that came up unaware of each other with the same VPN address: within this
/// many seconds of taking our address, a claimant we had not heard of is a contemporary, and
/// the lower id keeps it; after it, the address is established and we keep it.
pub const VPN_GRACE_SECS: u64 = 300;
pub const MEMBERS_FILE: &str = "/var/lib/cloudy/members.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: String,
    pub name: String,
    /// Where its tincd and exchange service are reached (its primary interface's address).
    pub address: IpAddr,
    pub tinc_port: u16,
    /// Named as the first nodes stored it, so a stored list (and an older member) still reads.
    #[serde(rename = "join_port")]
    pub exchange_port: u16,
    pub vpn: Ipv4Addr,
    /// Tinc 1.0 RSA public key, PEM.
    pub pubkey: String,
    /// Bumped by the member itself whenever its record changes; the highest wins (at most
    /// `MAX_REV`).
    pub rev: u64,
    /// The member's node key (ed25519, hex): pinned on first sight like `pubkey`. Empty only
    /// in a list stored by an older agent (such records are dropped on load).
    #[serde(default)]
    pub signkey: String,
    /// `signkey`'s signature over `canonical()`.
    #[serde(default)]
    pub sig: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MemberError {
    #[error("member record field `{field}` refused: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
    #[error("member {id} offered a different tinc key than the one already known; keys are never replaced")]
    KeyChanged { id: String },
    #[error("member {id} offered a different node signing key than the one already known; keys are never replaced")]
    SignKeyChanged { id: String },
    #[error("member {id}'s record is not signed by the node key it carries")]
    BadSignature { id: String },
    #[error("member list full ({MAX_MEMBERS})")]
    Full,
    #[error("VPN subnet {subnet} is full: all {hosts} of its addresses are taken by other members, so this node keeps {kept}, which a member that had it first also claims; make [tinc] subnet larger in every member's seed")]
    SubnetFull {
        subnet: String,
        hosts: u64,
        kept: Ipv4Addr,
    },
}

impl Member {
    /// Tinc names allow only `[A-Za-z0-9_]`; the id suffix keeps two nodes named alike apart.
    pub fn tinc_name(&self) -> String {
        tinc_name(&self.name, &self.id)
    }

    /// What `sig` covers: every field but `sig`, in a fixed order and encoding (JSON of a
    /// struct is written in field order), after a label no other signed message starts with.
    pub fn canonical(&self) -> Vec<u8> {
        let unsigned = Member {
            sig: String::new(),
            ..self.clone()
        };
        let mut out = b"cloudy member v3|".to_vec();
        out.extend(serde_json::to_vec(&unsigned).expect("members serialise"));
        out
    }

    /// Signs the record as `key`'s holder (sets `signkey` and `sig`).
    pub fn sign(&mut self, key: &NodeKey) {
        self.signkey = key.public_hex();
        self.sig = key.sign_hex(&self.canonical());
    }

    pub fn signature_ok(&self) -> bool {
        signature_ok(&self.signkey, &self.canonical(), &self.sig)
    }

    pub fn validate(&self) -> Result<(), MemberError> {
        let bad = |field, problem: String| MemberError::Field { field, problem };
        if !is_node_id(&self.id) {
            return Err(bad("id", "not 32 lowercase hex digits".into()));
        }
        check_hostname(&self.name).map_err(|p| bad("name", p))?;
        if self.tinc_port == 0 || self.exchange_port == 0 {
            return Err(bad("port", "0".into()));
        }
        let a = self.address;
        if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
            return Err(bad(
                "address",
                format!("{a} is not reachable from another node"),
            ));
        }
        check_pubkey(&self.pubkey).map_err(|p| bad("pubkey", p))?;
        if self.rev > MAX_REV {
            return Err(bad("rev", format!("{} (at most {MAX_REV})", self.rev)));
        }
        if !is_node_key(&self.signkey) {
            return Err(bad("signkey", "not an ed25519 public key in hex".into()));
        }
        if !self.signature_ok() {
            return Err(MemberError::BadSignature {
                id: self.id.clone(),
            });
        }
        Ok(())
    }
}

/// `<name>_<id>` with the whole id: ids are unique in the list, so no member's name can
/// land on another's host file (with 8 hex digits of the id, a chosen id could). The name is
/// cut to 30 characters so the whole stays within 63 (an mDNS instance label).
pub fn tinc_name(name: &str, id: &str) -> String {
    let name: String = name.chars().take(30).collect();
    format!("{}_{}", name.replace('-', "_"), id)
}

/// Only the PEM armour and base64 lines: this text goes into a tinc host file, which must not
/// gain a directive (`Address`, `Subnet`, ...) from a peer.
fn check_pubkey(k: &str) -> Result<(), String> {
    if k.len() > MAX_PUBKEY {
        return Err(format!("{} bytes (at most {MAX_PUBKEY})", k.len()));
    }
    let lines: Vec<&str> = k.trim_end().lines().collect();
    let (first, last) = (lines.first().copied(), lines.last().copied());
    if lines.len() < 3
        || first != Some("-----BEGIN RSA PUBLIC KEY-----")
        || last != Some("-----END RSA PUBLIC KEY-----")
    {
        return Err("not a PEM RSA public key".into());
    }
    let body_ok = lines[1..lines.len() - 1].iter().all(|l| {
        !l.is_empty()
            && l.len() <= 76
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
    });
    if !body_ok {
        return Err("PEM body is not base64".into());
    }
    Ok(())
}

/// One candidate VPN address per attempt, spread over the subnet by the node id, skipping the
/// network and broadcast addresses.
pub fn vpn_candidate(id: &str, subnet: (Ipv4Addr, u8), attempt: u32) -> Ipv4Addr {
    host_address(subnet, candidate_index(id, subnet.1, attempt))
}

fn candidate_index(id: &str, prefix: u8, attempt: u32) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("{id}/{attempt}").as_bytes());
    let h = u64::from(u32::from_be_bytes([d[0], d[1], d[2], d[3]]));
    h % subnet_hosts(prefix)
}

/// Usable host addresses in a subnet of `prefix` bits: all but the network and broadcast
/// addresses (the seed allows /8 to /30; anything narrower still counts one).
pub fn subnet_hosts(prefix: u8) -> u64 {
    let size: u64 = 1u64 << (32 - u32::from(prefix.min(32)));
    size.saturating_sub(2).max(1)
}

/// The `index`th usable host address (0-based) of `subnet`.
fn host_address((net, prefix): (Ipv4Addr, u8), index: u64) -> Ipv4Addr {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    let host = if prefix >= 31 { index } else { 1 + index };
    Ipv4Addr::from((u32::from(net) & mask) | host as u32)
}

/// Hashed candidates tried before walking the subnet in order.
const HASHED_ATTEMPTS: u32 = 16;

/// A VPN address for `id` that is not in `taken`: the first free hashed candidate, else the
/// next free address after the first candidate, in order. At most `HASHED_ATTEMPTS` hashes and
/// at most `min(hosts, taken.len() + 1)` steps of one pass over the subnet (members are at most
/// `MAX_MEMBERS`), so it is quick even under a lock; None when every address is taken.
pub fn free_vpn_address(
    id: &str,
    subnet: (Ipv4Addr, u8),
    taken: &std::collections::HashSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let hosts = subnet_hosts(subnet.1);
    if let Some(a) = (0..HASHED_ATTEMPTS)
        .map(|a| vpn_candidate(id, subnet, a))
        .find(|a| !taken.contains(a))
    {
        return Some(a);
    }
    let start = candidate_index(id, subnet.1, 0);
    (0..hosts)
        .map(|i| host_address(subnet, (start + i) % hosts))
        .find(|a| !taken.contains(a))
}

#[derive(Debug, Clone, Default)]
pub struct Merge {
    pub changed: bool,
    pub refused: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Members {
    pub me: String,
    pub members: BTreeMap<String, Member>,
    /// When (Unix seconds, our clock) we first heard of each other member: ours alone, never
    /// sent, so nobody can claim to be older here than they are (see `settle_vpn`).
    #[serde(default)]
    pub first_seen: BTreeMap<String, u64>,
    /// When we took our VPN address (0: before this was kept, i.e. long established).
    #[serde(default)]
    pub vpn_since: u64,
    /// Node ids removed from the community by a rekey (`mesh::rekey`): their records are
    /// refused, and they are neither sent nor given the new key.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub removed: std::collections::BTreeSet<String>,
    /// Signs our own record whenever it changes; not stored here (it has its own 0600 file).
    #[serde(skip)]
    pub signer: Option<NodeKey>,
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Members {
    pub fn new(me: Member) -> Self {
        let id = me.id.clone();
        Members {
            me: id.clone(),
            members: BTreeMap::from([(id, me)]),
            first_seen: BTreeMap::new(),
            vpn_since: now_secs(),
            removed: Default::default(),
            signer: None,
        }
    }

    /// Removes `ids` (never us) from the list for good: their records are refused from now on.
    /// True if anything changed.
    pub fn remove(&mut self, ids: &[String]) -> bool {
        let mut changed = false;
        for id in ids.iter().filter(|id| **id != self.me) {
            changed |= self.members.remove(id).is_some();
            self.first_seen.remove(id);
            changed |= self.removed.insert(id.clone());
        }
        changed
    }

    /// A list whose own record is (re)signed with `key`, and kept signed on every change.
    pub fn signed(me: Member, key: NodeKey) -> Self {
        let mut ms = Members::new(me);
        ms.set_signer(key);
        ms
    }

    pub fn set_signer(&mut self, key: NodeKey) {
        let mut me = self.me().clone();
        me.sign(&key);
        self.members.insert(me.id.clone(), me);
        self.signer = Some(key);
    }

    /// `msg` signed by our node key, hex; None before the key is set (a list only a test
    /// makes).
    pub fn sign_mine(&self, msg: &[u8]) -> Option<String> {
        self.signer.as_ref().map(|k| k.sign_hex(msg))
    }

    /// Whether `sig` over `msg` is by the node key pinned for member `id`.
    pub fn signed_by(&self, id: &str, msg: &[u8], sig: &str) -> bool {
        self.members
            .get(id)
            .is_some_and(|m| crate::os::identity::signature_ok(&m.signkey, msg, sig))
    }

    pub fn me(&self) -> &Member {
        &self.members[&self.me]
    }

    /// Who we are, as our records say it, in `microcloud`.
    pub fn origin(&self, microcloud: &str) -> cloudy_model::record::Origin {
        let me = self.me();
        cloudy_model::record::Origin {
            node: me.name.clone(),
            node_id: me.id.clone(),
            ip: me.address,
            vpn: me.vpn,
            microcloud: microcloud.into(),
        }
    }

    pub fn others(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(move |m| m.id != self.me)
    }

    pub fn list(&self) -> Vec<Member> {
        self.members.values().cloned().collect()
    }

    /// Replaces our own record when something about us changed (address, ports).
    pub fn update_me(&mut self, f: impl FnOnce(&mut Member)) -> bool {
        let mut m = self.me().clone();
        f(&mut m);
        let cur = self.me();
        let same = Member {
            rev: cur.rev,
            ..m.clone()
        } == *cur;
        if same {
            return false;
        }
        m.rev = (cur.rev + 1).min(MAX_REV);
        if m.vpn != cur.vpn {
            self.vpn_since = now_secs();
        }
        if let Some(k) = &self.signer {
            m.sign(k);
        }
        self.members.insert(m.id.clone(), m);
        true
    }

    /// Takes in what a peer sent. Our own record is ours alone; others' must be signed by the
    /// node key they carry, and replace what we have only with a higher revision and the same
    /// keys (tinc and node key, pinned on first sight). Whoever relays a record cannot change
    /// it: the signature is its member's.
    pub fn merge(&mut self, incoming: Vec<Member>) -> Merge {
        let mut out = Merge::default();
        let now = now_secs();
        for m in incoming {
            if m.id == self.me {
                self.overtake(&m);
                continue;
            }
            if self.removed.contains(&m.id) {
                continue;
            }
            // Nothing newer under the same keys (what every round mostly brings): no need to
            // check a signature for a record we would not take.
            if self.members.get(&m.id).is_some_and(|cur| {
                cur.rev >= m.rev && cur.signkey == m.signkey && cur.pubkey == m.pubkey
            }) {
                continue;
            }
            if let Err(e) = m.validate() {
                out.refused.push(format!("{}: {e}", m.id));
                continue;
            }
            match self.members.get(&m.id) {
                Some(cur) if cur.signkey != m.signkey => {
                    out.refused
                        .push(MemberError::SignKeyChanged { id: m.id.clone() }.to_string());
                }
                Some(cur) if cur.pubkey != m.pubkey => {
                    out.refused
                        .push(MemberError::KeyChanged { id: m.id.clone() }.to_string());
                }
                Some(cur) if cur.rev >= m.rev => {}
                Some(_) => {
                    self.members.insert(m.id.clone(), m);
                    out.changed = true;
                }
                None if self.members.len() >= MAX_MEMBERS => {
                    out.refused.push(MemberError::Full.to_string())
                }
                None => {
                    self.first_seen.entry(m.id.clone()).or_insert(now);
                    self.members.insert(m.id.clone(), m);
                    out.changed = true;
                }
            }
        }
        out
    }

    /// A record of ours, signed by our key, with a revision at or above ours: we lost our
    /// list (and so our count) and members still hold the old record; go above it so ours
    /// is taken again.
    fn overtake(&mut self, m: &Member) {
        let cur = self.me();
        if m == cur
            || m.rev < cur.rev
            || m.signkey != cur.signkey
            || m.rev >= MAX_REV
            || !m.signature_ok()
        {
            return;
        }
        let mut me = cur.clone();
        me.rev = m.rev + 1;
        if let Some(k) = &self.signer {
            me.sign(k);
        }
        self.members.insert(me.id.clone(), me);
    }

    /// Two members claiming one VPN address: the one that held it first, as we knew it, keeps
    /// it; the other (if it is us) moves to its next candidate that nobody known uses. Each
    /// node only ever moves itself. True when we moved; false also when the subnet has no
    /// free address left (`settle_vpn` says so).
    pub fn resolve_vpn_collision(&mut self, subnet: (Ipv4Addr, u8)) -> bool {
        self.settle_vpn(subnet).unwrap_or(false)
    }

    /// `resolve_vpn_collision`, with a subnet that has no free address left an error (we keep
    /// the address we have). The search is bounded by the subnet's size and the member count.
    ///
    /// Who keeps it, from our side: a member we knew before we took our address had it first
    /// (we should not have taken it), so we move. One we first heard of later came to an
    /// address we held: it moves and we keep ours, whatever its id; the lowest id winning let
    /// an insider choose an id to displace anyone. Only when it turned up within
    /// `VPN_GRACE_SECS` of our taking the address (two nodes that came up apart and met at
    /// once: each sees the other as the newcomer) does the lower id keep it, so both agree;
    /// an insider can take that way only an address taken moments before it appeared. When
    /// we first heard of a member is our own clock's note, never something a peer sends.
    pub fn settle_vpn(&mut self, subnet: (Ipv4Addr, u8)) -> Result<bool, MemberError> {
        let mine = self.me().vpn;
        let since = self.vpn_since;
        let lose = self.others().any(|m| {
            let seen = self.first_seen.get(&m.id).copied().unwrap_or(0);
            m.vpn == mine && (seen < since || (seen - since < VPN_GRACE_SECS && m.id < self.me))
        });
        if !lose {
            return Ok(false);
        }
        let taken: std::collections::HashSet<Ipv4Addr> = self.others().map(|m| m.vpn).collect();
        match free_vpn_address(&self.me, subnet, &taken) {
            Some(next) => Ok(self.update_me(|m| m.vpn = next)),
            None => Err(MemberError::SubnetFull {
                subnet: format!("{}/{}", subnet.0, subnet.1),
                hosts: subnet_hosts(subnet.1),
                kept: mine,
            }),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const PEM: &str = "-----BEGIN RSA PUBLIC KEY-----\nMIIBCgKCAQEAx2v0dQ+abc/def=\n-----END RSA PUBLIC KEY-----\n";

    /// The node key of the test member whose id is `id_byte` repeated.
    pub fn key_of(id_byte: char) -> NodeKey {
        NodeKey::from_seed([id_byte as u8; 32])
    }

    /// A member record signed by its own (test) key.
    pub fn member(id_byte: char, name: &str) -> Member {
        let id: String = std::iter::repeat_n(id_byte, 32).collect();
        signed(Member {
            vpn: vpn_candidate(&id, (Ipv4Addr::new(10, 99, 0, 0), 16), 0),
            id,
            name: name.into(),
            address: "192.0.2.1".parse().unwrap(),
            tinc_port: 655,
            exchange_port: 6655,
            pubkey: PEM.into(),
            rev: 1,
            signkey: String::new(),
            sig: String::new(),
        })
    }

    /// `m` signed again by its owner's test key (after a change).
    pub fn signed(m: Member) -> Member {
        let byte = m.id.chars().next().unwrap_or('0');
        signed_as(m, byte)
    }

    /// `m` signed by the test key of `byte`.
    pub fn signed_as(mut m: Member, byte: char) -> Member {
        m.sign(&key_of(byte));
        m
    }

    #[test]
    fn candidates_stay_inside_the_subnet() {
        for a in 0..200 {
            let ip = vpn_candidate("0123", (Ipv4Addr::new(10, 99, 7, 7), 24), a);
            let o = ip.octets();
            assert_eq!(&o[..3], &[10, 99, 7]);
            assert!(o[3] != 0 && o[3] != 255, "{ip}");
        }
        assert_ne!(
            vpn_candidate("a", (Ipv4Addr::new(10, 0, 0, 0), 8), 0),
            vpn_candidate("b", (Ipv4Addr::new(10, 0, 0, 0), 8), 0)
        );
    }

    #[test]
    fn merge_refuses_bad_records_and_key_changes() {
        let mut ms = Members::new(member('a', "one"));
        let b = member('b', "two");
        assert!(ms.merge(vec![b.clone()]).changed);
        assert!(
            !ms.merge(vec![b.clone()]).changed,
            "same revision changes nothing"
        );
        let mut evil = b.clone();
        evil.pubkey = PEM.replace("abc", "xyz");
        evil.rev = 9;
        let m = ms.merge(vec![signed(evil)]);
        assert!(!m.changed && m.refused[0].contains("never replaced"));
        for (field, f) in [
            (
                "pubkey",
                Box::new(|m: &mut Member| m.pubkey = format!("{PEM}Address = 6.6.6.6\n"))
                    as Box<dyn Fn(&mut Member)>,
            ),
            (
                "name",
                Box::new(|m: &mut Member| m.name = "Bad Name".into()),
            ),
            ("id", Box::new(|m: &mut Member| m.id = "../../etc".into())),
            (
                "address",
                Box::new(|m: &mut Member| m.address = "127.0.0.1".parse().unwrap()),
            ),
        ] {
            let mut c = member('c', "three");
            f(&mut c);
            let m = ms.merge(vec![signed(c)]);
            assert!(
                !m.changed && m.refused[0].contains(field),
                "{field}: {:?}",
                m.refused
            );
        }
        let mut me = member('a', "one");
        me.rev = 100;
        me.name = "hijack".into();
        ms.merge(vec![signed(me)]);
        assert_eq!(ms.me().name, "one", "nobody rewrites our own record");
        let mut b2 = b;
        b2.rev = 2;
        b2.address = "192.0.2.9".parse().unwrap();
        assert!(ms.merge(vec![signed(b2)]).changed);
        assert_eq!(
            ms.members[&member('b', "x").id].address.to_string(),
            "192.0.2.9"
        );
    }

    /// Defect 4: anyone holding the community key could speak for any member. The old code
    /// took a record for member A's id from whoever sent it (only the tinc key was pinned, and
    /// a relayed record carried nothing else of A's): B's rewrite of A's address was taken.
    /// Now A's record must be signed by A's pinned node key.
    #[test]
    fn a_member_cannot_rewrite_another() {
        let mut ms = Members::new(member('c', "observer"));
        let a = member('a', "alice");
        assert!(
            ms.merge(vec![a.clone()]).changed,
            "first sight pins A's node key"
        );
        // B rewrites A's record and signs it with its own key (A's signkey swapped for B's).
        let mut forged = a.clone();
        forged.address = "192.0.2.66".parse().unwrap();
        forged.rev = 5;
        forged.sign(&key_of('b'));
        let m = ms.merge(vec![forged.clone()]);
        assert!(!m.changed, "{m:?}");
        assert!(m.refused[0].contains("signing key"), "{:?}", m.refused);
        // B keeps A's signkey but cannot make A's signature.
        let mut forged2 = forged;
        forged2.signkey = a.signkey.clone();
        let m = ms.merge(vec![forged2]);
        assert!(
            !m.changed && m.refused[0].contains("not signed"),
            "{:?}",
            m.refused
        );
        assert_eq!(ms.members[&a.id].address, a.address);
        // A's own update still goes through.
        let mut a2 = a.clone();
        a2.address = "192.0.2.7".parse().unwrap();
        a2.rev = 2;
        assert!(ms.merge(vec![signed(a2)]).changed);
        assert_eq!(ms.members[&a.id].address.to_string(), "192.0.2.7");
    }

    /// Defect 4: the old code took `rev = u64::MAX` (from anyone, for anyone), after which no
    /// record of that member could ever replace it. Now revisions above `MAX_REV` are refused,
    /// and only the member's own key can sign one at all.
    #[test]
    fn an_absurd_revision_is_refused_and_freezes_nothing() {
        let mut ms = Members::new(member('c', "observer"));
        let a = member('a', "alice");
        ms.merge(vec![a.clone()]);
        let mut frozen = a.clone();
        frozen.rev = u64::MAX;
        frozen.name = "frozen".into();
        let m = ms.merge(vec![signed(frozen.clone())]);
        assert!(
            !m.changed && m.refused[0].contains("rev"),
            "{:?}",
            m.refused
        );
        frozen.sign(&key_of('b'));
        assert!(!ms.merge(vec![frozen]).changed);
        let mut a2 = a;
        a2.rev = 2;
        a2.name = "alice2".into();
        assert!(
            ms.merge(vec![signed(a2.clone())]).changed,
            "A still updates"
        );
        assert_eq!(ms.members[&a2.id].name, "alice2");
    }

    /// Defect 4: a tinc name was the node name plus 8 hex digits of the id, so an id chosen
    /// with a member's 8-digit prefix (and its name) landed on that member's host file. Now
    /// the whole id is in the name.
    #[test]
    fn tinc_names_never_collide() {
        let victim = member('a', "alice");
        let mut twin = member('a', "alice");
        twin.id = format!("{}{}", &victim.id[..8], "b".repeat(24));
        assert_ne!(victim.tinc_name(), twin.tinc_name());
        assert_eq!(victim.tinc_name(), format!("alice_{}", victim.id));
        let long = tinc_name(&"n".repeat(63), &victim.id);
        assert!(long.len() <= 63, "{long}");
        assert!(long.ends_with(&victim.id));
    }

    /// Defect 4: the lowest id won a VPN address clash, so an insider could pick an id below
    /// an established member's, claim its address and make it move (old code: `moved`).
    /// Now the member that held the address before we heard of the claimant keeps it.
    #[test]
    fn a_lower_id_does_not_displace_an_established_address() {
        let subnet = (Ipv4Addr::new(10, 99, 0, 0), 16);
        let mut at_victim = Members::signed(member('9', "victim"), key_of('9'));
        // Took its address an hour ago.
        at_victim.vpn_since = now_secs() - 3600;
        let mut squatter = member('0', "squatter");
        squatter.vpn = at_victim.me().vpn;
        assert!(at_victim.merge(vec![signed(squatter.clone())]).changed);
        assert!(
            !at_victim.resolve_vpn_collision(subnet),
            "the victim kept its address"
        );
        assert_eq!(at_victim.me().vpn, squatter.vpn);
        // On the squatter's side (honest code), the victim was known first: it moves.
        let mut at_squatter = Members::new(squatter.clone());
        at_squatter.merge(vec![member('9', "victim")]);
        at_squatter.vpn_since = now_secs() + 10;
        assert!(at_squatter.resolve_vpn_collision(subnet));
        assert_ne!(at_squatter.me().vpn, squatter.vpn);
    }

    /// A node that lost its list starts again at revision 1, below the record members hold:
    /// when that record (ours, signed by our key) comes back, we go above it.
    #[test]
    fn our_own_older_record_coming_back_is_overtaken() {
        let mut old = member('a', "one");
        old.rev = 40;
        let old = signed(old);
        let mut ms = Members::signed(member('a', "one"), key_of('a'));
        ms.merge(vec![ms.me().clone()]);
        assert_eq!(ms.me().rev, 1, "our own record as it is changes nothing");
        ms.merge(vec![old.clone()]);
        assert_eq!(ms.me().rev, 41);
        assert!(ms.me().signature_ok());
        let mut forged = old;
        forged.rev = 90;
        forged.sign(&key_of('b'));
        ms.merge(vec![forged]);
        assert_eq!(ms.me().rev, 41, "not for a record signed by another key");
    }

    #[test]
    fn vpn_collision_moves_the_higher_id_only() {
        let subnet = (Ipv4Addr::new(10, 99, 0, 0), 16);
        let mut low = member('1', "low");
        let mut high = member('9', "high");
        high.vpn = low.vpn;
        let mut at_high = Members::signed(high.clone(), key_of('9'));
        at_high.merge(vec![low.clone()]);
        assert!(at_high.resolve_vpn_collision(subnet));
        assert_ne!(at_high.me().vpn, low.vpn);
        assert_eq!(at_high.me().rev, 2);
        low.rev = 1;
        let mut at_low = Members::new(low.clone());
        at_low.merge(vec![signed(high)]);
        assert!(!at_low.resolve_vpn_collision(subnet));
        assert_eq!(at_low.me().vpn, low.vpn);
        at_low.merge(vec![at_high.me().clone()]);
        assert_ne!(
            at_low.members[&at_high.me].vpn, low.vpn,
            "the moved address spreads"
        );
    }

    /// Three members in a /30 (two host addresses): the one that loses a collision has
    /// nowhere to go. The search must end at once, leaving our address as it is.
    #[test]
    fn full_subnet_does_not_hang_the_collision_search() {
        let subnet = (Ipv4Addr::new(10, 99, 0, 0), 30);
        let (h1, h2) = (Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(10, 99, 0, 2));
        let mut a = member('1', "a");
        a.vpn = h1;
        let mut b = member('2', "b");
        b.vpn = h2;
        let mut c = member('3', "c");
        c.vpn = h1;
        let mut at_c = Members::new(c);
        at_c.merge(vec![signed(a), signed(b)]);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let moved = at_c.resolve_vpn_collision(subnet);
            let _ = tx.send((moved, at_c));
        });
        let (moved, at_c) = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the VPN address search hung (or panicked) on a full /30");
        assert!(!moved, "there is no free address to move to");
        assert_eq!(at_c.me().vpn, h1, "our address stays as it was");
        assert_eq!(at_c.me().rev, 1);
    }

    #[test]
    fn full_subnet_is_a_clear_error_and_room_is_found_in_order() {
        let subnet = (Ipv4Addr::new(10, 99, 0, 0), 30);
        let mut a = member('1', "a");
        a.vpn = Ipv4Addr::new(10, 99, 0, 1);
        let mut b = member('2', "b");
        b.vpn = Ipv4Addr::new(10, 99, 0, 2);
        let mut c = member('3', "c");
        c.vpn = a.vpn;
        let mut at_c = Members::new(c.clone());
        at_c.merge(vec![signed(a.clone()), signed(b.clone())]);
        let e = at_c.settle_vpn(subnet).unwrap_err();
        assert_eq!(
            e,
            MemberError::SubnetFull {
                subnet: "10.99.0.0/30".into(),
                hosts: 2,
                kept: a.vpn
            }
        );
        assert!(e.to_string().contains("10.99.0.0/30 is full"), "{e}");
        // Two of three in a /30 fit: the lower id keeps its address, the other takes the
        // other one even when no hashed candidate is free.
        let mut at_c = Members::new(c);
        at_c.merge(vec![signed(a.clone())]);
        assert_eq!(at_c.settle_vpn(subnet), Ok(true));
        assert_eq!(at_c.me().vpn, b.vpn);
        // In a /24 with all but one address taken, the search finds the last one.
        let subnet = (Ipv4Addr::new(10, 99, 7, 0), 24);
        let mine = vpn_candidate(&a.id, subnet, 0);
        let free = Ipv4Addr::new(10, 99, 7, 77);
        let taken: std::collections::HashSet<Ipv4Addr> = (1..=254u8)
            .map(|h| Ipv4Addr::new(10, 99, 7, h))
            .filter(|&ip| ip != free)
            .collect();
        assert!(taken.contains(&mine) || mine == free);
        assert_eq!(free_vpn_address(&a.id, subnet, &taken), Some(free));
        let full: std::collections::HashSet<Ipv4Addr> =
            taken.iter().copied().chain([free]).collect();
        assert_eq!(free_vpn_address(&a.id, subnet, &full), None);
    }
}
