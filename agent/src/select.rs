//! Choosing a provider of a service type for this node: the catalog's providers of that type,
//! ranked by this node's probe scores (best first; ties to the lower latency, then the name).
//! Providers on this node itself are never chosen: joining yourself gains nothing.

use serde::{Deserialize, Serialize};

use crate::catalog::Record;
use crate::probe::{Probe, Scores};

/// One provider of a type with what this node measured of it (None: not probed yet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ranked {
    pub record: Record,
    pub probe: Option<Probe>,
    /// `node:port`, what `join` and the dashboard's Join button name a provider by.
    pub provider: String,
    /// The record is this node's own.
    pub local: bool,
}

impl Ranked {
    pub fn score(&self) -> Option<u8> {
        self.probe.as_ref().map(|p| p.score)
    }
}

pub fn provider_id(r: &Record) -> String {
    format!("{}:{}", r.node, r.port)
}

/// Every provider of `kind` (all types when None), best first: probed ones by score, then
/// unprobed ones, then this node's own.
pub fn rank(kind: Option<&str>, records: &[Record], scores: &Scores, me: &str) -> Vec<Ranked> {
    let mut v: Vec<Ranked> = records
        .iter()
        .filter(|r| kind.is_none_or(|k| r.kind == k))
        .map(|r| Ranked {
            record: r.clone(),
            probe: scores.of(r).cloned(),
            provider: provider_id(r),
            local: r.node_id == me,
        })
        .collect();
    v.sort_by(|a, b| {
        let key = |x: &Ranked| {
            (
                x.record.kind.clone(),
                x.local,
                std::cmp::Reverse(x.score().map(i16::from).unwrap_or(-1)),
                x.probe
                    .as_ref()
                    .and_then(|p| p.rtt_ms)
                    .map(|ms| (ms * 1000.0) as u64)
                    .unwrap_or(u64::MAX),
                x.record.node.clone(),
                x.record.port,
            )
        };
        key(a).cmp(&key(b))
    });
    v
}

/// The best provider of `kind` for this node: the top of `rank` if it was probed and reached.
pub fn choose(kind: &str, records: &[Record], scores: &Scores, me: &str) -> Option<Ranked> {
    rank(Some(kind), records, scores, me)
        .into_iter()
        .find(|r| !r.local && r.probe.as_ref().is_some_and(|p| p.reachable))
}

/// Why a provider was chosen, in one line for the CLI.
pub fn why(r: &Ranked) -> String {
    let Some(p) = &r.probe else {
        return "not probed yet".into();
    };
    let mut parts = vec![format!("score {}", p.score)];
    if let Some(ms) = p.rtt_ms {
        parts.push(format!(
            "connect {ms:.1} ms (median of {}/{})",
            p.connected, p.samples
        ));
    }
    parts.push(format!(
        "{}: {}",
        p.check.name,
        match p.check.ok {
            Some(true) => "ok",
            Some(false) => "failed",
            None => "n/a",
        }
    ));
    if !p.check.detail.is_empty() {
        parts.push(p.check.detail.clone());
    }
    parts.push(format!(
        "available {:.0}% of {} probe(s) in 24 h",
        p.availability * 100.0,
        p.history
    ));
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::record;
    use crate::probe::Check;

    fn probed(r: &Record, score: u8, rtt: f64) -> Probe {
        Probe {
            record: r.clone(),
            at: 1,
            reachable: score > 0,
            rtt_ms: Some(rtt),
            connected: 5,
            samples: 5,
            check: Check::default(),
            availability: 1.0,
            history: 1,
            score,
        }
    }

    #[test]
    fn best_score_first_own_last_and_never_chosen() {
        let mut slow = record('a', "syncthing", 22000);
        slow.node = "slow".into();
        let mut good = record('b', "syncthing", 22000);
        good.node = "good".into();
        let mut mine = record('c', "syncthing", 22000);
        mine.node = "me".into();
        let new = record('d', "syncthing", 22001);
        let other = record('e', "streaming", 8090);
        let mut s = Scores::default();
        s.merge(
            None,
            vec![
                probed(&slow, 40, 200.0),
                probed(&good, 95, 1.0),
                probed(&mine, 100, 0.1),
            ],
            1,
        );
        let all = vec![slow, good.clone(), mine, new, other];
        let me = "c".repeat(32);
        let r = rank(Some("syncthing"), &all, &s, &me);
        let names: Vec<&str> = r.iter().map(|x| x.record.node.as_str()).collect();
        assert_eq!(names, ["good", "slow", "n1", "me"]);
        let best = choose("syncthing", &all, &s, &me).unwrap();
        assert_eq!(best.record, good);
        assert_eq!(best.provider, "good:22000");
        assert!(why(&best).contains("score 95"));
        assert!(choose("streaming", &all, &s, &me).is_none(), "never probed");
    }
}
