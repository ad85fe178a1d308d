//! User ratings of providers: the ones this node's users gave (signed by our node key) and the
//! ones other members' users gave (fetched from each member over the exchange port, each
//! checked against that member's pinned node key). One rating counts per (rater, provider,
//! kind); a higher `seq` from the rater replaces a lower one. A rater that leaves the member
//! list takes its ratings with it. Kept in `/var/lib/cloudy/ratings.json` (0600).
//!
//! `select` weighs them in: see `blend`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use crate::catalog::publish::Sharing;
use crate::mesh::members::Member;
use crate::os::identity::{self, NodeKey};
use crate::os::system::System;
use cloudy_model::rating::{check_comment, check_stars, Rating, RatingError, MAX_PER_RATER};

pub const RATINGS_FILE: &str = "/var/lib/cloudy/ratings.json";
/// The probe's share of a provider's score once enough nodes rated it.
pub const TECHNICAL_WEIGHT: f64 = 0.8;
/// The users' share (their mean stars, 1..5 mapped to 0..100).
pub const RATING_WEIGHT: f64 = 0.2;
/// Ratings count only once this many nodes rated a provider's kind: one or two users' taste
/// must not move everyone's choice.
pub const MIN_RATERS: usize = 3;
/// How often members' ratings are fetched.
pub const POLL: Duration = Duration::from_secs(3);
/// Members asked per round; a larger community is asked in turns, the next window each round
/// (so with 1024 members each is asked every 16 rounds, 48 s).
const MAX_ASKED: usize = 64;

/// What the users say of one provider's kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    /// Mean stars, 1..=5.
    pub mean: f64,
    /// Nodes that rated it.
    pub count: usize,
}

impl Aggregate {
    /// Whether it weighs in the score (`MIN_RATERS`).
    pub fn counts(&self) -> bool {
        self.count >= MIN_RATERS
    }
}

