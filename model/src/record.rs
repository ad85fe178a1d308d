//! A service record: what a node publishes of one of its services, and what every other node
//! parses from the network. Records come from strangers, so each is parsed strictly and
//! bounded: a fixed set of fields, per-kind typed fields with their own syntax (the kinds
//! table), no control characters anywhere, at most `MAX_RECORD` bytes encoded. Text such as a
//! description is kept as data (HTML included) and never used to build a command; escaping for
//! display is the reader's job.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::kinds;
use crate::names::{check_hostname, is_kind, is_node_id};

/// One record, encoded as JSON, is at most this long; a TXT string is at most 255 bytes.
pub const MAX_RECORD: usize = 1024;
pub const MAX_DESCRIPTION: usize = 160;
pub const MAX_FIELDS: usize = 8;
pub const MAX_FIELD_VALUE: usize = 200;
/// Services one node may publish; more is a broken or hostile node.
pub const MAX_PER_NODE: usize = 64;
/// The whole catalog; far above a microcloud (1024 members x a few services).
pub const MAX_ENTRIES: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    /// The publishing node's name and id.
    pub node: String,
    pub node_id: String,
    /// mDNS host name, `<node>.local`.
    pub host: String,
    pub ip: IpAddr,
    pub port: u16,
    /// The community the node belongs to.
    pub microcloud: String,
    /// Typed per service kind (see `kinds::KINDS`); unknown kinds carry none.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecordError {
    #[error("service record field `{field}` refused: {problem}")]
    Field {
        field: String,
        problem: &'static str,
    },
    #[error("service record of {0} bytes (at most {MAX_RECORD})")]
    TooLong(usize),
    #[error("service record malformed: {0}")]
    Malformed(String),
}

fn bad(field: &str, problem: &'static str) -> RecordError {
    RecordError::Field {
        field: field.into(),
        problem,
    }
}

fn text_ok(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

impl Record {
    pub fn validate(&self) -> Result<(), RecordError> {
        check_service(&self.kind, &self.description, self.port, &self.fields)?;
        check_hostname(&self.node).map_err(|_| bad("node", "not a node name"))?;
        if !is_node_id(&self.node_id) {
            return Err(bad("node_id", "not 32 lowercase hex digits"));
        }
        let host_ok = self
            .host
            .strip_suffix(".local")
            .is_some_and(|h| check_hostname(h).is_ok());
        if !host_ok {
            return Err(bad("host", "not <name>.local"));
        }
        let ip = self.ip;
        if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
            return Err(bad("ip", "not reachable from another node"));
        }
        check_hostname(&self.microcloud).map_err(|_| bad("microcloud", "not a community name"))?;
        let len = self.canonical().len();
        if len > MAX_RECORD {
            return Err(RecordError::TooLong(len));
        }
        Ok(())
    }

    /// The bytes a record's MAC covers: its JSON with fields in a fixed order.
    pub fn canonical(&self) -> String {
        serde_json::to_string(self).expect("records serialise")
    }

    /// Key in the catalog: one entry per service of a node.
    pub fn key(&self) -> Key {
        (self.node_id.clone(), self.kind.clone(), self.port)
    }

    /// Strict JSON parse (what travels over the exchange port): bounded before it is parsed.
    pub fn parse_json(bytes: &[u8]) -> Result<Record, RecordError> {
        if bytes.len() > MAX_RECORD * 2 {
            return Err(RecordError::TooLong(bytes.len()));
        }
        let r: Record =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed(e.to_string()))?;
        r.validate()?;
        Ok(r)
    }
}

/// What a node rings on mDNS for one of its services: no record, only enough to say "node N
/// offers kind K on port P, and its records now hash to REV", signed with a time.
///
/// mDNS is readable and writable by anyone on the LAN, so it carries no per-kind field (no
/// capability such as a Tahoe FURL, nor anything else a record holds) and is never taken
/// into the catalog itself: a fresh, signed doorbell whose revision differs from what a
/// browser holds makes it fetch the node's records over the authenticated exchange port, and
/// only those records enter the catalog. A replayed doorbell can at most cause a fetch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Doorbell {
    #[serde(rename = "type")]
    pub kind: String,
    pub node: String,
    pub node_id: String,
    pub ip: IpAddr,
    pub port: u16,
    pub microcloud: String,
    /// A hash of all the node's current records (Serf's `s` tag carries the same).
    pub rev: String,
    /// The publisher's clock in unix seconds, never going back while it runs: browsers take
    /// only a doorbell newer than the newest they saw from that node.
    pub ts: u64,
}

/// What vouches for a doorbell: `mac`, under the community's mDNS key (only members make
/// one: strangers' doorbells are dropped before any lookup), and `sig`, by the publishing
/// node's own key as its member record pins it (no member can ring in another's name, e.g.
/// with a time far ahead that would make browsers ignore the real doorbells).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Seals {
    pub mac: String,
    pub sig: String,
}

