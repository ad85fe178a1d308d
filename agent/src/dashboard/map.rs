//! The Community map as server-rendered SVG (no JavaScript): nodes coloured by health, the VPN
//! links labelled with latency and coloured by the probe score, each node's services, this node
//! marked. Nodes with a "LAT,LON" location are projected into the box; the others go on a
//! circle ordered by id, so the picture is the same on every reload. Every text from the
//! network goes through `html::esc`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::html::{esc, Html};
use crate::probe::community::{CommunityView, Sample, Seen, FRESH_S};
use cloudy_model::info::coordinates;

/// The map's box.
pub const W: f64 = 1000.0;
pub const H: f64 = 760.0;
/// Room around the drawing for labels.
const MARGIN: f64 = 110.0;
/// Above this many nodes, link labels and service lines move into tooltips (`<title>`).
const LABELLED: usize = 24;

/// A node's health on the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Answered lately, with room in memory and on disk.
    Ok,
    /// Answered lately but short of memory or disk, or its last answer is getting old.
    Warn,
    /// Not heard from for a while.
    Down,
}

impl Health {
    pub fn of(s: &Seen, now: u64) -> Health {
        let age = now.saturating_sub(s.ok_at);
        let low = |free: u64, total: u64| total > 0 && free * 20 < total;
        let i = &s.info;
        if age > 3 * FRESH_S {
            Health::Down
        } else if age > FRESH_S
            || s.error.is_some()
            || low(i.mem_free_kb, i.mem_total_kb)
            || low(i.disk_free_kb, i.disk_total_kb)
        {
            Health::Warn
        } else {
            Health::Ok
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Warn => "warn",
            Health::Down => "down",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Health::Ok => "#2e9d4f",
            Health::Warn => "#d99a00",
            Health::Down => "#c03030",
        }
    }
}

/// A latency in microseconds, as people read it ("0.21 ms", "12 ms").
pub fn latency(us: u32) -> String {
    if us < 10_000 {
        format!("{:.2} ms", f64::from(us) / 1000.0)
    } else {
        format!("{} ms", us / 1000)
    }
}

/// A link's colour by probe score (as the Services tab colours scores).
fn score_colour(score: Option<u8>) -> &'static str {
    match score {
        Some(s) if s >= 70 => "#2e9d4f",
        Some(s) if s >= 40 => "#d99a00",
        Some(_) => "#c03030",
        None => "#9aa3b2",
    }
}

/// Where each node goes and how large its circle is.
pub struct Layout {
    pub at: Vec<(f64, f64)>,
    pub r: f64,
}

