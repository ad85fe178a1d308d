//! The peer side: follow one provider of a stream, cache its new segments, serve them on, and
//! move to another provider by itself when this one fails or stalls.
//!
//! Choosing: providers of the stream from the catalog, never ourselves nor one whose chain
//! (`upstream`) passes through us, which is what keeps relays from forming loops; a provider
//! named by `join` (or the seed) first; otherwise one of the nearest (at most 2 hops more than
//! the nearest), spread by a hash of both node ids so that peers do not all load the source.
//! A provider that failed is avoided for a while.
//!
//! Switching: a provider that answers nothing for `FAIL_AFTER`, or whose playlist gains no
//! segment for `STALL_AFTER`, is dropped. The next one is asked for the segments after the
//! last one we hold, so where it still has them the sequence continues without a gap.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::http::{fetch, MAX_SEGMENT};
use super::ingest;
use super::playlist::{Playlist, MAX_PLAYLIST};
use super::stream::{playlist_path, read_provider, short_id, Stream, Upstream, WINDOW};
use crate::catalog::Record;
use crate::os::system::System;
use cloudy_model::kinds::MAX_HOPS;

const POLL: Duration = Duration::from_millis(400);
/// No answer from the provider for this long: switch.
pub const FAIL_AFTER: Duration = Duration::from_secs(3);
/// The provider's playlist has not grown for this long: switch.
pub const STALL_AFTER: Duration = Duration::from_secs(5);
/// How long a provider that failed us is not chosen again.
const AVOID: Duration = Duration::from_secs(30);
const PLAYLIST_TIMEOUT: Duration = Duration::from_secs(2);
const SEGMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// On joining, start this many segments back from the newest: enough for a player to start.
const START_SEGMENTS: usize = 3;
/// Providers within this many hops of the nearest are all fair choices.
const HOP_SLACK: u32 = 2;

/// A provider of a stream, from its (already validated) record.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    pub node: String,
    pub node_id: String,
    pub addr: SocketAddr,
    pub stream_id: String,
    pub playlist: String,
    pub origin: String,
    pub hops: u32,
    pub upstream: Vec<String>,
}

impl Provider {
    pub fn from_record(r: &Record) -> Option<Provider> {
        if r.kind != "streaming" {
            return None;
        }
        let f = &r.fields;
        let stream_id = f.get("stream_id")?.clone();
        let playlist = f.get("playlist")?.clone();
        // The record's syntax was checked; the path must also be this stream's.
        if playlist != playlist_path(&stream_id) {
            return None;
        }
        Some(Provider {
            node: r.node.clone(),
            node_id: r.node_id.clone(),
            addr: SocketAddr::new(r.ip, r.port),
            stream_id,
            playlist,
            origin: f.get("origin")?.clone(),
            hops: f.get("hops")?.parse().ok()?,
            upstream: f
                .get("upstream")
                .map(|u| u.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
        })
    }

    /// A provider we may fetch from: not us, not downstream of us, not too far.
    pub fn eligible(&self, me: &str, stream: Option<&str>) -> bool {
        self.node_id != me
            && !self.upstream.iter().any(|u| u == short_id(me))
            && self.hops + 1 < MAX_HOPS
            && stream.is_none_or(|s| s == self.stream_id)
    }

    fn named(&self, name: &str) -> bool {
        self.node == name || self.node_id == name
    }
}

fn spread(me: &str, them: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("{me}|{them}"));
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// The provider to follow now, if any.
pub fn choose(
    providers: &[Provider],
    me: &str,
    stream: Option<&str>,
    prefer: Option<&str>,
    avoid: &HashMap<String, Instant>,
) -> Option<Provider> {
    let ok: Vec<&Provider> = providers
        .iter()
        .filter(|p| p.eligible(me, stream) && !avoid.contains_key(&p.node_id))
        .collect();
    if let Some(p) = prefer.and_then(|n| ok.iter().find(|p| p.named(n))) {
        return Some((*p).clone());
    }
    // Several streams and none asked for: the one with the smallest id, for stability.
    let stream = stream
        .map(str::to_string)
        .or_else(|| ok.iter().map(|p| p.stream_id.clone()).min())?;
    let ok: Vec<&Provider> = ok.into_iter().filter(|p| p.stream_id == stream).collect();
    let nearest = ok.iter().map(|p| p.hops).min()?;
    ok.into_iter()
        .filter(|p| p.hops <= nearest + HOP_SLACK)
        .min_by_key(|p| spread(me, &p.node_id))
        .cloned()
}

/// Where a peer finds providers: the agent's catalog.
pub type Catalog = Arc<dyn Fn() -> Vec<Record> + Send + Sync>;

pub struct Relay {
    pub stream: Arc<Stream>,
    pub sys: System,
    /// The stream to relay (seed `streaming.id`), or any.
    pub want: Option<String>,
    /// Preferred provider given on the command line; `PROVIDER_FILE` overrides it.
    pub prefer: Option<String>,
    pub catalog: Catalog,
}

enum Left {
    /// Failed or stalled: avoid it for a while.
    Failed,
    /// Someone asked for another provider.
    Replaced,
}

impl Relay {
    fn prefer(&self) -> Option<String> {
        read_provider(&self.sys).or_else(|| self.prefer.clone())
    }

