//! The one table of service kinds. A kind's row says everything the rest of the code asks of
//! it: whether a seed may enable it, the typed fields its records carry and their syntax, what
//! `cloudy-agent join` calls it and which local service does the joining, and which check the
//! quality probe runs against its providers. The agent's code for a kind lives in its own
//! folder (`agent/src/services/<kind>/`); nothing else names kinds.

use crate::names::{check_stream_id, is_node_id};

/// A chain of stream relays longer than this is refused (a loop that slipped through dies out
/// at it).
pub const MAX_HOPS: u32 = 16;

/// The probe's service-level check of a provider (beyond TCP reachability and latency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// TCP only: the kind has no protocol check.
    Tcp,
    /// Tahoe-LAFS: the web API where the record names one, else a Foolscap handshake.
    Tahoe,
    /// A TLS handshake (Syncthing's protocol runs over TLS).
    Tls,
    /// HLS: the playlist answers and its newest segments come at the stream's rate.
    Hls,
}

impl Check {
    /// The name `scan` results and the dashboard show.
    pub fn name(self) -> &'static str {
        match self {
            Check::Tcp => "tcp",
            Check::Tahoe => "tahoe",
            Check::Tls => "tls",
            Check::Hls => "hls",
        }
    }
}

/// How users join a provider of this kind: `cloudy-agent join <arg>`, after which `local` (a
/// service of this agent) runs on the joining node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Join {
    pub arg: &'static str,
    pub local: &'static str,
}

/// A typed field of a record and its syntax; a value that does not fit is refused, not
/// repaired.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub syntax: fn(&str) -> bool,
    /// Knowing the value grants access (a Tahoe FURL is a bearer capability): it travels only
    /// inside the authenticated exchange, never in an mDNS TXT record or a Serf tag, which
    /// anyone on the LAN or in the gossip can read.
    pub capability: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// The record type and the service's name (`[services] enable`, `status`).
    pub name: &'static str,
    /// A seed may name it in `[services] enable`.
    pub enable: bool,
    /// Its records carry only these fields.
    pub fields: &'static [Field],
    pub join: Option<Join>,
    pub check: Check,
}

const fn kind(name: &'static str, enable: bool, fields: &'static [Field], check: Check) -> Kind {
    Kind {
        name,
        enable,
        fields,
        join: None,
        check,
    }
}

const fn field(name: &'static str, syntax: fn(&str) -> bool) -> Field {
    Field {
        name,
        syntax,
        capability: false,
    }
}

const fn capability(name: &'static str, syntax: fn(&str) -> bool) -> Field {
    Field {
        name,
        syntax,
        capability: true,
    }
}

/// Every kind this agent knows. Records of other types are still carried (a newer node's
/// service), with no typed fields and the TCP check.
pub const KINDS: &[Kind] = &[
    // Which fields are capabilities: only the introducer's FURL (its swissnum admits anyone to
    // the grid). The others name public things: a VPN address, a Tahoe node id and a
    // Syncthing device id are hashes of public keys (a device still has to be accepted by its
    // peer), and a stream's id, playlist path, hops and relays are what any viewer is shown.
    // The community VPN itself, published by every node while tincd runs.
    kind("tincvpn", false, &[field("vpn", is_ipv4)], Check::Tcp),
    kind("serf", false, &[], Check::Tcp),
    Kind {
        join: Some(Join {
            arg: "tahoe-lafs",
            local: "tahoe-client",
        }),
        ..kind(
            "tahoe-introducer",
            true,
            &[capability("furl", is_furl)],
            Check::Tahoe,
        )
    },
    kind(
        "tahoe-storage",
        true,
        &[field("nodeid", is_tahoe_nodeid)],
        Check::Tahoe,
    ),
    // The local side of joining a grid: publishes nothing, so it carries no fields.
    kind("tahoe-client", false, &[], Check::Tcp),
    // A Tahoe node published by hand (`[[services.publish]]`): probed like the others.
    kind("tahoe", false, &[], Check::Tahoe),
    Kind {
        join: Some(Join {
            arg: "streaming",
            local: "streaming",
        }),
        ..kind(
            "streaming",
            true,
            &[
                field("stream_id", |v| check_stream_id(v).is_ok()),
                field("playlist", is_playlist),
                field("origin", is_node_id),
                field("hops", is_hops),
                field("upstream", is_upstream),
            ],
            Check::Hls,
        )
    },
    Kind {
        join: Some(Join {
            arg: "syncthing",
            local: "syncthing",
        }),
        ..kind(
            "syncthing",
            true,
            &[field("device_id", is_device_id)],
            Check::Tls,
        )
    },
];

