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

pub mod select;

use crate::os::http;
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
/// At most this much is read from one provider in one scan: a web answer, or a stream's
/// segments (enough for a rate and a stall count, not a download).
pub const MAX_BODY: usize = 256 << 10;
pub const MAX_STREAM: usize = 512 << 10;
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

/// The protocol-level part of a probe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// "http", "tls", "hls" or "tcp" (no check for this type).
    pub name: String,
    /// None: the check does not apply to this record; it is left out of the score.
    pub ok: Option<bool>,
    pub detail: String,
    /// Time to the first answer byte (HTTP status line, TLS ServerHello, first segment).
    pub first_ms: Option<f64>,
    /// Bytes per second of what was read.
    pub rate: Option<f64>,
    /// Streaming: segments that took longer to fetch than to play.
    pub stalls: Option<u32>,
    /// Streaming: delivered bitrate over the stream's own bitrate.
    pub realtime: Option<f64>,
}

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
            name: check_name(&r.kind).into(),
            ok: Some(false),
            detail: "no TCP connection".into(),
            ..Check::default()
        }
    } else {
        match tokio::time::timeout(CHECK_TIMEOUT, service_check(&r, rate)).await {
            Ok(c) => c,
            Err(_) => Check {
                name: check_name(&r.kind).into(),
                ok: Some(false),
                detail: format!("no answer within {} s", CHECK_TIMEOUT.as_secs()),
                ..Check::default()
            },
        }
    };
    let n = samples.max(1) as u32;
    (r, rtts, n, check)
}

fn check_name(kind: &str) -> &'static str {
    match kind {
        "tahoe-introducer" | "tahoe-storage" | "tahoe" => "tahoe",
        "syncthing" => "tls",
        "streaming" => "hls",
        _ => "tcp",
    }
}

/// The protocol check of a record's type; types without one get `ok: None`.
pub async fn service_check(r: &Record, rate: &Rate) -> Check {
    match check_name(&r.kind) {
        "tahoe" => tahoe_check(r, rate).await,
        "tls" => tls_check(SocketAddr::new(r.ip, r.port)).await,
        "hls" => hls_check(r, rate).await,
        _ => Check {
            name: "tcp".into(),
            ok: None,
            detail: "no service check for this type; TCP only".into(),
            ..Check::default()
        },
    }
}

/// Tahoe: the web API where a record names one (`web_port`: answer code and read rate), else
/// Foolscap on the record's own port. Foolscap opens with an HTTP-like upgrade request for a
/// Tub id: the introducer's (from its `furl`) must be switched to (`101`); without a furl, any
/// Foolscap answer (`500 ... unknown TubID` included) shows a live Tahoe node.
async fn tahoe_check(r: &Record, rate: &Rate) -> Check {
    if let Some(port) = r.fields.get("web_port").and_then(|p| p.parse::<u16>().ok()) {
        return web_api_check(SocketAddr::new(r.ip, port), rate).await;
    }
    foolscap_check(r).await
}

async fn web_api_check(addr: SocketAddr, rate: &Rate) -> Check {
    let mut c = Check {
        name: "http".into(),
        ..Check::default()
    };
    match http::get(addr, "/", MAX_BODY, Some(rate)).await {
        Ok(g) => {
            c.ok = Some(g.status < 500);
            c.first_ms = Some(g.first_ms);
            c.rate = g.rate();
            c.detail = format!("web API answered {} ({} bytes)", g.status, g.body.len());
        }
        Err(e) => {
            c.ok = Some(false);
            c.detail = format!("web API: {e}");
        }
    }
    c
}

