//! The one catalog of providers, merging records from every source (this node, mDNS on the
//! LAN and the switch-mode VPN, Serf community-wide), keyed by node and service.

pub mod avahi;
pub mod browse;
pub mod pending;
pub mod publish;
pub mod signing;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use cloudy_model::record::{Key, Record, RecordError, MAX_ENTRIES, MAX_PER_NODE};

/// Rewritten every few seconds while the agent runs: on tmpfs, not the SD card.
pub const CATALOG_FILE: &str = "/run/cloudy/catalog.json";

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
