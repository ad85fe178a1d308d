//! The quality probe: how good each provider in the catalog is *from this node*, per service
//! type. A provider is measured on TCP reachability and connect latency (several samples, the
//! median kept), on a check of its own protocol where the type has one (Tahoe: the web API and
//! the read rate of its answer; Syncthing: the start of its TLS handshake; streaming: the HLS
//! playlist, time to first segment, delivered bitrate and stalls), and on its availability over
//! the last 24 h. A check that does not apply to a record (no web port, no playlist) is left
//! out of the score rather than counted as a failure. The formula is `score` below and in the
//! README.
//!
//! Probes are bounded: at most `CONCURRENCY` providers at once, all reads of one scan sharing
//! `BANDWIDTH` bytes per second, at most `MAX_BODY` (a stream: `MAX_STREAM`) bytes read from
//! one provider.

pub mod checks;
pub mod community;

pub use checks::{Check, MAX_BODY, MAX_STREAM};
pub mod ratings;
pub mod select;

pub use crate::os::http::Rate;
use cloudy_model::summary::{Summary, MAX_SUMMARY};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::catalog::{now_ms, Record};
use crate::os::system::System;

/// Availability history, kept across reboots.
pub const HISTORY_FILE: &str = "/var/lib/cloudy/probe-history.json";
/// The last scan's results, for the CLI when the agent is not running.
pub const SCORES_FILE: &str = "/run/cloudy/scores.json";
/// TCP connects per provider; the median is kept.
pub const SAMPLES: usize = 5;
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// A whole service-level check (playlist and segments included).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(8);
pub const CONCURRENCY: usize = 16;
/// Bytes per second all reads of one scan share: a scan must not eat a rural uplink.
pub const BANDWIDTH: u64 = 2_000_000;
/// History is kept this long, at most `MAX_HISTORY` samples per provider and
/// `MAX_HISTORY_KEYS` providers.
pub const HISTORY_WINDOW_S: u64 = 24 * 3600;
pub const MAX_HISTORY: usize = 288;
pub const MAX_HISTORY_KEYS: usize = 2048;
/// Periodic scans: this often, give or take `JITTER` (so a microcloud booted at once does not
/// probe in lockstep); the first one this long after the agent starts.
pub const PERIOD: Duration = Duration::from_secs(15 * 60);
pub const JITTER: f64 = 0.2;
pub const FIRST_SCAN: Duration = Duration::from_secs(20);
/// Between full scans, providers new to the catalog are scored this often.
pub const NEW_PROVIDERS: Duration = Duration::from_secs(60);

/// One provider as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub record: Record,
    /// When this probe ran, unix milliseconds.
    pub at: u64,
    pub reachable: bool,
    /// Median TCP connect time of the samples that connected.
    pub rtt_ms: Option<f64>,
    pub connected: u32,
    pub samples: u32,
    pub check: Check,
    /// Share of probes in the last 24 h that reached it (this one included).
    pub availability: f64,
    pub history: u32,
    pub score: u8,
}

impl Probe {
    /// Key of a provider in histories and summaries.
    pub fn key(&self) -> String {
        history_key(&self.record)
    }
}

pub fn history_key(r: &Record) -> String {
    format!("{}|{}|{}", r.kind, r.node_id, r.port)
}

/// Results of the scans so far, a type at a time replaced by its newest scan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scores {
    /// When the last scan finished, unix milliseconds (0: never).
    pub scanned: u64,
    pub probes: Vec<Probe>,
}

impl Scores {
    /// Takes a scan's results; a scan of one type replaces only that type's.
    pub fn merge(&mut self, kind: Option<&str>, fresh: Vec<Probe>, at: u64) {
        self.probes
            .retain(|p| kind.is_some_and(|k| p.record.kind != k));
        self.probes.extend(fresh);
        self.probes.sort_by(|a, b| {
            (
                a.record.kind.as_str(),
                std::cmp::Reverse(a.score),
                &a.record.node,
            )
                .cmp(&(
                    b.record.kind.as_str(),
                    std::cmp::Reverse(b.score),
                    &b.record.node,
                ))
        });
        self.scanned = at;
    }

    pub fn of(&self, r: &Record) -> Option<&Probe> {
        let k = history_key(r);
        self.probes.iter().find(|p| p.key() == k)
    }
}

