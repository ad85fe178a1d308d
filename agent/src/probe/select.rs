//! Choosing a provider of a service type for this node: the catalog's providers of that type,
//! ranked by this node's probe scores blended with the users' ratings once enough nodes rated
//! (`ratings::blend`; best first; ties to the lower latency, then the name). Providers on this
//! node itself are never chosen: joining yourself gains nothing.

use serde::{Deserialize, Serialize};

use crate::catalog::Record;
use crate::probe::ratings::{blend, Aggregate, Ratings};
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
    /// What users say of it (mean stars and how many nodes rated).
    #[serde(default)]
    pub rating: Option<Aggregate>,
    /// What it is ranked by: the probe's technical score, blended with `rating` once enough
    /// nodes rated (`ratings::blend`); None until probed.
    #[serde(default)]
    pub blended: Option<f64>,
}

impl Ranked {
    /// The probe's technical score.
    pub fn score(&self) -> Option<u8> {
        self.probe.as_ref().map(|p| p.score)
    }
}

pub fn provider_id(r: &Record) -> String {
    format!("{}:{}", r.node, r.port)
}

/// Every provider of `kind` (all types when None), best first: probed ones by score, then
/// unprobed ones, then this node's own.
pub fn rank(
    kind: Option<&str>,
    records: &[Record],
    scores: &Scores,
    ratings: &Ratings,
    me: &str,
) -> Vec<Ranked> {
    let mut v: Vec<Ranked> = records
        .iter()
        .filter(|r| kind.is_none_or(|k| r.kind == k))
        .map(|r| {
            let probe = scores.of(r).cloned();
            let rating = ratings.of(&r.node_id, &r.kind);
            Ranked {
                blended: probe.as_ref().map(|p| blend(p.score, rating.as_ref())),
                record: r.clone(),
                probe,
                provider: provider_id(r),
                local: r.node_id == me,
                rating,
            }
        })
        .collect();
    v.sort_by(|a, b| {
        let key = |x: &Ranked| {
            (
                x.record.kind.clone(),
                x.local,
                // Hundredths of a point: a blend is rarely whole.
                std::cmp::Reverse(x.blended.map(|b| (b * 100.0).round() as i64).unwrap_or(-1)),
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
pub fn choose(
    kind: &str,
    records: &[Record],
    scores: &Scores,
    ratings: &Ratings,
    me: &str,
) -> Option<Ranked> {
    rank(Some(kind), records, scores, ratings, me)
        .into_iter()
        .find(chosen)
}

/// A provider `choose` may take: another node's, probed and reached.
fn chosen(r: &Ranked) -> bool {
    !r.local && r.probe.as_ref().is_some_and(|p| p.reachable)
}

/// The provider a service uses when nobody names one (a Tahoe storage node's introducer):
/// the best one for this node by the probe's scores (`choose`). Before any scan of that kind,
/// the one every node picks alike: another node before this one, then the lowest node id.
pub fn choose_provider(
    kind: &str,
    catalog: &[Record],
    me: &str,
    scores: &Scores,
    ratings: &Ratings,
) -> Option<Record> {
    if let Some(best) = choose(kind, catalog, scores, ratings, me) {
        return Some(best.record);
    }
    unscanned_choice(kind, catalog, me)
}

fn unscanned_choice(kind: &str, catalog: &[Record], me: &str) -> Option<Record> {
    catalog
        .iter()
        .filter(|r| r.kind == kind)
        .min_by_key(|r| (r.node_id == me, r.node_id.clone(), r.port))
        .cloned()
}

/// True if the user's `name` means `r`: `node:port` (what the dashboard and `select` print),
/// the node's name or host, its IP, or its node id (or a prefix of 8+ digits).
fn names(r: &Record, name: &str) -> bool {
    provider_id(r) == name
        || r.node == name
        || r.host == name
        || r.ip.to_string() == name
        || (name.len() >= 8 && r.node_id.starts_with(name))
}

/// A provider the user named, of those of `kind` in `catalog` (see `names`).
pub fn find_provider(kind: &str, catalog: &[Record], name: &str) -> Option<Record> {
    catalog
        .iter()
        .filter(|r| r.kind == kind)
        .find(|r| names(r, name))
        .cloned()
}

/// How a provider for the user was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The user named it.
    Named,
    /// The best score of this node's last scan.
    Scored,
    /// No scan of the kind reached one: the lowest node id, as every node would pick.
    Unscanned,
}

/// A provider for the user, and how it was found.
#[derive(Debug, Clone)]
pub struct Pick {
    pub ranked: Ranked,
    pub basis: Basis,
}

impl Pick {
    /// What the user should know about the choice, if anything.
    pub fn note(&self) -> Option<String> {
        (self.basis == Basis::Unscanned).then(|| {
            format!(
                "{} was chosen without a quality scan (the lowest node id); scan first to choose by quality",
                self.ranked.provider
            )
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("no {kind} provider in the catalog (is one published? see `cloudy-agent services --type {kind}`)")]
    None { kind: String },
    #[error("no {kind} provider {name:?} in the catalog (`cloudy-agent services --type {kind}`)")]
    NotFound { kind: String, name: String },
    #[error("{provider} is this node itself: name another provider")]
    Itself { provider: String },
}

/// The one provider lookup of the user's flows (the CLI's `join`, the dashboard's Join, the
/// control socket): the provider the user named (`node:port` keeps the port), else the best
/// scored one, else, before any scan reached one, the unscanned choice (`Pick::note` says so).
/// Never this node's own.
pub fn lookup(
    kind: &str,
    name: Option<&str>,
    records: &[Record],
    scores: &Scores,
    ratings: &Ratings,
    me: &str,
) -> Result<Pick, LookupError> {
    let ranked = rank(Some(kind), records, scores, ratings, me);
    let pick = match name {
        Some(n) => {
            // An exact `node:port` first: a node may offer a kind on several ports.
            let found = ranked.iter().find(|r| r.provider == n).or_else(|| {
                let r = find_provider(kind, records, n)?;
                ranked.iter().find(|x| x.record == r)
            });
            let found = found.ok_or_else(|| LookupError::NotFound {
                kind: kind.into(),
                name: n.into(),
            })?;
            Pick {
                ranked: found.clone(),
                basis: Basis::Named,
            }
        }
        None => match ranked.iter().find(|r| chosen(r)) {
            Some(best) => Pick {
                ranked: best.clone(),
                basis: Basis::Scored,
            },
            None => {
                // The same order as `unscanned_choice`: `local` is `node_id == me`.
                let r = ranked
                    .iter()
                    .min_by_key(|x| (x.local, x.record.node_id.clone(), x.record.port))
                    .ok_or_else(|| LookupError::None { kind: kind.into() })?;
                Pick {
                    ranked: r.clone(),
                    basis: Basis::Unscanned,
                }
            }
        },
    };
    if pick.ranked.local {
        return Err(LookupError::Itself {
            provider: pick.ranked.provider,
        });
    }
    Ok(pick)
}

/// Why a provider was chosen, in one line for the CLI.
pub fn why(r: &Ranked) -> String {
    let Some(p) = &r.probe else {
        return "not probed yet".into();
    };
    let mut parts = vec![match (&r.rating, r.blended) {
        (Some(a), Some(b)) if a.counts() => format!(
            "score {b:.0} (technical {}, rated {:.1}/5 by {} nodes)",
            p.score, a.mean, a.count
        ),
        (Some(a), _) => format!(
            "score {} (rated {:.1}/5 by {} node(s): counts from {})",
            p.score,
            a.mean,
            a.count,
            crate::probe::ratings::MIN_RATERS
        ),
        _ => format!("score {}", p.score),
    }];
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
        let r = rank(Some("syncthing"), &all, &s, &Ratings::default(), &me);
        let names: Vec<&str> = r.iter().map(|x| x.record.node.as_str()).collect();
        assert_eq!(names, ["good", "slow", "n1", "me"]);
        let best = choose("syncthing", &all, &s, &Ratings::default(), &me).unwrap();
        assert_eq!(best.record, good);
        assert_eq!(best.provider, "good:22000");
        assert!(why(&best).contains("score 95"));
        assert!(
            choose("streaming", &all, &s, &Ratings::default(), &me).is_none(),
            "never probed"
        );
    }

    #[test]
    fn provider_choice_prefers_others_then_lowest_id() {
        let mut ctx = cloudy_model::record::Origin {
            node: "node".into(),
            node_id: "0".repeat(32),
            ip: "192.0.2.1".parse().unwrap(),
            vpn: "10.99.0.1".parse().unwrap(),
            microcloud: "community".into(),
        };
        let mk = |c: char, ctx: &mut cloudy_model::record::Origin| {
            ctx.node_id = c.to_string().repeat(32);
            ctx.node = format!("n{c}");
            ctx.record("syncthing", 22000, "")
        };
        let cat = vec![mk('c', &mut ctx), mk('a', &mut ctx), mk('b', &mut ctx)];
        let me = "a".repeat(32);
        let none = crate::probe::Scores::default();
        assert_eq!(
            choose_provider("syncthing", &cat, &me, &none, &Ratings::default())
                .unwrap()
                .node,
            "nb"
        );
        assert_eq!(
            choose_provider("syncthing", &cat[1..2], &me, &none, &Ratings::default())
                .unwrap()
                .node,
            "na",
            "ourselves if nobody else"
        );
        assert!(
            choose_provider("tahoe-introducer", &cat, &me, &none, &Ratings::default()).is_none()
        );
        // Once probed, the best score wins over the lowest id.
        let mut scored = crate::probe::Scores::default();
        let probe = |r: &Record, score: u8| crate::probe::Probe {
            record: r.clone(),
            at: 1,
            reachable: true,
            rtt_ms: Some(1.0),
            connected: 5,
            samples: 5,
            check: crate::probe::Check::default(),
            availability: 1.0,
            history: 1,
            score,
        };
        scored.merge(None, vec![probe(&cat[0], 90), probe(&cat[2], 40)], 1);
        assert_eq!(
            choose_provider("syncthing", &cat, &me, &scored, &Ratings::default())
                .unwrap()
                .node,
            "nc"
        );
        assert_eq!(find_provider("syncthing", &cat, "nc").unwrap().node, "nc");
        assert_eq!(
            find_provider("syncthing", &cat, "bbbbbbbb").unwrap().node,
            "nb"
        );
    }

    #[test]
    fn a_named_provider_keeps_its_port() {
        let a = record('b', "syncthing", 22000);
        let b = record('b', "syncthing", 22001);
        let all = vec![a, b.clone()];
        let me = "c".repeat(32);
        let p = lookup(
            "syncthing",
            Some("n1:22001"),
            &all,
            &Scores::default(),
            &Ratings::default(),
            &me,
        )
        .unwrap();
        assert_eq!(
            p.ranked.record, b,
            "the port the user chose, not the first of the node"
        );
        assert_eq!(p.basis, Basis::Named);
        assert!(p.note().is_none());
    }

    #[test]
    fn without_a_scan_the_lowest_id_is_chosen_and_said() {
        let a = record('a', "syncthing", 22000);
        let b = record('b', "syncthing", 22000);
        let all = vec![b, a.clone()];
        let p = lookup(
            "syncthing",
            None,
            &all,
            &Scores::default(),
            &Ratings::default(),
            &"c".repeat(32),
        )
        .unwrap();
        assert_eq!(p.ranked.record, a);
        assert!(p.note().unwrap().contains("scan first"));
        let own = lookup(
            "syncthing",
            None,
            &all[1..],
            &Scores::default(),
            &Ratings::default(),
            &"a".repeat(32),
        );
        assert!(matches!(own, Err(LookupError::Itself { .. })));
        assert!(matches!(
            lookup(
                "web",
                None,
                &all,
                &Scores::default(),
                &Ratings::default(),
                "x"
            ),
            Err(LookupError::None { .. })
        ));
    }

    /// Ratings by `n` nodes of `provider`'s syncthing, all `stars`.
    fn rated_by(n: usize, provider: &Record, stars: u8) -> Ratings {
        use crate::mesh::members::tests::{key_of, member};
        let mut rs = Ratings::default();
        for c in ['d', 'e', 'f', '9'].into_iter().take(n) {
            let mut own = Ratings::default();
            let r = own
                .rate(
                    &key_of(c),
                    &c.to_string().repeat(32),
                    &provider.node_id,
                    "syncthing",
                    stars,
                    "",
                    1,
                )
                .unwrap();
            rs.take(&member(c, "rater"), vec![r]);
        }
        rs
    }

    /// Close technical scores (80 vs 78): three 5-star ratings of the second and one-star
    /// ones of the first turn the choice; with two raters, the probe alone decides.
    #[test]
    fn ratings_turn_a_close_choice_only_from_three_raters() {
        let a = record('a', "syncthing", 22000);
        let b = record('b', "syncthing", 22000);
        let mut s = Scores::default();
        s.merge(None, vec![probed(&a, 80, 1.0), probed(&b, 78, 1.0)], 1);
        let all = vec![a.clone(), b.clone()];
        let me = "c".repeat(32);
        let none = Ratings::default();
        assert_eq!(choose("syncthing", &all, &s, &none, &me).unwrap().record, a);

        let mut three = rated_by(3, &b, 5);
        for (k, v) in rated_by(3, &a, 1).by {
            three.by.insert(k, v);
        }
        let best = choose("syncthing", &all, &s, &three, &me).unwrap();
        assert_eq!(best.record, b);
        // 0.8 * 78 + 0.2 * 100; both parts shown.
        assert_eq!(best.blended, Some(0.8 * 78.0 + 20.0));
        assert_eq!(best.score(), Some(78));
        assert_eq!(best.rating.as_ref().unwrap().count, 3);
        assert!(
            why(&best).contains("technical 78, rated 5.0/5 by 3 nodes"),
            "{}",
            why(&best)
        );
        let p = lookup("syncthing", None, &all, &s, &three, &me).unwrap();
        assert_eq!(p.ranked.record, b, "join uses them too");

        let two = rated_by(2, &b, 5);
        let best = choose("syncthing", &all, &s, &two, &me).unwrap();
        assert_eq!(best.record, a, "two raters do not count");
        assert_eq!(best.blended, Some(80.0));
    }

    /// Far apart technically (90 vs 40), even unanimous ratings do not turn the choice.
    #[test]
    fn ratings_do_not_outweigh_a_clear_technical_difference() {
        let a = record('a', "syncthing", 22000);
        let b = record('b', "syncthing", 22000);
        let mut s = Scores::default();
        s.merge(None, vec![probed(&a, 90, 1.0), probed(&b, 40, 1.0)], 1);
        let mut rs = rated_by(3, &b, 5);
        for (k, v) in rated_by(3, &a, 1).by {
            rs.by.insert(k, v);
        }
        let all = vec![a.clone(), b];
        assert_eq!(
            choose("syncthing", &all, &s, &rs, &"c".repeat(32))
                .unwrap()
                .record,
            a
        );
    }
}
