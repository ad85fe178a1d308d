//! The service-level check of each kind's providers (which one: the kinds table): Tahoe's web
//! API or Foolscap, Syncthing's TLS handshake, HLS playlists and segments; TCP only for the
//! rest. Every read is bounded and under the scan's bandwidth budget.

use std::net::SocketAddr;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::catalog::Record;
use crate::os::http::{self, Rate};
use cloudy_model::kinds::{self, Check as KindCheck};

/// At most this much is read from one provider in one scan: a web answer, or a stream's
/// segments (enough for a rate and a stall count, not a download).
pub const MAX_BODY: usize = 256 << 10;
pub const MAX_STREAM: usize = 512 << 10;

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

/// The name of the check a kind's providers get (the kinds table says which).
pub(crate) fn check_name(kind: &str) -> &'static str {
    kinds::check(kind).name()
}

/// The protocol check of a record's type; types without one get `ok: None`.
pub async fn service_check(r: &Record, rate: &Rate) -> Check {
    match kinds::check(&r.kind) {
        KindCheck::Tahoe => tahoe_check(r, rate).await,
        KindCheck::Tls => tls_check(SocketAddr::new(r.ip, r.port)).await,
        KindCheck::Hls => hls_check(r, rate).await,
        KindCheck::Tcp => Check {
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

pub(crate) async fn web_api_check(addr: SocketAddr, rate: &Rate) -> Check {
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

pub(crate) async fn foolscap_check(r: &Record) -> Check {
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
pub(crate) async fn tls_check(addr: SocketAddr) -> Check {
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
pub(crate) async fn hls_check(r: &Record, rate: &Rate) -> Check {
    let addr = SocketAddr::new(r.ip, r.port);
    let mut c = Check {
        name: "hls".into(),
        ..Check::default()
    };
    let t0 = Instant::now();
    let (path, segs) = match media_playlist(r, addr, rate).await {
        Ok(p) => p,
        Err(Fail::NotHls(detail)) => {
            c.ok = None;
            c.detail = detail;
            return c;
        }
        Err(Fail::Bad(detail)) => {
            c.ok = Some(false);
            c.detail = detail;
            return c;
        }
    };
    let got = match live_edge(addr, &path, &segs, rate, t0).await {
        Ok(g) => g,
        Err(detail) => {
            c.ok = Some(false);
            c.detail = detail;
            return c;
        }
    };
    c.first_ms = got.first_ms;
    if got.play_s <= 0.0 || got.fetch_s <= 0.0 {
        c.ok = Some(false);
        c.detail = "no segment could be fetched".into();
        return c;
    }
    let delivered = got.bytes as f64 * 8.0 / got.fetch_s;
    let stream = got.bytes as f64 * 8.0 / got.play_s;
    c.ok = Some(true);
    c.rate = Some(got.bytes as f64 / got.fetch_s);
    c.stalls = Some(got.stalls);
    c.realtime = Some(delivered / stream.max(1.0));
    c.detail = format!(
        "{path}: delivered {:.0} kbit/s for a {:.0} kbit/s stream, {} stall(s)",
        delivered / 1000.0,
        stream / 1000.0,
        got.stalls
    );
    c
}

/// Why an HLS check ends early: not HLS at all (TCP only), or a failing stream.
enum Fail {
    NotHls(String),
    Bad(String),
}

/// The stream's media playlist (a master playlist's first variant): its path and segments.
async fn media_playlist(
    r: &Record,
    addr: SocketAddr,
    rate: &Rate,
) -> Result<(String, Vec<(f64, String)>), Fail> {
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
                return Err(Fail::NotHls(format!("not an HTTP stream ({e}); TCP only")))
            }
            Err(e) => last_err = format!("{p}: {e}"),
        }
    }
    let (mut path, text) = found.ok_or(Fail::Bad(last_err))?;
    let (mut segs, variants) = parse_m3u8(&text);
    if segs.is_empty() {
        if let Some(v) = variants.first().and_then(|v| join_uri(&path, v)) {
            if let Ok(g) = http::get(addr, &v, 256 * 1024, Some(rate)).await {
                segs = parse_m3u8(&String::from_utf8_lossy(&g.body)).0;
                path = v;
            }
        }
    }
    if segs.is_empty() {
        return Err(Fail::Bad("playlist lists no segments".into()));
    }
    Ok((path, segs))
}

/// What the live edge's segments took.
#[derive(Default)]
struct Edge {
    first_ms: Option<f64>,
    bytes: usize,
    fetch_s: f64,
    play_s: f64,
    stalls: u32,
}

/// Fetches the live edge (HLS clients start three segments from the end), timed.
async fn live_edge(
    addr: SocketAddr,
    path: &str,
    segs: &[(f64, String)],
    rate: &Rate,
    t0: Instant,
) -> Result<Edge, String> {
    let start = segs.len().saturating_sub(3);
    let mut e = Edge::default();
    for (i, (dur, uri)) in segs[start..].iter().enumerate() {
        let Some(u) = join_uri(path, uri) else {
            continue;
        };
        let budget = MAX_STREAM.saturating_sub(e.bytes);
        if budget == 0 {
            break;
        }
        let t = Instant::now();
        match http::get(addr, &u, budget, Some(rate)).await {
            Ok(g) if g.status == 200 => {
                if i == 0 || e.first_ms.is_none() {
                    e.first_ms
                        .get_or_insert(t0.elapsed().as_secs_f64() * 1000.0 - g.body_ms);
                }
                let took = t.elapsed().as_secs_f64();
                // A segment cut short by the read budget plays for its share of the time.
                let share = match g.len {
                    Some(len) if len > 0 => (g.body.len() as f64 / len as f64).min(1.0),
                    _ => 1.0,
                };
                e.bytes += g.body.len();
                e.fetch_s += took;
                e.play_s += dur * share;
                if took > dur * share {
                    e.stalls += 1;
                }
            }
            Ok(g) => return Err(format!("segment {u}: HTTP {}", g.status)),
            Err(err) => return Err(format!("segment {u}: {err}")),
        }
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
