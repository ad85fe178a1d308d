//! A node's info: the small status each node tells its members about itself (name, id, version,
//! uptime, load, memory, disk, its services, its tinc peers with the latency it measured to
//! each, and the seed's location and contact), fetched over the exchange port (request kind
//! `info`) under the answering node's key, and drawn on the dashboard's Community map.
//!
//! Everything here comes from the network: `parse_info` bounds it and refuses control
//! characters and ids that are not the member asked, before anything shows it.

use serde::{Deserialize, Serialize};

use crate::names::{check_hostname, is_kind, is_node_id};

/// A message larger than this is refused before parsing (100 peers take ~8 KiB).
pub const MAX_INFO: usize = 32 * 1024;
/// Peers and services listed in one info.
pub const MAX_INFO_PEERS: usize = 256;
pub const MAX_INFO_SERVICES: usize = 64;
/// Free text (location, contact, version, a service's state), in characters.
pub const MAX_TEXT: usize = 128;

/// One service of the node: its type, port and state (`up`, `down`, a supervisor state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceInfo {
    #[serde(rename = "type")]
    pub kind: String,
    pub port: u16,
    pub state: String,
}

/// A tinc peer of the node and what the node measured of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerInfo {
    pub id: String,
    pub name: String,
    /// TCP connect time to the peer's exchange port, microseconds (None: not reached): a LAN
    /// or a VPN hop takes well under a millisecond.
    pub rtt_us: Option<u32>,
    /// Mean of this node's probe scores of the peer's services, 0-100 (None: none probed).
    pub score: Option<u8>,
}

/// Unlike the other peer-sent structs, a node info takes fields it does not know and drops
/// them: members update over days (issue 16's rollout window), and an info from a newer
/// release that adds a field must still put that node on an older member's map. What is known
/// is bounded and validated as before; the whole message stays under `MAX_INFO`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub name: String,
    pub version: String,
    /// When the node made this info, unix seconds.
    pub at: u64,
    pub uptime_s: u64,
    /// 1-minute load average, hundredths.
    pub load: u32,
    pub mem_total_kb: u64,
    pub mem_free_kb: u64,
    pub disk_total_kb: u64,
    pub disk_free_kb: u64,
    pub services: Vec<ServiceInfo>,
    pub peers: Vec<PeerInfo>,
    /// The seed's `[node] location`: "LAT,LON" or free text.
    pub location: Option<String>,
    /// The seed's `[node] contact`.
    pub contact: Option<String>,
    /// The image release the node runs (`/usr/lib/cloudy/release.json`); None for a node
    /// built without one. Left out when None, so the info of such a node reads as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Release>,
}

/// What the image says it is (`/usr/lib/cloudy/release.json`, written by `cloudy-image`): the
/// board it was built for and its release version, which updates compare against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub board: String,
    pub version: String,
}

/// Where every image keeps its release.
pub const RELEASE_FILE: &str = "/usr/lib/cloudy/release.json";

impl Release {
    /// The release under `root` (`/` on a node), or None with the reason: no file, or one that
    /// does not parse.
    pub fn load(root: &std::path::Path) -> Result<Release, String> {
        let path = root.join(RELEASE_FILE.trim_start_matches('/'));
        let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if text.len() > 4096 {
            return Err(format!("{}: longer than 4096 bytes", path.display()));
        }
        let r: Release = serde_json::from_slice(&text).map_err(|e| {
            format!(
                "{}: {e}; fix: the image writes it as {{\"board\": \"...\", \"version\": \"1.2.0\"}}",
                path.display()
            )
        })?;
        r.validate()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(r)
    }