/// Located nodes projected (equirectangular, fitted to their own bounds) into the box's middle;
/// the rest on a circle by id around it; then overlapping circles pushed apart for a fixed
/// number of rounds (same input, same picture).
pub fn layout(v: &CommunityView) -> Layout {
    let n = v.nodes.len().max(1);
    let (cx, cy) = (W / 2.0, H / 2.0);
    let ring = (H / 2.0 - MARGIN).max(50.0);
    // Circles fit the ring: no two neighbours on it touch.
    let r = (std::f64::consts::PI * ring / n as f64 * 0.8).clamp(4.0, 18.0);
    let located: Vec<Option<(f64, f64)>> = v
        .nodes
        .iter()
        .map(|s| s.info.location.as_deref().and_then(coordinates))
        .collect();
    let pts: Vec<(f64, f64)> = located.iter().flatten().copied().collect();
    let (mut lat0, mut lat1, mut lon0, mut lon1) = (90.0f64, -90.0f64, 180.0f64, -180.0f64);
    for (lat, lon) in &pts {
        lat0 = lat0.min(*lat);
        lat1 = lat1.max(*lat);
        lon0 = lon0.min(*lon);
        lon1 = lon1.max(*lon);
    }
    let unlocated = located.iter().filter(|l| l.is_none()).count();
    // With nodes on the ring, the located ones go inside it; alone, they take the whole box.
    let inner = if unlocated > 0 { ring * 0.55 } else { ring };
    let span_lon = (lon1 - lon0).max(1e-6);
    let span_lat = (lat1 - lat0).max(1e-6);
    let mut order: Vec<usize> = (0..v.nodes.len())
        .filter(|i| located[*i].is_none())
        .collect();
    order.sort_by(|a, b| v.nodes[*a].info.id.cmp(&v.nodes[*b].info.id));
    let mut at = vec![(cx, cy); v.nodes.len()];
    for (k, i) in order.iter().enumerate() {
        let a =
            -std::f64::consts::FRAC_PI_2 + std::f64::consts::TAU * k as f64 / order.len() as f64;
        at[*i] = (cx + ring * a.cos(), cy + ring * a.sin());
    }
    for (i, l) in located.iter().enumerate() {
        if let Some((lat, lon)) = l {
            let x = if pts.len() > 1 && lon1 > lon0 {
                (lon - lon0) / span_lon * 2.0 - 1.0
            } else {
                0.0
            };
            let y = if pts.len() > 1 && lat1 > lat0 {
                1.0 - (lat - lat0) / span_lat * 2.0
            } else {
                0.0
            };
            let wide = if unlocated > 0 { 1.0 } else { W / H };
            at[i] = (cx + x * inner * wide, cy + y * inner);
        }
    }
    // Push apart what still overlaps (same coordinates, a located node on the ring).
    // A small map's labels sit under the circles: room for them too.
    let min = 2.0 * r + if n <= LABELLED { 48.0 } else { 2.0 };
    for _ in 0..50 {
        let mut moved = false;
        for i in 0..at.len() {
            for j in i + 1..at.len() {
                let (dx, dy) = (at[j].0 - at[i].0, at[j].1 - at[i].1);
                let d = (dx * dx + dy * dy).sqrt();
                if d < min {
                    // Coincident points part along a direction given by their indices.
                    let (ux, uy) = if d < 1e-9 {
                        let a = (i * 7 + j * 13) as f64;
                        (a.cos(), a.sin())
                    } else {
                        (dx / d, dy / d)
                    };
                    let push = (min - d) / 2.0 + 0.01;
                    at[i] = (at[i].0 - ux * push, at[i].1 - uy * push);
                    at[j] = (at[j].0 + ux * push, at[j].1 + uy * push);
                    moved = true;
                }
            }
        }
        if !moved {
            break;
        }
    }
    Layout { at, r }
}

/// One link between two nodes, from what either measured of the other.
struct Link {
    a: usize,
    b: usize,
    rtt_us: Option<u32>,
    score: Option<u8>,
}

fn links(v: &CommunityView) -> Vec<Link> {
    let index: BTreeMap<&str, usize> = v
        .nodes
        .iter()
        .enumerate()
        .map(|(i, s)| (s.info.id.as_str(), i))
        .collect();
    let mut pairs: BTreeMap<(usize, usize), Link> = BTreeMap::new();
    for (a, s) in v.nodes.iter().enumerate() {
        for p in &s.info.peers {
            let Some(&b) = index.get(p.id.as_str()) else {
                continue;
            };
            if a == b {
                continue;
            }
            let key = (a.min(b), a.max(b));
            let l = pairs.entry(key).or_insert(Link {
                a: key.0,
                b: key.1,
                rtt_us: None,
                score: None,
            });
            // The smaller latency and the lower score of the two directions: what a user of
            // the link gets at worst in score, at best in time.
            l.rtt_us = match (l.rtt_us, p.rtt_us) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            };
            l.score = match (l.score, p.score) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            };
        }
    }
    pairs.into_values().collect()
}

fn services_line(s: &Seen) -> String {
    let kinds: Vec<String> = s
        .info
        .services
        .iter()
        .map(|x| format!("{} {}", x.kind, x.state))
        .collect();
    if kinds.is_empty() {
        "no services".into()
    } else {
        kinds.join(", ")
    }
}