/// TXT format version of a doorbell (version 1 carried the whole record).
const TXT_VERSION: &str = "2";
/// The revision is 12 hex digits (6 bytes of SHA-256).
pub const REV_LEN: usize = 12;

impl Doorbell {
    /// The doorbell of `r` at revision `rev` and time `ts`.
    pub fn of(r: &Record, rev: &str, ts: u64) -> Doorbell {
        Doorbell {
            kind: r.kind.clone(),
            node: r.node.clone(),
            node_id: r.node_id.clone(),
            ip: r.ip,
            port: r.port,
            microcloud: r.microcloud.clone(),
            rev: rev.into(),
            ts,
        }
    }

    pub fn validate(&self) -> Result<(), RecordError> {
        if !is_kind(&self.kind) {
            return Err(bad("type", "not 1-24 of [a-z0-9-] starting with a letter"));
        }
        check_hostname(&self.node).map_err(|_| bad("node", "not a node name"))?;
        if !is_node_id(&self.node_id) {
            return Err(bad("node_id", "not 32 lowercase hex digits"));
        }
        let ip = self.ip;
        if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
            return Err(bad("ip", "not reachable from another node"));
        }
        if self.port == 0 {
            return Err(bad("port", "0"));
        }
        check_hostname(&self.microcloud).map_err(|_| bad("microcloud", "not a community name"))?;
        let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if self.rev.len() != REV_LEN || !self.rev.bytes().all(hex) {
            return Err(bad("s", "not 12 lowercase hex digits"));
        }
        Ok(())
    }

    /// The bytes a doorbell's MAC covers: its JSON with fields in a fixed order.
    pub fn canonical(&self) -> String {
        serde_json::to_string(self).expect("doorbells serialise")
    }

    /// The bytes the publishing node's own key signs (`sig`): the canonical form under a label
    /// no other signature of a node uses.
    pub fn signed_bytes(&self) -> Vec<u8> {
        [&b"cloudy doorbell v2|"[..], self.canonical().as_bytes()].concat()
    }

    /// TXT strings for DNS-SD (the port is the SRV record's).
    pub fn to_txt(&self, seals: &Seals) -> Vec<(String, String)> {
        vec![
            ("v".to_string(), TXT_VERSION.to_string()),
            ("t".into(), self.kind.clone()),
            ("n".into(), self.node.clone()),
            ("id".into(), self.node_id.clone()),
            ("ip".into(), self.ip.to_string()),
            ("mc".into(), self.microcloud.clone()),
            ("s".into(), self.rev.clone()),
            ("ts".into(), self.ts.to_string()),
            ("mac".into(), seals.mac.clone()),
            ("sig".into(), seals.sig.clone()),
        ]
    }

    /// Parses TXT key/value pairs as found on the wire (values are raw bytes, maybe not UTF-8)
    /// and the SRV port. Returns the doorbell and the seals it carried, still to be checked.
    pub fn from_txt(
        pairs: &[(&str, Option<&[u8]>)],
        port: u16,
    ) -> Result<(Doorbell, Seals), RecordError> {
        let total: usize = pairs
            .iter()
            .map(|(k, v)| k.len() + v.map_or(0, |v| v.len()) + 2)
            .sum();
        if total > MAX_RECORD {
            return Err(RecordError::TooLong(total));
        }
        let mut m: BTreeMap<&str, &str> = BTreeMap::new();
        for (k, v) in pairs {
            let v = v.ok_or_else(|| bad(k, "has no value"))?;
            let v = std::str::from_utf8(v).map_err(|_| bad(k, "not UTF-8"))?;
            if m.insert(k, v).is_some() {
                return Err(bad(k, "given twice"));
            }
        }
        if m.remove("v") != Some(TXT_VERSION) {
            return Err(bad("v", "not a version 2 doorbell"));
        }
        let mut take = |k: &str| m.remove(k).ok_or_else(|| bad(k, "missing"));
        let ts = take("ts")?;
        let d = Doorbell {
            kind: take("t")?.into(),
            node: take("n")?.into(),
            node_id: take("id")?.into(),
            ip: take("ip")?
                .parse()
                .map_err(|_| bad("ip", "not an address"))?,
            port,
            microcloud: take("mc")?.into(),
            rev: take("s")?.into(),
            ts: ts
                .parse()
                .ok()
                .filter(|t: &u64| t.to_string() == ts)
                .ok_or_else(|| bad("ts", "not a decimal number"))?,
        };
        let seals = Seals {
            mac: take("mac")?.to_string(),
            sig: take("sig")?.to_string(),
        };
        if let Some(k) = m.keys().next() {
            return Err(bad(k, "unknown TXT key"));
        }
        d.validate()?;
        Ok((d, seals))
    }
}