    pub fn validate(&self) -> Result<(), InfoError> {
        check_hostname(&self.board).map_err(|p| field("release", format!("board: {p}")))?;
        self.version
            .parse::<crate::update::Version>()
            .map_err(|e| field("release", e.to_string()))?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InfoError {
    #[error("node info longer than {MAX_INFO} bytes")]
    TooLong,
    #[error("node info malformed: {0}")]
    Malformed(String),
    #[error("node info field `{field}` refused: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
    #[error("node info is about {got}, not the member asked ({want})")]
    NotTheMember { got: String, want: String },
}

fn field(field: &'static str, problem: impl Into<String>) -> InfoError {
    InfoError::Field {
        field,
        problem: problem.into(),
    }
}

/// Free text from a peer or a seed: bounded, no control characters (a terminal's escapes, a
/// line break in a log). Shared with the seed's `[node]` check.
pub fn check_text(s: &str) -> Result<(), String> {
    if s.chars().count() > MAX_TEXT {
        return Err(format!("longer than {MAX_TEXT} characters"));
    }
    if s.chars().any(char::is_control) {
        return Err("has control characters".into());
    }
    Ok(())
}

/// A location's coordinates when it is written as "LAT,LON" (degrees), else None (free text).
pub fn coordinates(location: &str) -> Option<(f64, f64)> {
    let (a, b) = location.split_once(',')?;
    let lat: f64 = a.trim().parse().ok()?;
    let lon: f64 = b.trim().parse().ok()?;
    ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)).then_some((lat, lon))
}