/// The SVG of the whole map. Numbers are formatted here; every text goes through `esc`.
pub fn render(v: &CommunityView) -> Html {
    let lay = layout(v);
    let links = links(v);
    let big = v.nodes.len() > LABELLED;
    let mut o = String::with_capacity(512 + v.nodes.len() * 600 + links.len() * 200);
    let _ = write!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"community-map\" viewBox=\"0 0 {W} {H}\" \
         width=\"100%\" role=\"img\" aria-label=\"map of the community\" \
         font-family=\"system-ui, sans-serif\" font-size=\"{}\">",
        if big { 10 } else { 13 }
    );
    o.push_str("<g class=\"links\">");
    if big {
        // A full mesh of 100 nodes is 4950 links: one path per colour keeps the page small
        // (their latencies are on each node's page).
        let mut by_colour: BTreeMap<&str, (String, usize)> = BTreeMap::new();
        for l in &links {
            let (a, b) = (lay.at[l.a], lay.at[l.b]);
            let e = by_colour.entry(score_colour(l.score)).or_default();
            let _ = write!(e.0, "M{:.0} {:.0}L{:.0} {:.0}", a.0, a.1, b.0, b.1);
            e.1 += 1;
        }
        for (colour, (d, count)) in by_colour {
            let _ = write!(
                o,
                "<path class=\"links-bulk\" data-count=\"{count}\" d=\"{d}\" stroke=\"{colour}\" \
                 stroke-width=\"0.4\" stroke-opacity=\"0.2\" fill=\"none\"/>"
            );
        }
    }
    for l in links.iter().filter(|_| !big) {
        let (a, b) = (lay.at[l.a], lay.at[l.b]);
        let rtt = l.rtt_us.map(latency).unwrap_or_else(|| "no latency".into());
        let score = l
            .score
            .map(|s| format!("score {s}"))
            .unwrap_or_else(|| "no score".into());
        let _ = write!(
            o,
            "<g class=\"link\" data-a=\"{}\" data-b=\"{}\"><title>{} - {}: {}, {}</title>\
             <line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{}\" stroke-width=\"2\"/>",
            esc(&v.nodes[l.a].info.id),
            esc(&v.nodes[l.b].info.id),
            esc(&v.nodes[l.a].info.name),
            esc(&v.nodes[l.b].info.name),
            esc(&rtt),
            esc(&score),
            a.0,
            a.1,
            b.0,
            b.1,
            score_colour(l.score),
        );
        {
            let _ = write!(
                o,
                "<text class=\"latency\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#3b4658\">{}</text>",
                (a.0 + b.0) / 2.0,
                (a.1 + b.1) / 2.0 - 3.0,
                esc(&rtt)
            );
        }
        o.push_str("</g>");
    }
    o.push_str("</g><g class=\"nodes\">");
    let (cx, cy) = (W / 2.0, H / 2.0);
    for (i, s) in v.nodes.iter().enumerate() {
        let (x, y) = lay.at[i];
        let health = Health::of(s, v.at);
        let me = s.info.id == v.me;
        let _ = write!(
            o,
            "<a href=\"/community/node?id={}\"><g class=\"node{}\" data-id=\"{}\" data-health=\"{}\">\
             <title>{}{}: {}; {}</title>\
             <circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{:.1}\" fill=\"{}\" stroke=\"{}\" stroke-width=\"{}\"/>",
            esc(&s.info.id),
            if me { " me" } else { "" },
            esc(&s.info.id),
            health.word(),
            esc(&s.info.name),
            if me { " (this node)" } else { "" },
            health.word(),
            esc(&services_line(s)),
            lay.r,
            health.colour(),
            if me { "#23395d" } else { "#ffffff" },
            if me { 4 } else { 1 },
        );
        // Labels point away from the middle, so a full ring of them does not overlap.
        let (dx, dy) = (x - cx, y - cy);
        let d = (dx * dx + dy * dy).sqrt();
        let name = format!("{}{}", s.info.name, if me { " (this node)" } else { "" });
        if big && d > 1.0 {
            let (ux, uy) = (dx / d, dy / d);
            let (lx, ly) = (x + ux * (lay.r + 3.0), y + uy * (lay.r + 3.0));
            let mut deg = uy.atan2(ux).to_degrees();
            let anchor = if deg.abs() > 90.0 {
                deg += 180.0;
                "end"
            } else {
                "start"
            };
            let _ = write!(
                o,
                "<text class=\"label\" x=\"{lx:.1}\" y=\"{ly:.1}\" text-anchor=\"{anchor}\" \
                 dominant-baseline=\"middle\" transform=\"rotate({deg:.1} {lx:.1} {ly:.1})\">{}</text>",
                esc(&name)
            );
        } else {
            let _ = write!(
                o,
                "<text class=\"label\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-weight=\"600\">{}</text>\
                 <text class=\"services\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#56627a\" font-size=\"11\">{}</text>",
                y + lay.r + 14.0,
                esc(&name),
                y + lay.r + 27.0,
                esc(&services_line(s)),
            );
        }
        o.push_str("</g></a>");
    }
    o.push_str("</g></svg>");
    Html::trusted(o)
}