/// Other names users give a kind, as (alias, kind): the Tahoe grid is joined as `tahoe-lafs`
/// and served by its introducer, so each name is taken for the other wherever a user names a
/// kind (`[services] enable`, `join`, `services --type`, `select`). A kind's `join` argument is
/// an alias of it too (see `resolve`); an alias is never the name of another kind.
pub const ALIASES: &[(&str, &str)] = &[("tahoe-lafs", "tahoe-introducer")];

/// The kind a user means by `name`: its own name, its `join` argument or an alias.
pub fn resolve(name: &str) -> Option<&'static Kind> {
    find(name)
        .or_else(|| KINDS.iter().find(|k| k.join.is_some_and(|j| j.arg == name)))
        .or_else(|| {
            ALIASES
                .iter()
                .find(|(a, _)| *a == name)
                .and_then(|(_, k)| find(k))
        })
}

/// `name` as the kind's own name when it is one of its other names, else as given.
pub fn canonical(name: &str) -> &str {
    resolve(name).map_or(name, |k| k.name)
}

/// A kind as messages list it: its name, then the other names it is known by
/// (`tahoe-introducer (or tahoe-lafs)`).
pub fn spelled(k: &Kind) -> String {
    let mut others: Vec<&str> = ALIASES
        .iter()
        .filter(|(_, kind)| *kind == k.name)
        .map(|(a, _)| *a)
        .collect();
    if let Some(j) = k.join.filter(|j| j.arg != k.name) {
        if !others.contains(&j.arg) {
            others.push(j.arg);
        }
    }
    if others.is_empty() {
        k.name.to_string()
    } else {
        format!("{} (or {})", k.name, others.join(", "))
    }
}