/// The score `select` ranks by: the probe's technical score alone, or, once at least
/// `MIN_RATERS` nodes rated the provider, `TECHNICAL_WEIGHT * technical + RATING_WEIGHT *
/// rating` with the mean stars mapped to 0..100.
pub fn blend(technical: u8, rating: Option<&Aggregate>) -> f64 {
    match rating.filter(|a| a.counts()) {
        Some(a) => {
            TECHNICAL_WEIGHT * f64::from(technical) + RATING_WEIGHT * Rating::as_score(a.mean)
        }
        None => f64::from(technical),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RatingsError {
    #[error("{0}")]
    Rating(#[from] RatingError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is damaged ({reason}); move it away to start with no ratings")]
    Damaged { path: String, reason: String },
    #[error("this node already holds {MAX_PER_RATER} ratings of its own")]
    Full,
}

type Key = (String, String, String);

/// The ratings this node holds, one per (rater, provider, kind).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ratings {
    pub(crate) by: BTreeMap<Key, Rating>,
}

/// The file's form.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    v: u32,
    ratings: Vec<Rating>,
}

fn key(r: &Rating) -> Key {
    (r.rater.clone(), r.provider.clone(), r.kind.clone())
}

/// A rating as good as its signature by `signkey` (the rater's pinned node key).
pub fn verified(r: &Rating, signkey: &str) -> bool {
    r.check().is_ok() && identity::signature_ok(signkey, &r.signed_bytes(), &r.sig)
}

/// What `take` did with a member's list.
#[derive(Debug, Default, PartialEq)]
pub struct Taken {
    pub changed: bool,
    pub refused: Vec<String>,
}

impl Ratings {
    pub fn all(&self) -> impl Iterator<Item = &Rating> {
        self.by.values()
    }

    pub fn len(&self) -> usize {
        self.by.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by.is_empty()
    }

    /// The ratings `rater` gave: what we serve to members when `rater` is us.
    pub fn by_rater(&self, rater: &str) -> Vec<Rating> {
        self.by
            .values()
            .filter(|r| r.rater == rater)
            .cloned()
            .collect()
    }

    /// Our user's rating of `provider`'s `kind`, signed by our node key; replaces our earlier
    /// one. `now_ms` orders it after every earlier one even if the clock went back.
    #[allow(clippy::too_many_arguments)]
    pub fn rate(
        &mut self,
        node: &NodeKey,
        me: &str,
        provider: &str,
        kind: &str,
        stars: u8,
        comment: &str,
        now_ms: u64,
    ) -> Result<Rating, RatingsError> {
        check_stars(stars)?;
        check_comment(comment)?;
        let k = (me.to_string(), provider.to_string(), kind.to_string());
        let mine: Vec<&Rating> = self.by.values().filter(|r| r.rater == me).collect();
        if mine.len() >= MAX_PER_RATER && !self.by.contains_key(&k) {
            return Err(RatingsError::Full);
        }
        let last = mine.iter().map(|r| r.seq).max().unwrap_or(0);
        let mut r = Rating {
            rater: me.into(),
            provider: provider.into(),
            kind: kind.into(),
            stars,
            comment: comment.into(),
            seq: now_ms.max(last + 1),
            sig: String::new(),
        };
        r.sig = node.sign_hex(&r.signed_bytes());
        // The form is checked after signing (the signature is part of it): a rating of
        // ourselves, a bad kind or node id stop here.
        r.check()?;
        self.by.insert(k, r.clone());
        Ok(r)
    }

    /// A member's list of its own ratings, as it answered our fetch: each must be `from`'s
    /// (no rating in another node's name) and signed by its pinned node key. The list is the
    /// member's word on its ratings: one it no longer lists is withdrawn, and a rating with a
    /// lower `seq` than the one we hold does not replace it.
    pub fn take(&mut self, from: &Member, list: Vec<Rating>) -> Taken {
        let mut taken = Taken::default();
        let mut fresh: BTreeMap<Key, Rating> = BTreeMap::new();
        for r in list.into_iter().take(MAX_PER_RATER) {
            // The form first: nothing of a rating out of form reaches the log.
            if let Err(e) = r.check() {
                taken
                    .refused
                    .push(format!("a rating from {} out of form: {e}", from.name));
                continue;
            }
            if r.rater != from.id {
                taken.refused.push(format!(
                    "a rating in the name of {} sent by {}",
                    r.rater, from.name
                ));
                continue;
            }
            if from.signkey.is_empty() || !verified(&r, &from.signkey) {
                taken
                    .refused
                    .push(format!("a rating from {} with a bad signature", from.name));
                continue;
            }
            let k = key(&r);
            let keep = match self.by.get(&k) {
                Some(held) if held.seq > r.seq => held.clone(),
                _ => r,
            };
            if fresh.get(&k).is_none_or(|f| f.seq < keep.seq) {
                fresh.insert(k, keep);
            }
        }
        let before = self.by_rater(&from.id);
        self.by.retain(|_, r| r.rater != from.id);
        self.by.extend(fresh);
        taken.changed = before != self.by_rater(&from.id);
        taken
    }

    /// Drops the ratings of raters for whom `is_member` is false (left the member list).
    pub fn lapse(&mut self, is_member: impl Fn(&str) -> bool) -> bool {
        let n = self.by.len();
        self.by.retain(|(rater, _, _), _| is_member(rater));
        n != self.by.len()
    }

    /// What users say of `provider`'s (a node id) `kind`.
    pub fn of(&self, provider: &str, kind: &str) -> Option<Aggregate> {
        let stars: Vec<u8> = self
            .by
            .values()
            .filter(|r| r.provider == provider && r.kind == kind)
            .map(|r| r.stars)
            .collect();
        (!stars.is_empty()).then(|| Aggregate {
            mean: stars.iter().map(|s| f64::from(*s)).sum::<f64>() / stars.len() as f64,
            count: stars.len(),
        })
    }

    /// The comments on `provider`'s `kind`, newest first.
    pub fn comments(&self, provider: &str, kind: &str) -> Vec<Rating> {
        let mut v: Vec<Rating> = self
            .by
            .values()
            .filter(|r| r.provider == provider && r.kind == kind && !r.comment.is_empty())
            .cloned()
            .collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.seq));
        v
    }

    /// The file's content: a missing file is no ratings; a damaged one, or one holding a
    /// rating out of form, is an error that names the file.
    pub fn load(sys: &System) -> Result<Ratings, RatingsError> {
        let path = sys.path(RATINGS_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ratings::default()),
            Err(source) => {
                return Err(RatingsError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        let damaged = |reason: String| RatingsError::Damaged {
            path: path.display().to_string(),
            reason,
        };
        let f: File = serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
        let mut by = BTreeMap::new();
        for r in f.ratings {
            r.check().map_err(|e| damaged(e.to_string()))?;
            by.insert(key(&r), r);
        }
        Ok(Ratings { by })
    }

    /// Written whole, atomically, 0600.
    pub fn save(&self, sys: &System) -> Result<(), RatingsError> {
        let f = File {
            v: 1,
            ratings: self.by.values().cloned().collect(),
        };
        let text = serde_json::to_vec(&f).expect("ratings serialise");
        sys.write_atomic(RATINGS_FILE, &text, 0o600)
            .map_err(|source| RatingsError::Io {
                path: sys.path(RATINGS_FILE).display().to_string(),
                source,
            })
    }
}

/// The agent's ratings: ours and members', with what signs ours.
pub struct Book {
    pub sys: System,
    pub me: String,
    pub node: NodeKey,
    pub ratings: Mutex<Ratings>,
    /// Rounds of `poll` so far: where the next window of members starts.
    round: std::sync::atomic::AtomicUsize,
}

impl Book {
    /// Loads the file; a damaged one is logged and left for the operator (not overwritten
    /// until a rating changes), and the node runs on without ratings.
    pub fn open(sys: System, me: String, node: NodeKey) -> Book {
        let ratings = Ratings::load(&sys).unwrap_or_else(|e| {
            tracing::error!("ratings: {e}");
            Ratings::default()
        });
        Book {
            sys,
            me,
            node,
            ratings: Mutex::new(ratings),
            round: Default::default(),
        }
    }

    /// Our own ratings, JSON: the exchange server's answer to a ratings fetch.
    pub fn ours_json(&self) -> String {
        let ours = self.ratings.lock().unwrap().by_rater(&self.me);
        serde_json::to_string(&ours).expect("ratings serialise")
    }

    /// Our user rates `provider` (a node id): signed, kept, saved.
    pub fn rate(
        &self,
        provider: &str,
        kind: &str,
        stars: u8,
        comment: &str,
    ) -> Result<Rating, RatingsError> {
        let mut rs = self.ratings.lock().unwrap();
        let r = rs.rate(
            &self.node,
            &self.me,
            provider,
            kind,
            stars,
            comment,
            crate::catalog::now_ms(),
        )?;
        rs.save(&self.sys)?;
        Ok(r)
    }

    pub fn snapshot(&self) -> Ratings {
        self.ratings.lock().unwrap().clone()
    }

    /// One round: every member's ratings fetched (at most `MAX_ASKED`), checked and taken;
    /// ratings of raters no longer members lapse; saved if anything changed.
    pub async fn poll(&self, share: &Sharing) {
        let (targets, members): (
            Vec<(Member, SocketAddr)>,
            std::collections::BTreeSet<String>,
        ) = {
            let ms = share.members.lock().unwrap();
            let others: Vec<&Member> = ms.others().collect();
            let n = others.len().max(1);
            let round = self
                .round
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let start = round.wrapping_mul(MAX_ASKED) % n;
            (
                others
                    .iter()
                    .cycle()
                    .skip(start)
                    .take(MAX_ASKED.min(others.len()))
                    .filter(|m| !m.address.is_unspecified())
                    .map(|m| ((*m).clone(), SocketAddr::new(m.address, m.exchange_port)))
                    .collect(),
                ms.members.keys().cloned().collect(),
            )
        };
        let got = futures_util::future::join_all(targets.into_iter().map(|(m, addr)| {
            let key = share.key.clone();
            async move {
                let r = crate::mesh::exchange::fetch_ratings(addr, &key, &m).await;
                (m, r)
            }
        }))
        .await;
        let mut rs = self.ratings.lock().unwrap();
        let mut changed = false;
        for (m, r) in got {
            match r {
                Ok(list) => {
                    let t = rs.take(&m, list);
                    for why in &t.refused {
                        tracing::warn!("ratings: refused {why}");
                    }
                    changed |= t.changed;
                }
                Err(e) => tracing::debug!("ratings of {}: {e}", m.name),
            }
        }
        let me = self.me.clone();
        changed |= rs.lapse(|rater| rater == me || members.contains(rater));
        if changed {
            if let Err(e) = rs.save(&self.sys) {
                tracing::warn!("ratings: {e}");
            }
        }
    }

    /// Polls members every `POLL` until the agent stops.
    pub async fn follow(self: std::sync::Arc<Self>, share: std::sync::Arc<Sharing>) {
        loop {
            self.poll(&share).await;
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::members::tests::{key_of, member};

    fn id(c: char) -> String {
        c.to_string().repeat(32)
    }

    /// A rating by node `rater`, signed with its key.
    fn signed(rater: char, provider: char, stars: u8, seq: u64) -> Rating {
        let mut rs = Ratings::default();
        rs.rate(
            &key_of(rater),
            &id(rater),
            &id(provider),
            "syncthing",
            stars,
            "",
            seq,
        )
        .unwrap()
    }

    #[test]
    fn a_members_signed_ratings_are_taken_and_a_newer_one_replaces() {
        let mut rs = Ratings::default();
        let a = member('a', "alice");
        let t = rs.take(&a, vec![signed('a', 'b', 2, 10)]);
        assert!(t.changed && t.refused.is_empty(), "{t:?}");
        assert_eq!(rs.of(&id('b'), "syncthing").unwrap().mean, 2.0);
        rs.take(&a, vec![signed('a', 'b', 5, 20)]);
        let agg = rs.of(&id('b'), "syncthing").unwrap();
        assert_eq!((agg.mean, agg.count), (5.0, 1), "one per rater, the newer");
        // An older one (a replay of A's earlier word) does not go back.
        rs.take(&a, vec![signed('a', 'b', 1, 15)]);
        assert_eq!(rs.of(&id('b'), "syncthing").unwrap().mean, 5.0);
    }

    /// A forged signature: the stars changed after signing, or signed by another key.
    #[test]
    fn a_forged_signature_is_refused() {
        let mut rs = Ratings::default();
        let mut r = signed('a', 'b', 1, 10);
        r.stars = 5;
        let t = rs.take(&member('a', "alice"), vec![r]);
        assert_eq!(t.refused.len(), 1, "{t:?}");
        let mut r = signed('c', 'b', 5, 10);
        r.rater = id('a');
        let t = rs.take(&member('a', "alice"), vec![r]);
        assert_eq!(t.refused.len(), 1, "{t:?}");
        assert!(rs.is_empty());
    }

    /// Member C sends a rating signed by C but in A's name (or A's own, replayed by C): refused,
    /// a member speaks only for itself.
    #[test]
    fn a_rating_in_another_nodes_name_is_refused() {
        let mut rs = Ratings::default();
        let t = rs.take(&member('c', "carol"), vec![signed('a', 'b', 5, 10)]);
        assert!(t.refused[0].contains("in the name of"), "{t:?}");
        assert!(rs.is_empty());
    }

    #[test]
    fn a_node_cannot_rate_itself() {
        let mut rs = Ratings::default();
        let e = rs
            .rate(&key_of('a'), &id('a'), &id('a'), "syncthing", 5, "", 1)
            .unwrap_err();
        assert!(e.to_string().contains("itself"), "{e}");
        // Nor can a member slip one in: A's own rating of A, signed by A.
        let mut r = signed('a', 'b', 5, 1);
        r.provider = id('a');
        r.sig = key_of('a').sign_hex(&r.signed_bytes());
        let t = rs.take(&member('a', "alice"), vec![r]);
        assert_eq!(t.refused.len(), 1);
        assert!(rs.is_empty());
    }

    #[test]
    fn hostile_comments_are_refused_when_rating() {
        let mut rs = Ratings::default();
        for c in ["x".repeat(10 * 1024), "a\nb".into(), "\u{1b}[2J".into()] {
            assert!(rs
                .rate(&key_of('a'), &id('a'), &id('b'), "syncthing", 3, &c, 1)
                .is_err());
        }
        // Nor from a member: signed by A, but out of form (10 KiB, a control character).
        for c in ["x".repeat(10 * 1024), "a\u{1b}b".into()] {
            let mut r = signed('a', 'b', 3, 1);
            r.comment = c;
            r.sig = key_of('a').sign_hex(&r.signed_bytes());
            let t = rs.take(&member('a', "alice"), vec![r]);
            assert!(t.refused[0].contains("out of form"), "{t:?}");
            assert!(!t.refused[0].contains('\u{1b}'), "{t:?}");
        }
        assert!(rs.is_empty());
        // Markup is kept as text (the dashboard escapes it).
        rs.rate(
            &key_of('a'),
            &id('a'),
            &id('b'),
            "syncthing",
            3,
            "<script>x</script>",
            1,
        )
        .unwrap();
    }

    /// 1000 ratings from one node: at most MAX_PER_RATER are held, whatever the list's size
    /// (the wire form refuses such a list whole, `cloudy_model::rating::parse_list`).
    #[test]
    fn a_thousand_ratings_from_one_node_are_bounded() {
        let k = key_of('a');
        let list: Vec<Rating> = (0..1000u32)
            .map(|i| {
                let mut r = Rating {
                    rater: id('a'),
                    provider: format!("{i:032x}"),
                    kind: "syncthing".into(),
                    stars: 5,
                    comment: String::new(),
                    seq: 1,
                    sig: String::new(),
                };
                r.sig = k.sign_hex(&r.signed_bytes());
                r
            })
            .collect();
        let mut rs = Ratings::default();
        rs.take(&member('a', "alice"), list.clone());
        assert_eq!(rs.len(), MAX_PER_RATER);
        let bytes = serde_json::to_vec(&list).unwrap();
        assert!(cloudy_model::rating::parse_list(&bytes).is_err());
        // Our own users too.
        let mut own = Ratings::default();
        for i in 0..MAX_PER_RATER as u32 {
            own.rate(&k, &id('a'), &format!("{i:032x}"), "syncthing", 4, "", 1)
                .unwrap();
        }
        assert!(matches!(
            own.rate(&k, &id('a'), &id('b'), "syncthing", 4, "", 1),
            Err(RatingsError::Full)
        ));
    }

    #[test]
    fn ratings_of_former_members_lapse() {
        let mut rs = Ratings::default();
        rs.take(&member('a', "alice"), vec![signed('a', 'b', 5, 1)]);
        rs.take(&member('c', "carol"), vec![signed('c', 'b', 1, 1)]);
        assert!(rs.lapse(|r| r == id('a')));
        assert_eq!(rs.of(&id('b'), "syncthing").unwrap().count, 1);
    }

    #[test]
    fn the_file_is_0600_and_a_damaged_one_is_a_clear_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        let mut rs = Ratings::default();
        rs.take(&member('a', "alice"), vec![signed('a', 'b', 4, 1)]);
        rs.save(&sys).unwrap();
        let meta = std::fs::metadata(sys.path(RATINGS_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(Ratings::load(&sys).unwrap(), rs);
        std::fs::write(sys.path(RATINGS_FILE), b"{\"v\":1,\"ratings\":[{").unwrap();
        let e = Ratings::load(&sys).unwrap_err().to_string();
        assert!(e.contains("ratings.json is damaged"), "{e}");
    }

    #[test]
    fn the_weights() {
        let three = Aggregate {
            mean: 5.0,
            count: 3,
        };
        let two = Aggregate {
            mean: 5.0,
            count: 2,
        };
        assert_eq!(blend(50, Some(&three)), 0.8 * 50.0 + 0.2 * 100.0);
        assert_eq!(blend(50, Some(&two)), 50.0);
        assert_eq!(blend(50, None), 50.0);
    }
}