/// The Tub id of a `pb://<tubid>@<hints>/<name>` FURL.
fn furl_tub(furl: &str) -> Option<&str> {
    let t = furl.strip_prefix("pb://")?.split('@').next()?;
    (!t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(t)
}

async fn foolscap_check(r: &Record) -> Check {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = Check {
        name: "foolscap".into(),
        ..Check::default()
    };
    let tub = r.fields.get("furl").and_then(|f| furl_tub(f));
    let addr = SocketAddr::new(r.ip, r.port);
    let res = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let t0 = Instant::now();
        let req = format!(
            "GET /id/{} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: TLS/1.0\r\nConnection: Upgrade\r\n\r\n",
            tub.unwrap_or("cloudyprobe")
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = vec![0u8; 256];
        let mut n = 0;
        while n < buf.len() {
            let k = s.read(&mut buf[n..]).await?;
            if k == 0 || buf[..n + k].windows(2).any(|w| w == b"\r\n") {
                n += k;
                break;
            }
            n += k;
        }
        Ok::<_, std::io::Error>((
            String::from_utf8_lossy(&buf[..n]).into_owned(),
            t0.elapsed().as_secs_f64() * 1000.0,
        ))
    }
    .await;
    match res {
        Ok((line, ms)) => {
            let line = line.lines().next().unwrap_or("").to_string();
            let switched = line.starts_with("HTTP/1.1 101");
            let foolscap = switched || line.contains("TubID");
            c.first_ms = Some(ms);
            c.ok = Some(if tub.is_some() { switched } else { foolscap });
            c.detail = match (tub.is_some(), switched, foolscap) {
                (true, true, _) => {
                    format!("Foolscap switched to the introducer's Tub in {ms:.1} ms")
                }
                (true, false, true) => {
                    "Foolscap answered, but not for this introducer's Tub".into()
                }
                (false, _, true) => format!("Foolscap answered in {ms:.1} ms"),
                _ => "answered, but not Foolscap".into(),
            };
        }
        Err(e) => {
            c.ok = Some(false);
            c.detail = format!("no Foolscap answer: {e}");
        }
    }
    c
}

/// Syncthing speaks TLS 1.3 on its sync port: send a ClientHello (ALPN bep/1.0, an X25519
/// share) and time the server's first handshake record. No certificate is checked: this
/// measures that a Syncthing-like TLS server answers, not who it is (the device id does that
/// when the user joins).
async fn tls_check(addr: SocketAddr) -> Check {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = Check {
        name: "tls".into(),
        ..Check::default()
    };
    let r = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let t0 = Instant::now();
        s.write_all(&client_hello()).await?;
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>((head, t0.elapsed().as_secs_f64() * 1000.0))
    }
    .await;
    match r {
        Ok((head, ms)) if head[0] == 0x16 && head[1] == 3 => {
            c.ok = Some(true);
            c.first_ms = Some(ms);
            c.detail = format!("TLS handshake answered in {ms:.1} ms");
        }
        Ok((head, _)) if head[0] == 0x15 => {
            c.ok = Some(false);
            c.detail = "TLS alert: the server refused our hello".into();
        }
        Ok(_) => {
            c.ok = Some(false);
            c.detail = "answered, but not TLS".into();
        }
        Err(e) => {
            c.ok = Some(false);
            c.detail = format!("no TLS answer: {e}");
        }
    }
    c
}

fn client_hello() -> Vec<u8> {
    fn u16b(v: usize) -> [u8; 2] {
        (v as u16).to_be_bytes()
    }
    fn ext(id: u16, body: &[u8]) -> Vec<u8> {
        let mut e = id.to_be_bytes().to_vec();
        e.extend(u16b(body.len()));
        e.extend(body);
        e
    }
    let mut exts = Vec::new();
    exts.extend(ext(0x002b, &[2, 3, 4])); // supported_versions: TLS 1.3
    exts.extend(ext(0x000a, &[0, 2, 0, 0x1d])); // supported_groups: x25519
    let mut ks = vec![0, 36, 0, 0x1d, 0, 32];
    ks.extend(crate::os::identity::random_bytes::<32>());
    exts.extend(ext(0x0033, &ks)); // key_share
    let sigs: &[u16] = &[
        0x0403, 0x0503, 0x0603, 0x0804, 0x0805, 0x0806, 0x0807, 0x0401, 0x0501, 0x0601,
    ];
    let mut sa = u16b(sigs.len() * 2).to_vec();
    for s in sigs {
        sa.extend(s.to_be_bytes());
    }
    exts.extend(ext(0x000d, &sa)); // signature_algorithms
    let proto = b"bep/1.0";
    let mut alpn = u16b(proto.len() + 1).to_vec();
    alpn.push(proto.len() as u8);
    alpn.extend(proto);
    exts.extend(ext(0x0010, &alpn)); // ALPN
    let mut hello = vec![3, 3];
    hello.extend(crate::os::identity::random_bytes::<32>());
    hello.push(32);
    hello.extend(crate::os::identity::random_bytes::<32>());
    hello.extend([0, 6, 0x13, 0x01, 0x13, 0x02, 0x13, 0x03]);
    hello.extend([1, 0]);
    hello.extend(u16b(exts.len()));
    hello.extend(exts);
    let mut hs = vec![1, 0];
    hs.extend(u16b(hello.len()));
    hs.extend(hello);
    let mut rec = vec![0x16, 3, 1];
    rec.extend(u16b(hs.len()));
    rec.extend(hs);
    rec
}

