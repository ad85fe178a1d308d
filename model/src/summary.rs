//! A member's probe summary: its own view of every provider's score, sent to other members
//! over the exchange port so a dashboard can show what the neighbours see.

use serde::{Deserialize, Serialize};

use crate::names::{check_hostname, is_kind};

/// Per provider: its kind, node, port and score, with short keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    #[serde(rename = "t")]
    pub kind: String,
    #[serde(rename = "n")]
    pub node: String,
    #[serde(rename = "p")]
    pub port: u16,
    #[serde(rename = "s")]
    pub score: u8,
}

/// At most this many entries in a published summary.
pub const MAX_SUMMARY: usize = 256;

/// A summary from another member, checked: bounded, and each name in its syntax.
pub fn parse_summary(bytes: &[u8]) -> Result<Vec<Summary>, String> {
    if bytes.len() > MAX_SUMMARY * 128 {
        return Err("summary too long".into());
    }
    let v: Vec<Summary> = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if v.len() > MAX_SUMMARY {
        return Err("summary has too many entries".into());
    }
    for s in &v {
        if !is_kind(&s.kind) || check_hostname(&s.node).is_err() || s.score > 100 {
            return Err(format!("summary entry refused: {s:?}"));
        }
    }
    Ok(v)
}