/// The score, 0-100 (README, "Quality of a provider"):
///
/// - unreachable now: 0;
/// - latency `l = 50 / (50 + rtt_ms)`: 1 at 0 ms, 0.5 at 50 ms, 0.2 at 200 ms;
/// - service `s`: the check failed 0; passed: 1, times for a measured rate
///   `0.5 + 0.5 * min(1, rate / 1 MB/s)`, for a stream `min(1, realtime / 2) / (1 + stalls)`;
///   no check for this record: `s = l`;
/// - availability `a`: share of the last 24 h's probes that reached it;
/// - `score = round(100 * (0.45 l + 0.35 s + 0.20 a))`.
pub fn score(reachable: bool, rtt_ms: Option<f64>, check: &Check, availability: f64) -> u8 {
    if !reachable {
        return 0;
    }
    let l = 50.0 / (50.0 + rtt_ms.unwrap_or(1000.0).max(0.0));
    let s = match check.ok {
        None => l,
        Some(false) => 0.0,
        Some(true) => {
            if let Some(rt) = check.realtime {
                (rt / 2.0).min(1.0) / (1.0 + f64::from(check.stalls.unwrap_or(0)))
            } else if let Some(rate) = check.rate {
                0.5 + 0.5 * (rate / 1e6).min(1.0)
            } else {
                1.0
            }
        }
    };
    let a = availability.clamp(0.0, 1.0);
    (100.0 * (0.45 * l + 0.35 * s + 0.20 * a))
        .round()
        .clamp(0.0, 100.0) as u8
}

/// Availability samples per provider: (unix seconds, reached).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    pub providers: BTreeMap<String, Vec<(u64, bool)>>,
}

impl History {
    pub fn load(sys: &System) -> History {
        std::fs::read(sys.path(HISTORY_FILE))
            .ok()
            .filter(|b| b.len() <= 4 << 20)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, sys: &System) -> std::io::Result<()> {
        let text = serde_json::to_vec(self).expect("history serialises");
        sys.write_atomic(HISTORY_FILE, &text, 0o644)
    }

    /// Adds a sample and returns the provider's availability and sample count, 24 h back.
    pub fn record(&mut self, key: &str, now_s: u64, ok: bool) -> (f64, u32) {
        let v = self.providers.entry(key.to_string()).or_default();
        v.push((now_s, ok));
        v.retain(|(t, _)| now_s.saturating_sub(*t) <= HISTORY_WINDOW_S);
        if v.len() > MAX_HISTORY {
            let cut = v.len() - MAX_HISTORY;
            v.drain(..cut);
        }
        let n = v.len() as u32;
        let good = v.iter().filter(|(_, ok)| *ok).count() as f64;
        (good / f64::from(n.max(1)), n)
    }

    /// Drops providers not seen for 24 h, then the stalest beyond `MAX_HISTORY_KEYS`.
    pub fn prune(&mut self, now_s: u64) {
        self.providers.retain(|_, v| {
            v.retain(|(t, _)| now_s.saturating_sub(*t) <= HISTORY_WINDOW_S);
            !v.is_empty()
        });
        while self.providers.len() > MAX_HISTORY_KEYS {
            let oldest = self
                .providers
                .iter()
                .min_by_key(|(_, v)| v.last().map(|(t, _)| *t).unwrap_or(0))
                .map(|(k, _)| k.clone())
                .expect("not empty");
            self.providers.remove(&oldest);
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub samples: usize,
    pub concurrency: usize,
    pub bandwidth: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            samples: SAMPLES,
            concurrency: CONCURRENCY,
            bandwidth: BANDWIDTH,
        }
    }
}

/// Probes `records` (our own are left out by the caller), records availability in `history`.
pub async fn scan(records: Vec<Record>, history: &mut History, opts: &Options) -> Vec<Probe> {
    let rate = Arc::new(Rate::new(opts.bandwidth));
    let slots = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    let measured = futures_util::future::join_all(records.into_iter().map(|r| {
        let (rate, slots, samples) = (rate.clone(), slots.clone(), opts.samples);
        async move {
            let _permit = slots.acquire_owned().await.expect("never closed");
            measure(r, samples, &rate).await
        }
    }))
    .await;
    let now = now_ms();
    let probes = measured
        .into_iter()
        .map(|(record, rtts, samples, check)| {
            let reachable = !rtts.is_empty();
            let rtt_ms = median(&rtts);
            let (availability, n) = history.record(&history_key(&record), now / 1000, reachable);
            let score = score(reachable, rtt_ms, &check, availability);
            Probe {
                record,
                at: now,
                reachable,
                rtt_ms,
                connected: rtts.len() as u32,
                samples,
                check,
                availability,
                history: n,
                score,
            }
        })
        .collect();
    history.prune(now / 1000);
    probes
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    })
}

