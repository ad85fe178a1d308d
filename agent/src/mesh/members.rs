//! The community's member list as this node knows it. Every member passes its list on, so one
//! reachable member is enough to learn them all. Records arrive from the network: each is
//! validated field by field, and a member's tinc key, once known, is never replaced.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use cloudy_model::names::check_hostname;
use cloudy_model::names::is_node_id;

/// Far above any microcloud; bounds memory and the size of what a peer can make us store.
pub const MAX_MEMBERS: usize = 1024;
/// A 4096-bit RSA public key in PEM is ~780 bytes.
const MAX_PUBKEY: usize = 2048;
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
    /// Bumped by the member itself whenever its record changes; the highest wins.
    pub rev: u64,
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
    #[error("member list full ({MAX_MEMBERS})")]
    Full,
    #[error("VPN subnet {subnet} is full: all {hosts} of its addresses are taken by other members, so this node keeps {kept}, which a member with a lower id also claims; make [tinc] subnet larger in every member's seed")]
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
        Ok(())
    }
}

pub fn tinc_name(name: &str, id: &str) -> String {
    format!("{}_{}", name.replace('-', "_"), &id[..8.min(id.len())])
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
}

impl Members {
    pub fn new(me: Member) -> Self {
        let id = me.id.clone();
        Members {
            me: id.clone(),
            members: BTreeMap::from([(id, me)]),
        }
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
        m.rev = cur.rev + 1;
        self.members.insert(m.id.clone(), m);
        true
    }

    /// Takes in what a peer sent. Our own record is ours alone; others' replace what we have
    /// only with a higher revision and the same key.
    pub fn merge(&mut self, incoming: Vec<Member>) -> Merge {
        let mut out = Merge::default();
        for m in incoming {
            if m.id == self.me {
                continue;
            }
            if let Err(e) = m.validate() {
                out.refused.push(format!("{}: {e}", m.id));
                continue;
            }
            match self.members.get(&m.id) {
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
                    self.members.insert(m.id.clone(), m);
                    out.changed = true;
                }
            }
        }
        out
    }

    /// Two members claiming one VPN address: the lower id keeps it, the other (if it is us)
    /// moves to its next candidate that nobody known uses. Each node only ever moves itself,
    /// so the rule converges without a coordinator. True when we moved; false also when the
    /// subnet has no free address left (`settle_vpn` says so).
    pub fn resolve_vpn_collision(&mut self, subnet: (Ipv4Addr, u8)) -> bool {
        self.settle_vpn(subnet).unwrap_or(false)
    }

    /// `resolve_vpn_collision`, with a subnet that has no free address left an error (we keep
    /// the address we have). The search is bounded by the subnet's size and the member count.
    pub fn settle_vpn(&mut self, subnet: (Ipv4Addr, u8)) -> Result<bool, MemberError> {
        let mine = self.me().vpn;
        let lose = self.others().any(|m| m.vpn == mine && m.id < self.me);
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

    pub fn member(id_byte: char, name: &str) -> Member {
        let id: String = std::iter::repeat_n(id_byte, 32).collect();
        Member {
            vpn: vpn_candidate(&id, (Ipv4Addr::new(10, 99, 0, 0), 16), 0),
            id,
            name: name.into(),
            address: "192.0.2.1".parse().unwrap(),
            tinc_port: 655,
            exchange_port: 6655,
            pubkey: PEM.into(),
            rev: 1,
        }
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
        let m = ms.merge(vec![evil]);
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
            let m = ms.merge(vec![c]);
            assert!(
                !m.changed && m.refused[0].contains(field),
                "{field}: {:?}",
                m.refused
            );
        }
        let mut me = member('a', "one");
        me.rev = 100;
        me.name = "hijack".into();
        ms.merge(vec![me]);
        assert_eq!(ms.me().name, "one", "nobody rewrites our own record");
        let mut b2 = b;
        b2.rev = 2;
        b2.address = "192.0.2.9".parse().unwrap();
        assert!(ms.merge(vec![b2]).changed);
        assert_eq!(
            ms.members[&member('b', "x").id].address.to_string(),
            "192.0.2.9"
        );
    }

    #[test]
    fn vpn_collision_moves_the_higher_id_only() {
        let subnet = (Ipv4Addr::new(10, 99, 0, 0), 16);
        let mut low = member('1', "low");
        let mut high = member('9', "high");
        high.vpn = low.vpn;
        let mut at_high = Members::new(high.clone());
        at_high.merge(vec![low.clone()]);
        assert!(at_high.resolve_vpn_collision(subnet));
        assert_ne!(at_high.me().vpn, low.vpn);
        assert_eq!(at_high.me().rev, 2);
        low.rev = 1;
        let mut at_low = Members::new(low.clone());
        at_low.merge(vec![high]);
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
        at_c.merge(vec![a, b]);
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
        at_c.merge(vec![a.clone(), b.clone()]);
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
        at_c.merge(vec![a.clone()]);
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