/// A node's last 24 h from its trail: a bar per sample (green reached, red not) and the score
/// as a line, 0-100.
pub fn chart(trail: &[Sample], now: u64) -> Html {
    let (w, h) = (480.0, 120.0);
    let day = 24.0 * 3600.0;
    let mut o = String::new();
    let _ = write!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"trail\" viewBox=\"0 0 {w} {}\" width=\"{w}\" \
         font-family=\"system-ui, sans-serif\" font-size=\"10\" role=\"img\" aria-label=\"availability and score over 24 h\">\
         <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"#f5f7fa\"/>",
        h + 14.0
    );
    let x_of = |t: u64| ((day - now.saturating_sub(t) as f64) / day * w).clamp(0.0, w);
    let bar = (w / crate::probe::community::TRAIL_LEN as f64).max(1.0);
    for s in trail {
        let _ = write!(
            o,
            "<rect class=\"sample\" x=\"{:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"8\" fill=\"{}\"/>",
            x_of(s.t),
            h - 8.0,
            if s.reached { "#2e9d4f" } else { "#c03030" }
        );
    }
    let pts: Vec<String> = trail
        .iter()
        .filter_map(|s| {
            s.score.map(|sc| {
                format!(
                    "{:.1},{:.1}",
                    x_of(s.t),
                    (h - 12.0) * (1.0 - f64::from(sc) / 100.0)
                )
            })
        })
        .collect();
    if !pts.is_empty() {
        let _ = write!(
            o,
            "<polyline class=\"score\" points=\"{}\" fill=\"none\" stroke=\"#2f6fde\" stroke-width=\"1.5\"/>",
            pts.join(" ")
        );
    }
    let _ = write!(
        o,
        "<text x=\"0\" y=\"{:.0}\">24 h ago</text><text x=\"{w}\" y=\"{:.0}\" text-anchor=\"end\">now</text></svg>",
        h + 12.0,
        h + 12.0
    );
    Html::trusted(o)
}