    /// Follows providers forever; aborted to stop.
    pub async fn run(self) {
        if let Err(e) = ingest::prepare_dir(&self.stream.seg_dir, None) {
            self.error(format!("{}: {e}", self.stream.seg_dir.display()));
        }
        let mut avoid: HashMap<String, Instant> = HashMap::new();
        let mut waiting_since = Instant::now();
        loop {
            let now = Instant::now();
            avoid.retain(|_, until| *until > now);
            let providers: Vec<Provider> = (self.catalog)()
                .iter()
                .filter_map(Provider::from_record)
                .collect();
            let stream = self
                .stream
                .state
                .lock()
                .unwrap()
                .id
                .clone()
                .or_else(|| self.want.clone());
            let me = self.stream.node_id.clone();
            let prefer = self.prefer();
            let pick = |avoid: &HashMap<String, Instant>| {
                choose(&providers, &me, stream.as_deref(), prefer.as_deref(), avoid)
            };
            // Every provider failed lately (the only one restarted, say): try them again,
            // a second apart, rather than wait out the avoidance.
            let again = pick(&avoid).is_none() && !avoid.is_empty();
            let chosen = pick(&avoid).or_else(|| pick(&HashMap::new()));
            if again && chosen.is_some() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let Some(p) = chosen else {
                if waiting_since.elapsed() > Duration::from_secs(10) {
                    self.error(format!(
                        "no provider of {} in the catalog",
                        stream.as_deref().unwrap_or("any stream")
                    ));
                    waiting_since = Instant::now();
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            waiting_since = Instant::now();
            match self.follow(&p, &avoid).await {
                Left::Failed => {
                    avoid.insert(p.node_id.clone(), Instant::now() + AVOID);
                }
                Left::Replaced => {}
            }
        }
    }

    fn error(&self, e: String) {
        tracing::warn!("streaming: {e}");
        self.stream.state.lock().unwrap().last_error = Some(e);
    }

    async fn follow(&self, p: &Provider, avoid: &HashMap<String, Instant>) -> Left {
        {
            let mut st = self.stream.state.lock().unwrap();
            if st.provider.as_ref().is_some_and(|u| u.node_id != p.node_id) {
                self.stream
                    .counters
                    .switches
                    .fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(
                provider = %p.node,
                addr = %p.addr,
                hops = p.hops,
                "streaming: relaying {} from {}",
                p.stream_id,
                p.node
            );
            st.provider = Some(Upstream {
                node: p.node.clone(),
                node_id: p.node_id.clone(),
                addr: p.addr,
                hops: p.hops,
            });
            st.id = Some(p.stream_id.clone());
            st.origin = Some(p.origin.clone());
            st.hops = p.hops + 1;
            st.upstream = std::iter::once(short_id(&p.node_id).to_string())
                .chain(p.upstream.iter().cloned())
                .collect();
        }
        let mut answered = Instant::now();
        let mut grew = Instant::now();
        loop {
            match self.poll(p).await {
                Ok(new) => {
                    answered = Instant::now();
                    if new > 0 {
                        grew = Instant::now();
                    }
                }
                Err(Poll::Refused(e)) => {
                    self.error(format!("{}: {e}; not using it again for {AVOID:?}", p.node));
                    return Left::Failed;
                }
                Err(Poll::Failed(e)) => {
                    tracing::debug!("streaming: {}: {e}", p.node);
                    self.stream.state.lock().unwrap().last_error = Some(format!("{}: {e}", p.node));
                }
            }
            if answered.elapsed() > FAIL_AFTER || grew.elapsed() > STALL_AFTER {
                self.error(format!(
                    "provider {} ({}) {}; switching",
                    p.node,
                    p.addr,
                    if answered.elapsed() > FAIL_AFTER {
                        "stopped answering"
                    } else {
                        "stalled"
                    }
                ));
                return Left::Failed;
            }
            if let Some(name) = self.prefer() {
                if !p.named(&name) {
                    let listed = (self.catalog)()
                        .iter()
                        .filter_map(Provider::from_record)
                        .any(|q| {
                            q.named(&name)
                                && !avoid.contains_key(&q.node_id)
                                && q.eligible(&self.stream.node_id, Some(&p.stream_id))
                        });
                    if listed {
                        return Left::Replaced;
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// One round: the provider's playlist, then every segment of it newer than ours.
    async fn poll(&self, p: &Provider) -> Result<usize, Poll> {
        let body = fetch(p.addr, &p.playlist, MAX_PLAYLIST, PLAYLIST_TIMEOUT)
            .await
            .map_err(|e| Poll::Failed(e.to_string()))?;
        let pl = Playlist::parse(&body).map_err(|e| Poll::Refused(e.to_string()))?;
        let mut last = self.stream.state.lock().unwrap().playlist.last_seq();
        if renumbered(last, pl.last_seq()) {
            // The source restarted with its clock behind (a Pi without RTC before NTP): its
            // numbers start lower. Start over from its stream, or we would wait forever.
            tracing::warn!(
                "streaming: {} renumbered the stream ({:?} after our {:?}); starting over",
                p.node,
                pl.last_seq(),
                last
            );
            let mut st = self.stream.state.lock().unwrap();
            st.playlist.segments.clear();
            drop(st);
            ingest::drop_older(&self.stream.seg_dir, u64::MAX);
            last = None;
        }
        let new: Vec<_> = match last {
            Some(l) => pl.segments.into_iter().filter(|g| g.seq > l).collect(),
            None => {
                let skip = pl.segments.len().saturating_sub(START_SEGMENTS);
                pl.segments.into_iter().skip(skip).collect()
            }
        };
        let mut added = 0;
        for mut g in new {
            let path = format!("/stream/{}/{}", p.stream_id, g.name());
            let bytes = fetch(p.addr, &path, MAX_SEGMENT, SEGMENT_TIMEOUT)
                .await
                .map_err(|e| Poll::Failed(e.to_string()))?;
            // MPEG-TS: 188-byte packets, each starting with 0x47.
            if bytes.is_empty() || bytes.len() % 188 != 0 || bytes[0] != 0x47 {
                return Err(Poll::Refused(format!("{path} is not an MPEG-TS segment")));
            }
            let dir = &self.stream.seg_dir;
            let tmp = dir.join(format!(".{}.tmp", g.name()));
            std::fs::write(&tmp, &bytes)
                .and_then(|_| std::fs::rename(&tmp, dir.join(g.name())))
                .map_err(|e| Poll::Failed(format!("caching {}: {e}", g.name())))?;
            let c = &self.stream.counters;
            c.fetched_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            c.fetched_segments.fetch_add(1, Ordering::Relaxed);
            let mut st = self.stream.state.lock().unwrap();
            if let Some(l) = st.playlist.last_seq() {
                if g.seq != l + 1 {
                    // A hole (the new provider no longer had what followed): say so.
                    g.discontinuity = true;
                }
            }
            st.playlist.target_s = st.playlist.target_s.max(pl.target_s);
            st.playlist.segments.push(g);
            let excess = st.playlist.segments.len().saturating_sub(WINDOW);
            st.playlist.segments.drain(..excess);
            let first = st.playlist.segments[0].seq;
            st.advanced = Some(Instant::now());
            if st.first_segment_after.is_none() {
                st.first_segment_after = Some(self.stream.started.elapsed());
            }
            drop(st);
            ingest::drop_older(dir, first);
            added += 1;
        }
        Ok(added)
    }
}

/// The provider's newest segment is far behind ours: not lag (a provider is at most a window
/// behind), a new numbering.
pub fn renumbered(ours: Option<u64>, theirs: Option<u64>) -> bool {
    matches!((ours, theirs), (Some(o), Some(t)) if t.saturating_add(3 * WINDOW as u64) < o)
}

enum Poll {
    /// Could not reach it or it timed out: may come back.
    Failed(String),
    /// It answered something we refuse (a hostile or broken provider): leave it.
    Refused(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(id: char, hops: u32, upstream: &[char]) -> Provider {
        Provider {
            node: format!("n{id}"),
            node_id: std::iter::repeat_n(id, 32).collect(),
            addr: "10.0.0.1:8090".parse().unwrap(),
            stream_id: "film".into(),
            playlist: "/stream/film/index.m3u8".into(),
            origin: "a".repeat(32),
            hops,
            upstream: upstream
                .iter()
                .map(|c| std::iter::repeat_n(*c, 8).collect())
                .collect(),
        }
    }

    #[test]
    fn never_from_ourselves_or_downstream() {
        let me = "b".repeat(32);
        let ps = vec![
            provider('b', 1, &['a']),
            // c fetches through us: taking from it would make a loop.
            provider('c', 2, &['b', 'a']),
        ];
        assert_eq!(choose(&ps, &me, None, None, &HashMap::new()), None);
        assert_eq!(
            choose(&ps, &me, None, Some("nc"), &HashMap::new()),
            None,
            "not even when asked"
        );
        let mut ps = ps;
        ps.push(provider('a', 0, &[]));
        assert_eq!(
            choose(&ps, &me, None, None, &HashMap::new()).unwrap().node,
            "na"
        );
    }

    #[test]
    fn joined_provider_first_then_any_near_one() {
        let me = "e".repeat(32);
        let ps = vec![
            provider('a', 0, &[]),
            provider('c', 1, &['a']),
            provider('d', 5, &['x', 'y', 'z', 'w', 'a']),
        ];
        let none = HashMap::new();
        assert_eq!(
            choose(&ps, &me, None, Some("nc"), &none).unwrap().node,
            "nc"
        );
        assert_eq!(
            choose(&ps, &me, None, Some(&"d".repeat(32)), &none)
                .unwrap()
                .node,
            "nd"
        );
        let any = choose(&ps, &me, None, None, &none).unwrap();
        assert!(any.hops <= 2, "one of the nearest: {any:?}");
        // The joined one failed: another one, not nothing.
        let avoid = HashMap::from([("c".repeat(32), Instant::now() + AVOID)]);
        assert_eq!(
            choose(&ps, &me, None, Some("nc"), &avoid).unwrap().node,
            "na"
        );
        assert_eq!(choose(&ps, &me, Some("other"), None, &none), None);
        let mut far = provider('f', MAX_HOPS - 1, &[]);
        far.hops = MAX_HOPS - 1;
        assert!(!far.eligible(&me, None), "the chain would get too long");
    }

    #[test]
    fn a_lower_numbering_is_a_restart_not_lag() {
        assert!(!renumbered(None, Some(5)));
        assert!(!renumbered(Some(100), None));
        assert!(
            !renumbered(Some(100), Some(95)),
            "a provider a few segments behind"
        );
        assert!(!renumbered(Some(100), Some(120)));
        assert!(
            renumbered(Some(1_795_621_727), Some(86_400)),
            "a clock back in 1970"
        );
    }

    #[test]
    fn provider_from_record() {
        let mut r = crate::catalog::tests::record('a', "streaming", 8090);
        r.fields = [
            ("stream_id", "film"),
            ("playlist", "/stream/film/index.m3u8"),
            ("origin", &"a".repeat(32)),
            ("hops", "1"),
            ("upstream", "cccccccc"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        r.validate().unwrap();
        let p = Provider::from_record(&r).unwrap();
        assert_eq!(p.addr, "10.213.0.1:8090".parse().unwrap());
        assert_eq!(p.upstream, vec!["cccccccc"]);
        r.fields
            .insert("playlist".into(), "/stream/other/index.m3u8".into());
        assert_eq!(
            Provider::from_record(&r),
            None,
            "a playlist of another stream"
        );
    }
}
