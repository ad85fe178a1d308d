//! Service records and the one catalog that merges them from every source (this node, mDNS on
//! the LAN and the switch-mode VPN, Serf community-wide), keyed by node and service.
//!
//! Records come from the network, so each is parsed strictly and bounded: a fixed set of
//! fields, per-type typed fields with their own syntax, no control characters anywhere, at most
//! `MAX_RECORD` bytes encoded. Text such as a description is kept as data (HTML included) and
//! never used to build a command; escaping for display is the reader's job.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::identity::is_node_id;
use crate::seed::check_hostname;

/// One record, encoded as JSON, is at most this long; a TXT string is at most 255 bytes.
pub const MAX_RECORD: usize = 1024;
pub const MAX_DESCRIPTION: usize = 160;
pub const MAX_FIELDS: usize = 8;
pub const MAX_FIELD_VALUE: usize = 200;
/// Services one node may publish; more is a broken or hostile node.
pub const MAX_PER_NODE: usize = 64;
/// The whole catalog; far above a microcloud (1024 members x a few services).
pub const MAX_ENTRIES: usize = 8192;
/// Rewritten every few seconds while the agent runs: on tmpfs, not the SD card.
pub const CATALOG_FILE: &str = "/run/cloudy/catalog.json";

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
    /// Typed per service type (see `field_check`); unknown types carry none.
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

/// Service types the agent knows, with the typed fields each may carry.
pub const KNOWN_TYPES: &[(&str, &[&str])] = &[
    ("tincvpn", &["vpn"]),
    ("serf", &[]),
    ("tahoe-introducer", &["furl"]),
    ("tahoe-storage", &["nodeid"]),
    (
        "streaming",
        &["stream_id", "playlist", "origin", "hops", "upstream"],
    ),
    ("syncthing", &["device_id"]),
];

fn type_ok(t: &str) -> bool {
    (1..=24).contains(&t.len())
        && t.as_bytes()[0].is_ascii_lowercase()
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Syntax of each typed field; a value that does not fit is refused, not repaired.
pub(crate) fn field_check(key: &str, v: &str) -> Result<(), &'static str> {
    let charset = |extra: &[u8]| {
        v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    };
    let ok = match key {
        "vpn" => v.parse::<std::net::Ipv4Addr>().is_ok(),
        // pb://<tub id>@<hints>/<swissnum>
        "furl" => v.starts_with("pb://") && v.contains('@') && charset(b":/@.,-_"),
        "nodeid" => !v.is_empty() && v.len() <= 64 && charset(b"-"),
        "stream_id" => !v.is_empty() && v.len() <= 64 && charset(b"-_"),
        // /stream/<stream_id>/index.m3u8
        "playlist" => v
            .strip_prefix("/stream/")
            .and_then(|r| r.strip_suffix("/index.m3u8"))
            .is_some_and(|id| crate::streaming::check_stream_id(id).is_ok()),
        "origin" => is_node_id(v),
        "hops" => v
            .parse::<u32>()
            .is_ok_and(|h| h < crate::streaming::MAX_HOPS && v == h.to_string()),
        // short ids (8 hex digits) of the relays and the source, nearest first
        "upstream" => {
            let ids: Vec<&str> = v.split(',').collect();
            ids.len() <= crate::streaming::MAX_HOPS as usize
                && ids.iter().all(|i| {
                    i.len() == 8
                        && i.bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                })
        }
        // 8 groups of 7 base32 characters
        "device_id" => {
            let g: Vec<&str> = v.split('-').collect();
            g.len() == 8
                && g.iter().all(|g| {
                    g.len() == 7
                        && g.bytes()
                            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
                })
        }
        _ => return Err("not a field of this service type"),
    };
    if ok {
        Ok(())
    } else {
        Err("does not have the syntax of this field")
    }
}