/// A generated community of `n` nodes, each a peer of every other, for tests and the bench.
#[doc(hidden)]
pub fn generated(n: u32, now: u64) -> CommunityView {
    use cloudy_model::info::{NodeInfo, PeerInfo, ServiceInfo};
    let id = |k: u32| format!("{:032x}", k + 1);
    let nodes = (0..n)
        .map(|k| Seen {
            info: NodeInfo {
                id: id(k),
                name: format!("node-{k}"),
                version: "0.1.0".into(),
                at: now,
                uptime_s: 3600 * u64::from(k),
                load: 10 * k,
                mem_total_kb: 1 << 20,
                mem_free_kb: if k % 7 == 3 { 1 << 10 } else { 1 << 19 },
                disk_total_kb: 1 << 24,
                disk_free_kb: 1 << 23,
                services: vec![ServiceInfo {
                    kind: if k % 2 == 0 {
                        "syncthing"
                    } else {
                        "tahoe-storage"
                    }
                    .into(),
                    port: 22000,
                    state: "up".into(),
                }],
                peers: (0..n)
                    .filter(|p| *p != k)
                    .map(|p| PeerInfo {
                        id: id(p),
                        name: format!("node-{p}"),
                        rtt_us: Some(100 + 997 * ((k + p) % 40)),
                        score: Some(((k * p) % 101) as u8),
                    })
                    .collect(),
                location: None,
                contact: Some(format!("ops-{k}@example.org")),
                release: None,
            },
            rtt_us: Some(3000),
            ok_at: if k % 11 == 5 { now - 600 } else { now },
            error: None,
        })
        .collect();
    CommunityView {
        me: id(0),
        at: now,
        nodes,
        trail: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("not XML: {e}"))
    }

    #[test]
    fn a_hundred_nodes_stay_readable() {
        let v = generated(100, 1_800_000_000);
        let lay = layout(&v);
        for i in 0..lay.at.len() {
            let (x, y) = lay.at[i];
            assert!(
                (0.0..=W).contains(&x) && (0.0..=H).contains(&y),
                "{i} off the map"
            );
            for j in i + 1..lay.at.len() {
                let (dx, dy) = (lay.at[j].0 - x, lay.at[j].1 - y);
                assert!(
                    (dx * dx + dy * dy).sqrt() >= 2.0 * lay.r,
                    "nodes {i} and {j} overlap"
                );
            }
        }
        let svg = render(&v).into_string();
        let doc = parse(&svg);
        let nodes: Vec<_> = doc
            .descendants()
            .filter(|n| matches!(n.attribute("class"), Some("node" | "node me")))
            .collect();
        assert_eq!(nodes.len(), 100);
        let links = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("link"))
            .count();
        let bulk: usize = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("links-bulk"))
            .map(|n| {
                let d = n.attribute("d").unwrap();
                assert_eq!(
                    d.matches('M').count().to_string(),
                    n.attribute("data-count").unwrap()
                );
                d.matches('M').count()
            })
            .sum();
        assert_eq!((links, bulk), (0, 100 * 99 / 2), "one line per pair");
        assert!(svg.len() < 300 << 10, "{} KiB", svg.len() >> 10);
        for k in 0..100 {
            let label = format!("node-{k}");
            assert!(
                doc.descendants()
                    .any(|n| n.attribute("class") == Some("label")
                        && n.text().is_some_and(|t| t.starts_with(&label))),
                "{label} has no label"
            );
        }
        assert_eq!(
            doc.descendants()
                .filter(|n| n.attribute("class") == Some("node me"))
                .count(),
            1,
            "this node marked once"
        );
        assert!(doc
            .descendants()
            .any(|n| n.attribute("data-health") == Some("down")));
    }

    #[test]
    fn located_nodes_are_placed_apart_and_small_maps_are_labelled() {
        let mut v = generated(5, 1_800_000_000);
        v.nodes[0].info.location = Some("52.52,13.40".into());
        v.nodes[1].info.location = Some("48.14,11.58".into());
        v.nodes[2].info.location = Some("48.14,11.58".into());
        let lay = layout(&v);
        assert!(lay.at[0].1 < lay.at[1].1, "north is up");
        let (dx, dy) = (lay.at[1].0 - lay.at[2].0, lay.at[1].1 - lay.at[2].1);
        assert!(
            (dx * dx + dy * dy).sqrt() >= 2.0 * lay.r,
            "same place, apart"
        );
        let svg = render(&v).into_string();
        let doc = parse(&svg);
        assert_eq!(
            doc.descendants()
                .filter(|n| n.attribute("class") == Some("latency"))
                .count(),
            10
        );
        assert!(svg.contains("syncthing up"));
    }

    /// A member's text is only ever text: a node name or location carrying markup comes out
    /// escaped, and the SVG still parses (the parser refuses such names; the map does not rely
    /// on it).
    #[test]
    fn hostile_text_is_escaped() {
        let mut v = generated(3, 1_800_000_000);
        v.nodes[1].info.name = "<script>alert(1)</script>".into();
        v.nodes[1].info.services[0].state = "\"/><script>x</script>".into();
        v.nodes[2].info.id = "\"><a href=x>".into();
        let svg = render(&v).into_string();
        assert!(!svg.contains("<script"), "{svg}");
        assert!(svg.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        let doc = parse(&svg);
        assert!(!doc.descendants().any(|n| n.has_tag_name("script")));
        let rows = super::super::community::rows(&v).into_string();
        assert!(!rows.contains("<script"));
    }

    #[test]
    fn the_chart_shows_the_trail() {
        let now = 1_800_000_000;
        let trail: Vec<Sample> = (0..288u64)
            .map(|k| Sample {
                t: now - (287 - k) * 300,
                reached: k % 10 != 0,
                score: Some((k % 100) as u8),
            })
            .collect();
        let svg = chart(&trail, now).into_string();
        let doc = parse(&svg);
        assert_eq!(
            doc.descendants()
                .filter(|n| n.attribute("class") == Some("sample"))
                .count(),
            288
        );
        assert!(doc
            .descendants()
            .any(|n| n.attribute("class") == Some("score")));
    }
}