impl NodeInfo {
    /// Every field in its syntax and bounds.
    pub fn validate(&self) -> Result<(), InfoError> {
        if !is_node_id(&self.id) {
            return Err(field("id", "not a node id"));
        }
        check_hostname(&self.name).map_err(|p| field("name", p))?;
        check_text(&self.version).map_err(|p| field("version", p))?;
        if let Some(r) = &self.release {
            r.validate()?;
        }
        for (f, t) in [("location", &self.location), ("contact", &self.contact)] {
            if let Some(t) = t {
                check_text(t).map_err(|p| field(f, p))?;
            }
        }
        if self.services.len() > MAX_INFO_SERVICES {
            return Err(field("services", "too many"));
        }
        for s in &self.services {
            if !is_kind(&s.kind) {
                return Err(field("services", format!("{:?} is not a type", s.kind)));
            }
            if s.state.is_empty()
                || s.state.len() > 32
                || !s
                    .state
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(field("services", "a state is one short word"));
            }
        }
        if self.peers.len() > MAX_INFO_PEERS {
            return Err(field("peers", "too many"));
        }
        for p in &self.peers {
            if !is_node_id(&p.id) {
                return Err(field("peers", "a peer id is not a node id"));
            }
            check_hostname(&p.name).map_err(|e| field("peers", e))?;
            if p.score.is_some_and(|s| s > 100) {
                return Err(field("peers", "a score is 0-100"));
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("infos serialise")
    }
}

/// An info as a member sent it, checked: bounded before parsing, parsed strictly, every field
/// valid, and about `member` (the node whose pinned key signed the answer), never another.
pub fn parse_info(bytes: &[u8], member: &str) -> Result<NodeInfo, InfoError> {
    if bytes.len() > MAX_INFO {
        return Err(InfoError::TooLong);
    }
    let info: NodeInfo =
        serde_json::from_slice(bytes).map_err(|e| InfoError::Malformed(e.to_string()))?;
    info.validate()?;
    if info.id != member {
        return Err(InfoError::NotTheMember {
            got: info.id,
            want: member.to_string(),
        });
    }
    Ok(info)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn id(n: u32) -> String {
        format!("{n:032x}")
    }

    pub fn sample(n: u32, peers: u32) -> NodeInfo {
        NodeInfo {
            id: id(n),
            name: format!("node-{n}"),
            version: "0.1.0".into(),
            at: 1_800_000_000,
            uptime_s: 3600,
            load: 42,
            mem_total_kb: 1 << 20,
            mem_free_kb: 1 << 19,
            disk_total_kb: 1 << 24,
            disk_free_kb: 1 << 23,
            services: vec![ServiceInfo {
                kind: "syncthing".into(),
                port: 22000,
                state: "up".into(),
            }],
            peers: (0..peers)
                .filter(|p| *p != n)
                .map(|p| PeerInfo {
                    id: id(p),
                    name: format!("node-{p}"),
                    rtt_us: Some(3000),
                    score: Some(90),
                })
                .collect(),
            location: Some("52.52,13.40".into()),
            contact: Some("ops@example.org".into()),
            release: Some(Release {
                board: "pc-amd64".into(),
                version: "1.4.0".into(),
            }),
        }
    }

    #[test]
    fn a_full_info_passes_and_stays_small() {
        let i = sample(1, 100);
        let j = i.to_json();
        assert!(j.len() < MAX_INFO, "{} bytes", j.len());
        assert_eq!(parse_info(j.as_bytes(), &id(1)).unwrap(), i);
        assert_eq!(coordinates("52.52, 13.40"), Some((52.52, 13.40)));
        assert_eq!(coordinates("Kitchen, 2nd floor"), None);
        assert_eq!(coordinates("91,0"), None);
    }

    #[test]
    fn a_newer_releases_extra_top_level_field_is_dropped_not_refused() {
        // Before, NodeInfo denied unknown fields: a member that had updated to a release whose
        // info carried one more field vanished from every not-yet-updated member's map.
        let ok = sample(1, 3);
        let newer = ok
            .to_json()
            .replacen('{', "{\"added_later\":{\"x\":[1,2]},", 1);
        assert_eq!(parse_info(newer.as_bytes(), &id(1)).unwrap(), ok);
    }

    #[test]
    fn hostile_infos_are_refused() {
        let ok = sample(1, 3);
        // Oversized: refused before parsing.
        let mut big = ok.to_json().into_bytes();
        big.extend(std::iter::repeat_n(b' ', MAX_INFO));
        assert_eq!(parse_info(&big, &id(1)), Err(InfoError::TooLong));
        // Control characters in any text.
        for f in [
            |i: &mut NodeInfo| i.contact = Some("a\u{1b}[2Jb".into()),
            |i: &mut NodeInfo| i.location = Some("x\ny".into()),
            |i: &mut NodeInfo| i.version = "1\u{7}".into(),
            |i: &mut NodeInfo| i.name = "<script>".into(),
            |i: &mut NodeInfo| i.peers[0].name = "a\rb".into(),
            |i: &mut NodeInfo| i.services[0].state = "up<b>".into(),
            |i: &mut NodeInfo| i.services[0].kind = "../x".into(),
            |i: &mut NodeInfo| i.peers[0].score = Some(101),
            |i: &mut NodeInfo| i.release.as_mut().unwrap().version = "1.2<b>".into(),
            |i: &mut NodeInfo| i.release.as_mut().unwrap().board = "a b".into(),
            |i: &mut NodeInfo| i.contact = Some("x".repeat(MAX_TEXT + 1)),
        ] {
            let mut bad = ok.clone();
            f(&mut bad);
            assert!(
                matches!(
                    parse_info(bad.to_json().as_bytes(), &id(1)),
                    Err(InfoError::Field { .. })
                ),
                "{bad:?}"
            );
        }
        // Too many peers.
        let many = sample(1, (MAX_INFO_PEERS + 2) as u32);
        assert!(parse_info(many.to_json().as_bytes(), &id(1)).is_err());
        // Unknown fields inside a service or peer are refused.
        let extra = ok
            .to_json()
            .replacen("\"port\"", "\"admin\":true,\"port\"", 1);
        assert!(matches!(
            parse_info(extra.as_bytes(), &id(1)),
            Err(InfoError::Malformed(_))
        ));
        // An info about another node than the member whose key answered.
        assert!(matches!(
            parse_info(ok.to_json().as_bytes(), &id(2)),
            Err(InfoError::NotTheMember { .. })
        ));
    }
}