async fn measure(r: Record, samples: usize, rate: &Rate) -> (Record, Vec<f64>, u32, Check) {
    let addr = SocketAddr::new(r.ip, r.port);
    let mut rtts = Vec::new();
    for _ in 0..samples.max(1) {
        let t0 = Instant::now();
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                rtts.push(t0.elapsed().as_secs_f64() * 1000.0);
                drop(s);
            }
            // Refused or timed out: nobody there now; more samples would only wait longer.
            _ => break,
        }
    }
    let check = if rtts.is_empty() {
        Check {
            name: checks::check_name(&r.kind).into(),
            ok: Some(false),
            detail: "no TCP connection".into(),
            ..Check::default()
        }
    } else {
        match tokio::time::timeout(CHECK_TIMEOUT, checks::service_check(&r, rate)).await {
            Ok(c) => c,
            Err(_) => Check {
                name: checks::check_name(&r.kind).into(),
                ok: Some(false),
                detail: format!("no answer within {} s", CHECK_TIMEOUT.as_secs()),
                ..Check::default()
            },
        }
    };
    let n = samples.max(1) as u32;
    (r, rtts, n, check)
}

/// Adds ±`JITTER` to a period, from the kernel's randomness.
pub fn jittered(period: Duration) -> Duration {
    let r = u16::from_le_bytes(crate::os::identity::random_bytes::<2>()) as f64 / 65535.0;
    period.mul_f64(1.0 + JITTER * (2.0 * r - 1.0))
}

/// A compact summary of this node's scores, published to other members (exchange port): per
/// provider its type, node, port and score.
pub fn summary(scores: &Scores) -> Vec<Summary> {
    scores
        .probes
        .iter()
        .take(MAX_SUMMARY)
        .map(|p| Summary {
            kind: p.record.kind.clone(),
            node: p.record.node.clone(),
            port: p.record.port,
            score: p.score,
        })
        .collect()
}

/// The agent's probe state: the latest scores, the history, one scan at a time.
pub struct Prober {
    pub sys: System,
    /// This node's id: its own records are not probed.
    pub me: String,
    pub opts: Options,
    pub scores: Mutex<Scores>,
    history: tokio::sync::Mutex<History>,
}

impl Prober {
    pub fn new(sys: System, me: String, opts: Options) -> Prober {
        let history = History::load(&sys);
        Prober {
            sys,
            me,
            opts,
            scores: Mutex::new(Scores::default()),
            history: tokio::sync::Mutex::new(history),
        }
    }

    /// Probes the providers of `kind` (every type when None) among `records` and keeps the
    /// results. A scan asked for while one runs waits for it (one at a time bounds the load).
    pub async fn scan(&self, records: &[Record], kind: Option<&str>) -> Scores {
        let mut history = self.history.lock().await;
        let targets: Vec<Record> = records
            .iter()
            .filter(|r| r.node_id != self.me && kind.is_none_or(|k| r.kind == k))
            .cloned()
            .collect();
        let t0 = Instant::now();
        let n = targets.len();
        let fresh = scan(targets, &mut history, &self.opts).await;
        tracing::info!(
            "probed {n} provider(s){} in {:.2} s",
            kind.map(|k| format!(" of {k}")).unwrap_or_default(),
            t0.elapsed().as_secs_f64()
        );
        if let Err(e) = history.save(&self.sys) {
            tracing::warn!("{HISTORY_FILE}: {e}");
        }
        let snapshot = {
            let mut s = self.scores.lock().unwrap();
            s.merge(kind, fresh, now_ms());
            s.clone()
        };
        if let Err(e) = save_scores(&self.sys, &snapshot) {
            tracing::warn!("{SCORES_FILE}: {e}");
        }
        snapshot
    }
}

pub fn save_scores(sys: &System, s: &Scores) -> std::io::Result<()> {
    let text = serde_json::to_vec(s).expect("scores serialise");
    sys.write_atomic(SCORES_FILE, &text, 0o644)
}