/// The parts of a record a service declares (the rest says which node it is on): the same
/// checks for a record from the network and for a seed's `[[services.publish]]`.
pub fn check_service(
    kind: &str,
    description: &str,
    port: u16,
    fields: &BTreeMap<String, String>,
) -> Result<(), RecordError> {
    if !is_kind(kind) {
        return Err(bad("type", "not 1-24 of [a-z0-9-] starting with a letter"));
    }
    if description.len() > MAX_DESCRIPTION {
        return Err(bad("description", "longer than 160 bytes"));
    }
    if !text_ok(description) {
        return Err(bad("description", "control characters"));
    }
    if port == 0 {
        return Err(bad("port", "0"));
    }
    if fields.len() > MAX_FIELDS {
        return Err(bad("fields", "more than 8"));
    }
    let row = kinds::find(kind);
    for (k, v) in fields {
        if !row.is_some_and(|t| t.fields.iter().any(|f| f.name == k)) {
            return Err(bad(k, "not a field of this service type"));
        }
        if v.len() > MAX_FIELD_VALUE || !text_ok(v) {
            return Err(bad(k, "too long or control characters"));
        }
        kinds::check_field(kind, k, v).map_err(|p| bad(k, p))?;
    }
    Ok(())
}

/// Who publishes: the node every record of ours names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub node: String,
    pub node_id: String,
    /// The node's address on its LAN.
    pub ip: IpAddr,
    /// The node's community VPN address, where community services listen.
    pub vpn: std::net::Ipv4Addr,
    pub microcloud: String,
}

impl Origin {
    pub fn record(&self, kind: &str, port: u16, description: &str) -> Record {
        Record {
            kind: kind.into(),
            description: description.into(),
            node: self.node.clone(),
            node_id: self.node_id.clone(),
            host: format!("{}.local", self.node),
            ip: self.ip,
            port,
            microcloud: self.microcloud.clone(),
            fields: BTreeMap::new(),
        }
    }

    /// A record of a service that listens on the VPN address only.
    pub fn vpn_record(&self, kind: &str, port: u16, description: &str) -> Record {
        let mut r = self.record(kind, port, description);
        r.ip = IpAddr::V4(self.vpn);
        r
    }
}

/// A list of records from one node (a Serf fetch): every one valid, all from that node.
pub fn parse_list(bytes: &[u8], node_id: &str) -> Result<Vec<Record>, RecordError> {
    if bytes.len() > MAX_PER_NODE * MAX_RECORD * 2 {
        return Err(RecordError::TooLong(bytes.len()));
    }
    let list: Vec<Record> =
        serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed(e.to_string()))?;
    if list.len() > MAX_PER_NODE {
        return Err(RecordError::Malformed(format!(
            "{} records (at most {MAX_PER_NODE})",
            list.len()
        )));
    }
    for r in &list {
        r.validate()?;
        if r.node_id != node_id {
            return Err(bad("node_id", "a record of another node"));
        }
    }
    Ok(list)
}

pub type Key = (String, String, u16);

#[cfg(test)]
mod tests {
    use super::*;

    pub fn record(id_byte: char, kind: &str, port: u16) -> Record {
        Record {
            kind: kind.into(),
            description: "files for the neighbourhood".into(),
            node: "n1".into(),
            node_id: std::iter::repeat_n(id_byte, 32).collect(),
            host: "n1.local".into(),
            ip: "10.213.0.1".parse().unwrap(),
            port,
            microcloud: "sants".into(),
            fields: BTreeMap::new(),
        }
    }

    fn bell(r: &Record) -> Doorbell {
        Doorbell::of(r, "0123456789ab", 1_800_000_000)
    }

    fn txt(r: &Record) -> Vec<(String, Vec<u8>)> {
        bell(r)
            .to_txt(&Seals {
                mac: "00ff".into(),
                sig: "ee".into(),
            })
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect()
    }