fn text_ok(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

impl Record {
    pub fn validate(&self) -> Result<(), RecordError> {
        if !type_ok(&self.kind) {
            return Err(bad("type", "not 1-24 of [a-z0-9-] starting with a letter"));
        }
        if self.description.len() > MAX_DESCRIPTION {
            return Err(bad("description", "longer than 160 bytes"));
        }
        if !text_ok(&self.description) {
            return Err(bad("description", "control characters"));
        }
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
        if self.port == 0 {
            return Err(bad("port", "0"));
        }
        check_hostname(&self.microcloud).map_err(|_| bad("microcloud", "not a community name"))?;
        if self.fields.len() > MAX_FIELDS {
            return Err(bad("fields", "more than 8"));
        }
        let allowed: &[&str] = KNOWN_TYPES
            .iter()
            .find(|(t, _)| *t == self.kind)
            .map(|(_, f)| *f)
            .unwrap_or(&[]);
        for (k, v) in &self.fields {
            if !allowed.contains(&k.as_str()) {
                return Err(bad(k, "not a field of this service type"));
            }
            if v.len() > MAX_FIELD_VALUE || !text_ok(v) {
                return Err(bad(k, "too long or control characters"));
            }
            field_check(k, v).map_err(|p| bad(k, p))?;
        }
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

    /// Strict JSON parse (what travels over the join port): bounded before it is parsed.
    pub fn parse_json(bytes: &[u8]) -> Result<Record, RecordError> {
        if bytes.len() > MAX_RECORD * 2 {
            return Err(RecordError::TooLong(bytes.len()));
        }
        let r: Record =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed(e.to_string()))?;
        r.validate()?;
        Ok(r)
    }

    /// TXT strings for DNS-SD: short keys keep each under 255 bytes.
    pub fn to_txt(&self, mac: &str) -> Vec<(String, String)> {
        let mut t = vec![
            ("v".to_string(), "1".to_string()),
            ("t".into(), self.kind.clone()),
            ("d".into(), self.description.clone()),
            ("n".into(), self.node.clone()),
            ("id".into(), self.node_id.clone()),
            ("h".into(), self.host.clone()),
            ("ip".into(), self.ip.to_string()),
            ("mc".into(), self.microcloud.clone()),
        ];
        for (k, v) in &self.fields {
            t.push((format!("f.{k}"), v.clone()));
        }
        t.push(("mac".into(), mac.into()));
        t
    }

    /// Parses TXT key/value pairs as found on the wire (values are raw bytes, maybe not UTF-8)
    /// and the SRV port. Returns the record and the MAC it carried, still to be checked.
    pub fn from_txt(
        pairs: &[(&str, Option<&[u8]>)],
        port: u16,
    ) -> Result<(Record, String), RecordError> {
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
        if m.get("v") != Some(&"1") {
            return Err(bad("v", "not a version 1 record"));
        }
        let mut take = |k: &str| m.remove(k).ok_or_else(|| bad(k, "missing"));
        let mut r = Record {
            kind: take("t")?.into(),
            description: take("d")?.into(),
            node: take("n")?.into(),
            node_id: take("id")?.into(),
            host: take("h")?.into(),
            ip: take("ip")?
                .parse()
                .map_err(|_| bad("ip", "not an address"))?,
            port,
            microcloud: take("mc")?.into(),
            fields: BTreeMap::new(),
        };
        let mac = take("mac")?.to_string();
        m.remove("v");
        for (k, v) in m {
            let f = k
                .strip_prefix("f.")
                .ok_or_else(|| bad(k, "unknown TXT key"))?;
            r.fields.insert(f.into(), v.into());
        }
        r.validate()?;
        Ok((r, mac))
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Local,
    Mdns,
    Serf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub record: Record,
    /// When each source last confirmed the record, unix milliseconds.
    pub seen: BTreeMap<Source, u64>,
}

/// What `cloudy-agent services` reads: written by the running agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// When the agent last wrote this file, unix milliseconds.
    pub written: u64,
    pub entries: Vec<Entry>,
}

/// The live catalog inside the agent.
#[derive(Debug, Default)]
pub struct Live {
    entries: BTreeMap<Key, Entry>,
}

impl Live {
    /// Takes a valid record from `source`; true if the catalog's content changed.
    pub fn upsert(&mut self, r: Record, source: Source, now: u64) -> bool {
        let key = r.key();
        if let Some(e) = self.entries.get_mut(&key) {
            let changed = e.record != r || !e.seen.contains_key(&source);
            e.record = r;
            e.seen.insert(source, now);
            return changed;
        }
        let per_node = self
            .entries
            .keys()
            .filter(|(id, _, _)| *id == key.0)
            .count();
        if self.entries.len() >= MAX_ENTRIES || per_node >= MAX_PER_NODE {
            return false;
        }
        self.entries.insert(
            key,
            Entry {
                record: r,
                seen: BTreeMap::from([(source, now)]),
            },
        );
        true
    }

    /// Drops `source`'s claim on `key`; the entry goes when no source holds it.
    pub fn withdraw(&mut self, key: &Key, source: Source) -> bool {
        let Some(e) = self.entries.get_mut(key) else {
            return false;
        };
        if e.seen.remove(&source).is_none() {
            return false;
        }
        if e.seen.is_empty() {
            self.entries.remove(key);
        }
        true
    }

    /// Makes `source`'s view of `node_id` exactly `records` (a node's full list).
    pub fn replace_node(
        &mut self,
        node_id: &str,
        source: Source,
        records: Vec<Record>,
        now: u64,
    ) -> bool {
        let keep: Vec<Key> = records.iter().map(Record::key).collect();
        let gone: Vec<Key> = self
            .entries
            .iter()
            .filter(|(k, e)| k.0 == node_id && e.seen.contains_key(&source) && !keep.contains(k))
            .map(|(k, _)| k.clone())
            .collect();
        let mut changed = false;
        for k in gone {
            changed |= self.withdraw(&k, source);
        }
        for r in records {
            changed |= self.upsert(r, source, now);
        }
        changed
    }

    /// Forgets claims older than `max_age_ms`: a source that stopped refreshing a record.
    pub fn expire(&mut self, now: u64, max_age_ms: u64) -> bool {
        let stale: Vec<(Key, Source)> = self
            .entries
            .iter()
            .flat_map(|(k, e)| {
                e.seen
                    .iter()
                    .filter(|(_, &t)| now.saturating_sub(t) > max_age_ms)
                    .map(|(s, _)| (k.clone(), *s))
            })
            .collect();
        let mut changed = false;
        for (k, s) in stale {
            changed |= self.withdraw(&k, s);
        }
        changed
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn snapshot(&self, now: u64) -> Catalog {
        Catalog {
            written: now,
            entries: self.entries.values().cloned().collect(),
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
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

    fn txt(r: &Record) -> Vec<(String, Vec<u8>)> {
        r.to_txt("00ff")
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect()
    }

    fn from(pairs: &[(String, Vec<u8>)], port: u16) -> Result<(Record, String), RecordError> {
        let p: Vec<(&str, Option<&[u8]>)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_slice())))
            .collect();
        Record::from_txt(&p, port)
    }

    #[test]
    fn txt_round_trip_with_typed_fields() {
        let mut r = record('a', "syncthing", 22000);
        r.fields.insert(
            "device_id".into(),
            "MFZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-BONSGYY-LTMRWAD".into(),
        );
        let (back, mac) = from(&txt(&r), 22000).unwrap();
        assert_eq!(back, r);
        assert_eq!(mac, "00ff");
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
            bad("d", "not UTF-8"),
            "broken UTF-8 is refused, not repaired"
        );
        // A field another type has, an unknown key, a duplicate, a missing MAC.
        let mut r = record('a', "syncthing", 1);
        r.fields.insert("furl".into(), "pb://x@y/z".into());
        assert!(r.validate().is_err());
        let mut t = txt(&record('a', "syncthing", 1));
        t.push(("rm".into(), b"-rf /".to_vec()));
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
        let (back, _) = from(&txt(&r), 7946).unwrap();
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

    #[test]
    fn catalog_merges_sources_and_expires() {
        let mut c = Live::default();
        let r = record('a', "serf", 1);
        assert!(c.upsert(r.clone(), Source::Mdns, 1000));
        assert!(c.upsert(r.clone(), Source::Serf, 1000));
        assert!(!c.upsert(r.clone(), Source::Serf, 2000), "a refresh only");
        assert_eq!(c.len(), 1);
        assert!(c.expire(12_000, 10_500), "mdns went stale");
        assert_eq!(c.snapshot(0).entries[0].seen.len(), 1);
        assert!(
            c.upsert(r.clone(), Source::Mdns, 12_000),
            "a source still holding it brings it back"
        );
        assert!(c.replace_node(&r.node_id, Source::Serf, vec![], 12_000));
        assert!(c.withdraw(&r.key(), Source::Mdns));
        assert!(c.is_empty());
        for p in 1..=100 {
            c.upsert(record('b', "serf", p), Source::Serf, 1);
        }
        assert_eq!(c.len(), MAX_PER_NODE, "one node cannot fill the catalog");
    }
}