pub fn load_scores(sys: &System) -> Scores {
    std::fs::read(sys.path(SCORES_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::record;
    use cloudy_model::summary::parse_summary;

    #[test]
    fn score_prefers_near_and_working_providers() {
        let ok = Check {
            name: "tls".into(),
            ok: Some(true),
            ..Check::default()
        };
        let na = Check {
            name: "tcp".into(),
            ok: None,
            ..Check::default()
        };
        let bad = Check {
            ok: Some(false),
            ..ok.clone()
        };
        assert_eq!(score(false, Some(1.0), &ok, 1.0), 0, "unreachable");
        assert_eq!(score(true, Some(0.0), &ok, 1.0), 100);
        let near = score(true, Some(1.0), &ok, 1.0);
        let far = score(true, Some(200.0), &ok, 1.0);
        assert!(near > 90 && far < 70, "{near} {far}");
        assert!(score(true, Some(1.0), &bad, 1.0) < near - 30);
        // Without a check, latency stands in for it.
        assert_eq!(score(true, Some(50.0), &na, 1.0), 60);
        assert!(score(true, Some(1.0), &ok, 0.5) < near);
        let stalled = Check {
            name: "hls".into(),
            ok: Some(true),
            realtime: Some(4.0),
            stalls: Some(1),
            ..Check::default()
        };
        let smooth = Check {
            stalls: Some(0),
            ..stalled.clone()
        };
        assert!(score(true, Some(5.0), &smooth, 1.0) > score(true, Some(5.0), &stalled, 1.0));
    }

    #[test]
    fn history_is_bounded_and_windowed() {
        let mut h = History::default();
        let t = 1_000_000;
        assert_eq!(h.record("a", t, true), (1.0, 1));
        assert_eq!(h.record("a", t + 1, false), (0.5, 2));
        // A day later the old samples are gone.
        assert_eq!(h.record("a", t + HISTORY_WINDOW_S + 2, true), (1.0, 1));
        for i in 0..1000 {
            h.record("b", t + i, true);
        }
        assert_eq!(h.providers["b"].len(), MAX_HISTORY);
        for i in 0..(MAX_HISTORY_KEYS as u64 + 10) {
            h.record(&format!("k{i}"), t + HISTORY_WINDOW_S + i, true);
        }
        h.prune(t + HISTORY_WINDOW_S + MAX_HISTORY_KEYS as u64 + 10);
        assert!(h.providers.len() <= MAX_HISTORY_KEYS);
        assert!(!h.providers.contains_key("b"), "stale ones went first");
    }

    #[test]
    fn history_survives_a_save() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        let mut h = History::default();
        h.record("x", 5, true);
        h.save(&sys).unwrap();
        assert_eq!(History::load(&sys), h);
        std::fs::write(sys.path(HISTORY_FILE), b"{broken").unwrap();
        assert_eq!(
            History::load(&sys),
            History::default(),
            "a broken file starts over"
        );
    }

    #[test]
    fn summaries_are_checked() {
        let mut s = Scores::default();
        let r = record('a', "syncthing", 22000);
        s.merge(
            None,
            vec![Probe {
                record: r,
                at: 1,
                reachable: true,
                rtt_ms: Some(1.0),
                connected: 5,
                samples: 5,
                check: Check::default(),
                availability: 1.0,
                history: 1,
                score: 97,
            }],
            1,
        );
        let bytes = serde_json::to_vec(&summary(&s)).unwrap();
        assert_eq!(parse_summary(&bytes).unwrap()[0].score, 97);
        assert!(parse_summary(br#"[{"t":"x","n":"<script>","p":1,"s":5}]"#).is_err());
        assert!(parse_summary(br#"[{"t":"x","n":"a","p":1,"s":500}]"#).is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn scan_measures_tls_http_and_dead_providers() {
        // An HTTP server with a 64 KiB answer stands for a Tahoe web API; a closed port for a
        // dead provider; a port that accepts and says nothing for a non-TLS "syncthing".
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hport = http.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut s, _) = http.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut b = [0u8; 1024];
                    let _ = s.read(&mut b).await;
                    let body = vec![b'x'; 65536];
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                                .as_bytes(),
                        )
                        .await;
                    let _ = s.write_all(&body).await;
                });
            }
        });
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dport = dead.local_addr().unwrap().port();
        drop(dead);
        let mut tahoe = record('a', "tahoe-storage", dport);
        tahoe.fields.insert("web_port".into(), hport.to_string());
        let mut rs = vec![
            tahoe,
            record('b', "syncthing", dport),
            record('c', "web", hport),
        ];
        for r in &mut rs {
            r.ip = "127.0.0.1".parse().unwrap();
        }
        let mut h = History::default();
        let ps = scan(rs, &mut h, &Options::default()).await;
        assert_eq!(ps.len(), 3);
        // The storage port itself is dead here, so only the web API's port answers: the
        // record is unreachable (TCP on the record's port decides reachability).
        let tahoe = &ps[0];
        assert!(!tahoe.reachable);
        let web_api = checks::web_api_check(
            SocketAddr::new("127.0.0.1".parse().unwrap(), hport),
            &Rate::new(BANDWIDTH),
        )
        .await;
        assert_eq!(web_api.ok, Some(true), "{web_api:?}");
        assert!(web_api.rate.unwrap() > 0.0);
        let st = &ps[1];
        assert!(!st.reachable);
        assert_eq!(st.score, 0);
        let web = &ps[2];
        assert_eq!(web.check.ok, None, "TCP only");
        assert!(web.score > 80, "{web:?}");
        assert_eq!(web.connected, SAMPLES as u32);
        assert_eq!(h.providers.len(), 3);
    }
}