/// Where a stream's playlist may be, most specific first.
fn playlist_paths(r: &Record) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(id) = r.fields.get("stream_id") {
        // Where the agent's own streaming relay serves it (`streaming::http`).
        v.push(format!("/stream/{id}/index.m3u8"));
        v.push(format!("/{id}/index.m3u8"));
        v.push(format!("/{id}.m3u8"));
        v.push(format!("/hls/{id}.m3u8"));
    }
    for p in ["/index.m3u8", "/stream.m3u8", "/live.m3u8"] {
        v.push(p.into());
    }
    v
}

/// (duration seconds, uri) of each media segment, and variant playlists of a master playlist.
fn parse_m3u8(text: &str) -> (Vec<(f64, String)>, Vec<String>) {
    let mut segs = Vec::new();
    let mut variants = Vec::new();
    let mut dur: Option<f64> = None;
    let mut variant = false;
    for line in text.lines().map(str::trim) {
        if let Some(d) = line.strip_prefix("#EXTINF:") {
            dur = d.split(',').next().and_then(|x| x.trim().parse().ok());
        } else if line.starts_with("#EXT-X-STREAM-INF") {
            variant = true;
        } else if !line.is_empty() && !line.starts_with('#') {
            if variant {
                variants.push(line.to_string());
                variant = false;
            } else if let Some(d) = dur.take() {
                segs.push((d, line.to_string()));
            }
        }
    }
    (segs, variants)
}

/// Joins a playlist's relative URI to the playlist's path; absolute URLs to other hosts are
/// not followed (a probe only talks to the provider in the record).
fn join_uri(base: &str, uri: &str) -> Option<String> {
    if uri.contains("://") || uri.starts_with("//") {
        return None;
    }
    if uri.starts_with('/') {
        return Some(uri.to_string());
    }
    let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
    Some(format!("{dir}{uri}"))
}