/// The kinds a seed may enable, as messages list them.
pub fn enableable_list() -> String {
    KINDS
        .iter()
        .filter(|k| k.enable)
        .map(spelled)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The kinds users can join, as messages list them.
pub fn joinable_list() -> String {
    joinable()
        .map(|(k, _)| spelled(k))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The row of `name`, if this agent knows the kind.
pub fn find(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// Kinds a seed may enable, in table order.
pub fn enableable() -> impl Iterator<Item = &'static str> {
    KINDS.iter().filter(|k| k.enable).map(|k| k.name)
}

/// Kinds users can join, with how.
pub fn joinable() -> impl Iterator<Item = (&'static Kind, Join)> {
    KINDS.iter().filter_map(|k| k.join.map(|j| (k, j)))
}

/// The provider kind `cloudy-agent join <arg>` looks for, and how it is joined; `arg` may be
/// any name of the kind (`tahoe-lafs` or `tahoe-introducer`).
pub fn by_join_arg(arg: &str) -> Option<(&'static Kind, Join)> {
    resolve(arg).and_then(|k| k.join.map(|j| (k, j)))
}

/// The probe's check for providers of `name` (TCP only for a kind not in the table).
pub fn check(name: &str) -> Check {
    find(name).map_or(Check::Tcp, |k| k.check)
}

/// Whether `key` is a capability field of `kind` (see `Field::capability`).
pub fn is_capability(kind: &str, key: &str) -> bool {
    find(kind).is_some_and(|k| k.fields.iter().any(|f| f.name == key && f.capability))
}

/// Checks a typed field of a record of `kind`.
pub fn check_field(kind: &str, key: &str, value: &str) -> Result<(), &'static str> {
    let f = find(kind)
        .and_then(|k| k.fields.iter().find(|f| f.name == key))
        .ok_or("not a field of this service type")?;
    if (f.syntax)(value) {
        Ok(())
    } else {
        Err("does not have the syntax of this field")
    }
}

fn charset(v: &str, extra: &[u8]) -> bool {
    v.bytes()
        .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

fn is_ipv4(v: &str) -> bool {
    v.parse::<std::net::Ipv4Addr>().is_ok()
}

/// pb://<tub id>@<hints>/<swissnum>
fn is_furl(v: &str) -> bool {
    v.starts_with("pb://") && v.contains('@') && charset(v, b":/@.,-_")
}

fn is_tahoe_nodeid(v: &str) -> bool {
    !v.is_empty() && v.len() <= 64 && charset(v, b"-")
}

/// /stream/<stream_id>/index.m3u8
fn is_playlist(v: &str) -> bool {
    v.strip_prefix("/stream/")
        .and_then(|r| r.strip_suffix("/index.m3u8"))
        .is_some_and(|id| check_stream_id(id).is_ok())
}

fn is_hops(v: &str) -> bool {
    v.parse::<u32>()
        .is_ok_and(|h| h < MAX_HOPS && v == h.to_string())
}

/// Short ids (8 hex digits) of the relays and the source, nearest first.
fn is_upstream(v: &str) -> bool {
    let ids: Vec<&str> = v.split(',').collect();
    ids.len() <= MAX_HOPS as usize
        && ids.iter().all(|i| {
            i.len() == 8
                && i.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// 8 groups of 7 base32 characters.
pub fn is_device_id(v: &str) -> bool {
    let g: Vec<&str> = v.split('-').collect();
    g.len() == 8
        && g.iter().all(|g| {
            g.len() == 7
                && g.bytes()
                    .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_joins_name_known_kinds() {
        let mut names: Vec<_> = KINDS.iter().map(|k| k.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), KINDS.len());
        for (_, j) in joinable() {
            assert!(find(j.local).is_some(), "{} is a kind", j.local);
        }
        assert_eq!(
            by_join_arg("tahoe-lafs").unwrap().0.name,
            "tahoe-introducer"
        );
        assert_eq!(check("syncthing"), Check::Tls);
        assert_eq!(check("web"), Check::Tcp);
    }

    /// At 2293e0e `enable = ["tahoe-lafs"]` was an unknown service (choose from
    /// tahoe-introducer, ...) while `join tahoe-introducer` was refused (choose one of
    /// tahoe-lafs, ...): two vocabularies for one kind.
    #[test]
    fn one_vocabulary_with_aliases_both_ways() {
        for (alias, kind) in ALIASES {
            assert!(find(alias).is_none(), "alias {alias} is not another kind");
            assert_eq!(resolve(alias).unwrap().name, *kind);
        }
        // the seed's names and the join names are each other's aliases
        assert_eq!(resolve("tahoe-lafs").unwrap().name, "tahoe-introducer");
        assert_eq!(
            by_join_arg("tahoe-introducer").unwrap().1.local,
            "tahoe-client"
        );
        assert_eq!(
            by_join_arg("tahoe-lafs").unwrap().0.name,
            "tahoe-introducer"
        );
        assert_eq!(by_join_arg("syncthing").unwrap().0.name, "syncthing");
        assert!(by_join_arg("tahoe-storage").is_none());
        assert!(by_join_arg("tahoe").is_none(), "the hand-published kind");
        assert_eq!(canonical("tahoe-lafs"), "tahoe-introducer");
        assert_eq!(canonical("web"), "web");
        // every list names each kind once, with its other names
        assert_eq!(
            enableable_list(),
            "tahoe-introducer (or tahoe-lafs), tahoe-storage, streaming, syncthing"
        );
        assert_eq!(
            joinable_list(),
            "tahoe-introducer (or tahoe-lafs), streaming, syncthing"
        );
    }

    #[test]
    fn fields_keep_their_syntax() {
        assert!(check_field("streaming", "hops", "3").is_ok());
        assert!(check_field("streaming", "hops", "03").is_err());
        assert!(check_field("streaming", "hops", "16").is_err());
        assert!(check_field("syncthing", "furl", "pb://a@b/c").is_err());
        assert!(check_field("web", "x", "y").is_err());
    }

    #[test]
    fn the_introducer_furl_is_a_capability() {
        assert!(is_capability("tahoe-introducer", "furl"));
        assert!(!is_capability("syncthing", "device_id"));
        assert!(!is_capability("web", "furl"));
    }
}