    fn from(pairs: &[(String, Vec<u8>)], port: u16) -> Result<(Doorbell, Seals), RecordError> {
        let p: Vec<(&str, Option<&[u8]>)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_slice())))
            .collect();
        Doorbell::from_txt(&p, port)
    }

    #[test]
    fn txt_round_trip_carries_no_typed_field() {
        let mut r = record('a', "tahoe-introducer", 3456);
        r.fields
            .insert("furl".into(), "pb://tubid@10.0.0.1:3456/swissnum".into());
        r.validate().unwrap();
        let (back, seals) = from(&txt(&r), 3456).unwrap();
        assert_eq!(back, bell(&r));
        assert_eq!((seals.mac.as_str(), seals.sig.as_str()), ("00ff", "ee"));
        let all: String = txt(&r)
            .into_iter()
            .map(|(k, v)| format!("{k}={}", String::from_utf8(v).unwrap()))
            .collect();
        assert!(!all.contains("swissnum") && !all.contains("f."), "{all}");
        assert_eq!(Record::parse_json(r.canonical().as_bytes()).unwrap(), r);
    }

    #[test]
    fn hostile_records_are_refused() {
        // 64 KiB in one TXT value.
        let mut t = txt(&record('a', "syncthing", 1));
        t.push(("f.device_id".into(), vec![b'A'; 64 * 1024]));
        assert!(matches!(from(&t, 1), Err(RecordError::TooLong(_))));
        // Broken UTF-8.
        let mut t = txt(&record('a', "syncthing", 1));
        t[2].1 = vec![b'o', 0xff, 0xfe, b'k'];
        assert_eq!(
            from(&t, 1).unwrap_err(),
            bad("n", "not UTF-8"),
            "broken UTF-8 is refused, not repaired"
        );
        // A field another type has, an unknown key, a duplicate, a missing MAC.
        let mut r = record('a', "syncthing", 1);
        r.fields.insert("furl".into(), "pb://x@y/z".into());
        assert!(r.validate().is_err());
        let mut t = txt(&record('a', "syncthing", 1));
        t.push(("rm".into(), b"-rf /".to_vec()));
        assert!(from(&t, 1).is_err());
        // A typed field, even one of the type: doorbells carry none.
        let mut t = txt(&record('a', "syncthing", 1));
        t.push(("f.device_id".into(), b"MFZWI3D".to_vec()));
        assert_eq!(
            from(&t, 1).unwrap_err(),
            bad("f.device_id", "unknown TXT key")
        );
        // A version 1 record, a time with a sign or leading zero, a revision that is not hex.
        let mut t = txt(&record('a', "syncthing", 1));
        t[0].1 = b"1".to_vec();
        assert!(from(&t, 1).is_err());
        for ts in ["+5", "05", "-1", "", "18446744073709551616"] {
            let mut t = txt(&record('a', "syncthing", 1));
            t[7].1 = ts.as_bytes().to_vec();
            assert_eq!(from(&t, 1).unwrap_err(), bad("ts", "not a decimal number"));
        }
        let mut t = txt(&record('a', "syncthing", 1));
        t[6].1 = b"0123456789aG".to_vec();
        assert!(from(&t, 1).is_err());
        let mut t = txt(&record('a', "syncthing", 1));
        t.push(("t".into(), b"serf".to_vec()));
        assert!(from(&t, 1).is_err());
        let t: Vec<_> = txt(&record('a', "syncthing", 1))
            .into_iter()
            .filter(|(k, _)| k != "mac")
            .collect();
        assert!(from(&t, 1).is_err());
        // Shell characters where a typed field has a syntax: refused.
        let mut r = record('a', "streaming", 1);
        r.fields.insert("stream_id".into(), "x; rm -rf / #".into());
        assert!(r.validate().is_err());
        let mut r = record('a', "tahoe-introducer", 1);
        r.fields
            .insert("furl".into(), "pb://a@b/$(reboot)`id`".into());
        assert!(r.validate().is_err());
        // Control characters and over-long text; a node id that is a path.
        let mut r = record('a', "serf", 1);
        r.description = "line\nbreak\u{1b}[2J".into();
        assert!(r.validate().is_err());
        r.description = "x".repeat(161);
        assert!(r.validate().is_err());
        let mut r = record('a', "serf", 1);
        r.node_id = "../../etc/passwd".into();
        assert!(r.validate().is_err());
        let mut r = record('a', "Serf", 1);
        assert!(r.validate().is_err());
        r.kind = "serf".into();
        r.port = 0;
        assert!(r.validate().is_err());
        // Unknown JSON fields.
        let j = record('a', "serf", 1)
            .canonical()
            .replace("\"port\"", "\"exec\":\"sh\",\"port\"");
        assert!(Record::parse_json(j.as_bytes()).is_err());
    }

    #[test]
    fn html_and_shell_text_in_a_description_is_kept_as_data() {
        let mut r = record('a', "serf", 7946);
        r.description = "<script>alert(1)</script> $(rm -rf /) `id` && | ; \"'".into();
        let back = Record::parse_json(r.canonical().as_bytes()).unwrap();
        assert_eq!(back.description, r.description, "stored byte for byte");
    }

    #[test]
    fn list_parse_bounds_count_and_owner() {
        let one = record('a', "serf", 1);
        let ok = serde_json::to_vec(&vec![one.clone()]).unwrap();
        assert_eq!(parse_list(&ok, &one.node_id).unwrap().len(), 1);
        assert!(parse_list(&ok, &"b".repeat(32)).is_err(), "not its node");
        let many: Vec<Record> = (1..=65).map(|p| record('a', "serf", p)).collect();
        assert!(parse_list(&serde_json::to_vec(&many).unwrap(), &one.node_id).is_err());
    }
}