/// HLS at the record's port: playlist, then up to three segments in a row (the live edge),
/// timed: time to first segment byte, delivered bitrate against the stream's, stalls.
async fn hls_check(r: &Record, rate: &Rate) -> Check {
    let addr = SocketAddr::new(r.ip, r.port);
    let mut c = Check {
        name: "hls".into(),
        ..Check::default()
    };
    let t0 = Instant::now();
    let mut found = None;
    let mut last_err = String::from("no playlist found");
    for p in playlist_paths(r) {
        match http::get(addr, &p, 256 * 1024, Some(rate)).await {
            Ok(g) if g.status == 200 && g.body.starts_with(b"#EXTM3U") => {
                found = Some((p, String::from_utf8_lossy(&g.body).into_owned()));
                break;
            }
            Ok(g) => last_err = format!("{p}: HTTP {}", g.status),
            Err(http::HttpError::NotHttp(e)) => {
                c.ok = None;
                c.detail = format!("not an HTTP stream ({e}); TCP only");
                return c;
            }
            Err(e) => last_err = format!("{p}: {e}"),
        }
    }
    let Some((mut path, mut text)) = found else {
        c.ok = Some(false);
        c.detail = last_err;
        return c;
    };
    let (mut segs, variants) = parse_m3u8(&text);
    if segs.is_empty() {
        if let Some(v) = variants.first().and_then(|v| join_uri(&path, v)) {
            if let Ok(g) = http::get(addr, &v, 256 * 1024, Some(rate)).await {
                text = String::from_utf8_lossy(&g.body).into_owned();
                path = v;
                segs = parse_m3u8(&text).0;
            }
        }
    }
    if segs.is_empty() {
        c.ok = Some(false);
        c.detail = "playlist lists no segments".into();
        return c;
    }
    // The live edge: HLS clients start three segments from the end.
    let start = segs.len().saturating_sub(3);
    let (mut bytes, mut fetch_s, mut play_s, mut stalls) = (0usize, 0.0f64, 0.0f64, 0u32);
    for (i, (dur, uri)) in segs[start..].iter().enumerate() {
        let Some(u) = join_uri(&path, uri) else {
            continue;
        };
        let budget = MAX_STREAM.saturating_sub(bytes);
        if budget == 0 {
            break;
        }
        let t = Instant::now();
        match http::get(addr, &u, budget, Some(rate)).await {
            Ok(g) if g.status == 200 => {
                if i == 0 || c.first_ms.is_none() {
                    c.first_ms
                        .get_or_insert(t0.elapsed().as_secs_f64() * 1000.0 - g.body_ms);
                }
                let took = t.elapsed().as_secs_f64();
                // A segment cut short by the read budget plays for its share of the time.
                let share = match g.len {
                    Some(len) if len > 0 => (g.body.len() as f64 / len as f64).min(1.0),
                    _ => 1.0,
                };
                bytes += g.body.len();
                fetch_s += took;
                play_s += dur * share;
                if took > dur * share {
                    stalls += 1;
                }
            }
            Ok(g) => {
                c.ok = Some(false);
                c.detail = format!("segment {u}: HTTP {}", g.status);
                return c;
            }
            Err(e) => {
                c.ok = Some(false);
                c.detail = format!("segment {u}: {e}");
                return c;
            }
        }
    }
    if play_s <= 0.0 || fetch_s <= 0.0 {
        c.ok = Some(false);
        c.detail = "no segment could be fetched".into();
        return c;
    }
    let delivered = bytes as f64 * 8.0 / fetch_s;
    let stream = bytes as f64 * 8.0 / play_s;
    c.ok = Some(true);
    c.rate = Some(bytes as f64 / fetch_s);
    c.stalls = Some(stalls);
    c.realtime = Some(delivered / stream.max(1.0));
    c.detail = format!(
        "{path}: delivered {:.0} kbit/s for a {:.0} kbit/s stream, {stalls} stall(s)",
        delivered / 1000.0,
        stream / 1000.0
    );
    c
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
    fn playlists_parse_and_stay_on_the_provider() {
        let (segs, v) = parse_m3u8(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.000,\nseg0.ts\n#EXTINF:1.5,\n/abs/seg1.ts\n",
        );
        assert_eq!(
            segs,
            vec![(2.0, "seg0.ts".into()), (1.5, "/abs/seg1.ts".into())]
        );
        assert!(v.is_empty());
        let (_, v) = parse_m3u8("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nlow/index.m3u8\n");
        assert_eq!(v, vec!["low/index.m3u8".to_string()]);
        assert_eq!(join_uri("/a/index.m3u8", "s.ts").unwrap(), "/a/s.ts");
        assert_eq!(join_uri("/index.m3u8", "s.ts").unwrap(), "/s.ts");
        assert_eq!(join_uri("/x", "http://evil/s.ts"), None);
    }

    #[test]
    fn furl_tub_ids() {
        assert_eq!(
            furl_tub("pb://aa55w45t4atbajtptvhthxusa6axlk4p@tcp:127.0.0.1:37001/6o6t"),
            Some("aa55w45t4atbajtptvhthxusa6axlk4p")
        );
        assert_eq!(furl_tub("pb://a b@x/y"), None);
        assert_eq!(furl_tub("http://x"), None);
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
        let web_api = web_api_check(
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
