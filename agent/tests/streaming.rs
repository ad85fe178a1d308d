//! Live streaming with real ffmpeg and real HTTP.
//!
//! `relay_chain_in_process`: source -> peer A -> peer B in one process on loopback (the stream
//! code alone, catalogs given by the test). The microcloud test (real agents in network
//! namespaces) is below it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudy_agent::catalog::Record;
use cloudy_agent::kinds::streaming::{self, Config, Stream};
use cloudy_agent::os::system::System;

fn ffmpeg() -> Option<PathBuf> {
    let f = streaming::ffmpeg();
    if f.exists() {
        Some(f)
    } else {
        eprintln!(
            "SKIP: {} not installed (apt-get install ffmpeg; CI gets it from ci/deps.sh)",
            f.display()
        );
        None
    }
}

/// 20 s of test pattern, H.264 with a key frame every second, as a small mp4.
fn make_input(ffmpeg: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("input.mp4");
    let st = Command::new(ffmpeg)
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25",
            "-t",
            "20",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "ffmpeg could not make the test input");
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn node_id(c: char) -> String {
    std::iter::repeat_n(c, 32).collect()
}

/// The record a node's agent would publish for its stream (loopback: the in-process test
/// builds catalogs itself, so the address check of the network path does not apply).
fn record_of(s: &Stream, name: &str) -> Option<Record> {
    s.record(Record {
        kind: String::new(),
        description: String::new(),
        node: name.into(),
        node_id: s.node_id.clone(),
        host: format!("{name}.local"),
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: 0,
        microcloud: "test".into(),
        fields: BTreeMap::new(),
    })
}

fn status(port: u16) -> serde_json::Value {
    let body = streaming::http::get_blocking(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "/stream/status",
        1 << 20,
        Duration::from_secs(2),
    )
    .unwrap_or_default();
    serde_json::from_slice(&body).unwrap_or_default()
}

#[test]
fn relay_chain_in_process() {
    let Some(ff) = ffmpeg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = make_input(&ff, dir.path());
    // The agent's kind of runtime, driven by a thread of its own while the test thread waits.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rt = runtime.handle().clone();
    std::thread::spawn(move || runtime.block_on(std::future::pending::<()>()));
    // Who publishes what: filled in as the nodes start, read by the peers' catalogs.
    type Published = Arc<Mutex<Vec<(String, Arc<Stream>)>>>;
    let streams: Published = Arc::default();
    let catalog: streaming::relay::Catalog = {
        let s = streams.clone();
        Arc::new(move || {
            s.lock()
                .unwrap()
                .iter()
                .filter_map(|(n, st)| record_of(st, n))
                .collect()
        })
    };
    let start = |name: &str, id: char, config: Config| {
        let root = dir.path().join(name);
        let running = rt
            .block_on(streaming::start(streaming::Options {
                sys: System::new(&root),
                ffmpeg: ff.clone(),
                node: name.into(),
                node_id: node_id(id),
                config,
                catalog: catalog.clone(),
                user: None,
            }))
            .unwrap();
        streams
            .lock()
            .unwrap()
            .push((name.to_string(), running.stream.clone()));
        running
    };
    let (ps, pa, pb) = (free_port(), free_port(), free_port());
    let _s = start(
        "src",
        'a',
        Config {
            source: Some(input.display().to_string()),
            id: Some("film".into()),
            port: Some(ps),
            provider: None,
        },
    );
    let a = start(
        "peer-a",
        'b',
        Config {
            port: Some(pa),
            provider: Some("src".into()),
            ..Config::default()
        },
    );
    let _b = start(
        "peer-b",
        'c',
        Config {
            port: Some(pb),
            provider: Some("peer-a".into()),
            ..Config::default()
        },
    );
    let took = wait_for("B serves segments", Duration::from_secs(30), || {
        status(pb)["segments"]
            .as_array()
            .is_some_and(|s| s.len() >= 3)
    });
    eprintln!("B has 3 segments {took:?} after start");
    let sb = status(pb);
    assert_eq!(sb["provider"]["node"], "peer-a", "{sb}");
    assert_eq!(sb["hops"], 2);
    assert_eq!(sb["origin"], node_id('a'));
    assert!(status(pa)["served_to"]["127.0.0.1"].as_u64().unwrap() > 0);
    // Byte for byte what the source's ffmpeg wrote, under the same names.
    let src_dir = dir.path().join("src/run/cloudy/streaming/source");
    let b_dir = dir.path().join("peer-b/run/cloudy/streaming/relay");
    let mut same = 0;
    for seq in sb["segments"].as_array().unwrap() {
        let name = format!("seg{}.ts", seq.as_u64().unwrap());
        if let (Ok(x), Ok(y)) = (
            std::fs::read(src_dir.join(&name)),
            std::fs::read(b_dir.join(&name)),
        ) {
            assert_eq!(x, y, "{name} differs");
            same += 1;
        }
    }
    assert!(same >= 2, "compared {same} segments");

    // A goes: B carries on from the source.
    let before = status(pb)["segments"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_u64()
        .unwrap();
    drop(a);
    let took = wait_for(
        "B fetches from another provider",
        Duration::from_secs(10),
        || {
            let s = status(pb);
            s["provider"]["node"] == "src"
                && s["segments"]
                    .as_array()
                    .unwrap()
                    .last()
                    .unwrap()
                    .as_u64()
                    .unwrap()
                    > before + 1
        },
    );
    eprintln!("B switched to the source and got new segments {took:?} after A stopped");
    let sb = status(pb);
    assert_eq!(sb["hops"], 1);
    assert_eq!(sb["switches"], 1);
    let segs: Vec<u64> = sb["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(
        segs.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap: {segs:?}"
    );
}

/// A provider that answers every playlist request with `playlist` and every other request
/// with `segment`; returns its port and the paths it was asked for.
fn hostile(playlist: &'static str, segment: &'static [u8]) -> (u16, Arc<Mutex<Vec<String>>>) {
    use std::io::{BufRead, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let asked: Arc<Mutex<Vec<String>>> = Arc::default();
    let a = asked.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut r = std::io::BufReader::new(c);
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
                    break;
                }
            }
            a.lock().unwrap().push(path.clone());
            let body: &[u8] = if path.ends_with("index.m3u8") {
                playlist.as_bytes()
            } else {
                segment
            };
            let mut c = r.into_inner();
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = c.write_all(body);
        }
    });
    (port, asked)
}

fn provider_record(name: &str, id: char, port: u16) -> Record {
    Record {
        kind: "streaming".into(),
        description: String::new(),
        node: name.into(),
        node_id: node_id(id),
        host: format!("{name}.local"),
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port,
        microcloud: "test".into(),
        fields: [
            ("stream_id", "film".to_string()),
            ("playlist", "/stream/film/index.m3u8".into()),
            ("origin", node_id(id)),
            ("hops", "0".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    }
}

/// Providers that serve a playlist pointing out of the cache, or a segment that is not
/// MPEG-TS: the peer asks them for nothing further, writes nothing of theirs, and ends up
/// relaying the real source (here ffmpeg's test pattern, encoded with libx264).
#[test]
fn hostile_providers_are_left_for_a_real_one() {
    let Some(ff) = ffmpeg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rt = runtime.handle().clone();
    std::thread::spawn(move || runtime.block_on(std::future::pending::<()>()));
    let (evil1, asked1) = hostile(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:5\n#EXTINF:1.0,\n../../../../../tmp/pwned.ts\n",
        b"pwned",
    );
    let (evil2, asked2) = hostile(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:5\n#EXTINF:1.0,\nseg5.ts\n",
        b"<html>not a video</html>",
    );
    let ps = free_port();
    let source = rt
        .block_on(streaming::start(streaming::Options {
            sys: System::new(dir.path().join("src")),
            ffmpeg: ff.clone(),
            node: "src".into(),
            node_id: node_id('a'),
            config: Config {
                source: Some("testsrc".into()),
                id: Some("film".into()),
                port: Some(ps),
                provider: None,
            },
            catalog: Arc::new(Vec::new),
            user: None,
        }))
        .unwrap();
    let src = source.stream.clone();
    let catalog: streaming::relay::Catalog = Arc::new(move || {
        let mut v = vec![
            provider_record("evil1", 'e', evil1),
            provider_record("evil2", 'f', evil2),
        ];
        v.extend(record_of(&src, "src"));
        v
    });
    let pp = free_port();
    let peer_root = dir.path().join("peer");
    let _peer = rt
        .block_on(streaming::start(streaming::Options {
            sys: System::new(&peer_root),
            ffmpeg: ff.clone(),
            node: "peer".into(),
            node_id: node_id('b'),
            config: Config {
                port: Some(pp),
                // Named first: it is tried first.
                provider: Some("evil1".into()),
                ..Config::default()
            },
            catalog,
            user: None,
        }))
        .unwrap();
    wait_for(
        "the peer relays the source",
        Duration::from_secs(40),
        || {
            let s = status(pp);
            s["provider"]["node"] == "src" && !s["segments"].as_array().unwrap().is_empty()
        },
    );
    assert!(!asked1.lock().unwrap().is_empty(), "evil1 was tried first");
    assert!(
        asked1
            .lock()
            .unwrap()
            .iter()
            .all(|p| p == "/stream/film/index.m3u8"),
        "evil1 was asked for more than its playlist: {:?}",
        asked1.lock().unwrap()
    );
    assert!(!Path::new("/tmp/pwned.ts").exists());
    let cache = peer_root.join("run/cloudy/streaming/relay");
    let src_dir = dir.path().join("src/run/cloudy/streaming/source");
    for e in std::fs::read_dir(&cache).unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        assert!(
            streaming::playlist::segment_seq(&name).is_some() || name.starts_with('.'),
            "{name} in the cache"
        );
        let bytes = std::fs::read(e.path()).unwrap();
        assert!(
            !bytes.starts_with(b"<html>"),
            "evil2's segment was kept as {name}"
        );
        if let Ok(orig) = std::fs::read(src_dir.join(&name)) {
            assert!(orig == bytes, "{name} differs from the source's");
        }
    }
    // evil2, if tried, was asked only for what its playlist named.
    let asked2 = asked2.lock().unwrap();
    assert!(
        asked2
            .iter()
            .all(|p| p == "/stream/film/index.m3u8" || p == "/stream/film/seg5.ts"),
        "{asked2:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The microcloud: real `cloudy-agent run` nodes in network namespaces (tincd, serf), the stream
// run by each agent's service manager as its own process, ffmpeg on the source.

mod microcloud;

use microcloud::{available, wait_for, Cloud, Node};
use serde_json::Value;

const PORT: u16 = streaming::DEFAULT_PORT;

/// GET from inside namespace `ns`: a short-lived thread joins it, so the socket lives there.
fn get_in(ns: &str, addr: SocketAddr, path: &str) -> Result<Vec<u8>, String> {
    let (ns, path) = (ns.to_string(), path.to_string());
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(format!("/var/run/netns/{ns}")).map_err(|e| e.to_string())?;
        // SAFETY: plain syscall on this thread only.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns {ns}: {}", std::io::Error::last_os_error()));
        }
        streaming::http::get_blocking(addr, &path, 32 << 20, Duration::from_secs(3))
    })
    .join()
    .unwrap()
}

/// A node's `/stream/status`, asked on the node itself; Null while it does not answer.
fn status_of(n: &Node) -> Value {
    get_in(
        &n.ns,
        SocketAddr::from(([127, 0, 0, 1], PORT)),
        "/stream/status",
    )
    .ok()
    .and_then(|b| serde_json::from_slice(&b).ok())
    .unwrap_or(Value::Null)
}

fn segments(s: &Value) -> Vec<u64> {
    s["segments"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

/// The stream runs as an unprivileged user: it must reach into the nodes' roots.
fn open_roots(cloud: &Cloud) {
    use std::os::unix::fs::PermissionsExt;
    let parent = cloud.nodes[0].root.parent().unwrap();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The seed of a node: bootstrapping from node 1, with `extra` sections.
fn seed(cloud: &mut Cloud, i: usize, extra: &str) {
    let peers = if i == 1 { "" } else { "\"10.213.0.1:6655\"" };
    cloud.write_seed_text(
        i,
        microcloud::KEY,
        &format!("peers = [{peers}]\n{extra}[network]\ninterface = \"eth0\"\n"),
    );
}

/// The test input where the unprivileged stream user can read it.
fn shared_input(ff: &Path) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let input = make_input(ff, dir.path());
    std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, input)
}

/// `cloudy-agent join streaming <provider>` on node `n`; returns when the agent runs it.
fn join(n: &Node, provider: &str) {
    let o = Command::new("ip")
        .args(["netns", "exec", &n.ns, &microcloud::agent(), "--root"])
        .arg(&n.root)
        .args(["join", "streaming", provider, "--wait", "60"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "join streaming {provider} on n{}: {}{}",
        n.i,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Whether node `n`'s catalog lists a streaming provider on node `of`.
fn lists_stream_of(n: &Node, of: &Node) -> bool {
    n.services()
        .iter()
        .any(|s| s["type"] == "streaming" && s["ip"] == of.lan().as_str())
}

/// Source n1, peer A = n2 (enabled: relays the only provider there is), peer B = n3 (joins A).
fn chain(tag: &str, input: &Path) -> Cloud {
    let mut cloud = Cloud::new(tag, 3);
    seed(
        &mut cloud,
        1,
        &format!(
            "[services]\nenable = [\"streaming\"]\n[streaming]\nsource = \"{}\"\nid = \"film\"\n",
            input.display()
        ),
    );
    seed(&mut cloud, 2, "[services]\nenable = [\"streaming\"]\n");
    seed(&mut cloud, 3, "");
    open_roots(&cloud);
    cloud.start_all();
    cloud
}

#[test]
fn source_peer_peer_and_failover_between_namespaces() {
    let test = "source_peer_peer_and_failover_between_namespaces";
    let Some(ff) = ffmpeg() else { return };
    if !available(test) {
        return;
    }
    if microcloud::serf().is_none() {
        eprintln!("SKIP {test}: serf not installed (apt-get install serf)");
        return;
    }
    let t0 = Instant::now();
    let (_input_dir, input) = shared_input(&ff);
    let cloud = chain("hl", &input);
    let (s, a, b) = (&cloud.nodes[0], &cloud.nodes[1], &cloud.nodes[2]);

    // A relays the source; B sees A's stream in its catalog and joins A.
    let took = wait_for("A relays the source", Duration::from_secs(60), || {
        let st = status_of(a);
        st["provider"]["node"] == "n1" && !segments(&st).is_empty()
    });
    eprintln!("A relaying {took:?} after the agents were ready");
    wait_for("B lists A's stream", Duration::from_secs(30), || {
        lists_stream_of(b, a)
    });
    let j0 = Instant::now();
    join(b, "n2");
    let took = wait_for("B serves segments", Duration::from_secs(30), || {
        segments(&status_of(b)).len() >= 3
    });
    eprintln!(
        "B has 3 segments {:?} after `join streaming n2`",
        j0.elapsed().max(took)
    );

    // B's segments came through A, and are the source's bytes.
    let sb = status_of(b);
    assert_eq!(sb["provider"]["node"], "n2", "{sb}");
    assert_eq!(sb["hops"], 2, "{sb}");
    assert_eq!(sb["origin"], s.node_id().as_str());
    assert_eq!(
        sb["upstream"],
        serde_json::json!([&a.node_id()[..8], &s.node_id()[..8]])
    );
    let sa = status_of(a);
    assert!(
        sa["served_to"][b.lan()].as_u64().unwrap_or(0) > 0,
        "A served nothing to B: {sa}"
    );
    let src_dir = s.root.join("run/cloudy/streaming/source");
    let b_dir = b.root.join("run/cloudy/streaming/relay");
    let mut same = 0;
    for seq in segments(&sb) {
        let name = format!("seg{seq}.ts");
        if let (Ok(x), Ok(y)) = (
            std::fs::read(src_dir.join(&name)),
            std::fs::read(b_dir.join(&name)),
        ) {
            assert!(x == y, "{name}: B's copy differs from the source's");
            same += 1;
        }
    }
    assert!(
        same >= 2,
        "only {same} segments of B still on the source to compare"
    );
    // And a player's view: B's playlist over the network, from n1's namespace.
    let pl = get_in(
        &s.ns,
        SocketAddr::new(b.lan().parse().unwrap(), PORT),
        "/stream/film/index.m3u8",
    )
    .unwrap();
    let pl = streaming::playlist::Playlist::parse(&pl).unwrap();
    assert!(pl.segments.len() >= 3);

    // A's agent dies (and its stream with it): B carries on from the source within 10 s.
    let before = *segments(&status_of(b)).last().unwrap();
    let mut cloud = cloud;
    cloud.nodes[1].kill();
    let k0 = Instant::now();
    let (s, b) = (&cloud.nodes[0], &cloud.nodes[2]);
    let took = wait_for(
        "B continues from another provider",
        Duration::from_secs(10),
        || {
            let st = status_of(b);
            st["provider"]["node"] == "n1" && segments(&st).last().is_some_and(|&l| l > before + 1)
        },
    );
    eprintln!("B took new segments from n1 {took:?} after A was killed");
    let sb = status_of(b);
    assert_eq!(sb["hops"], 1);
    let segs = segments(&sb);
    assert!(
        segs.windows(2).all(|w| w[1] == w[0] + 1),
        "a gap in B's sequence: {segs:?}"
    );
    assert!(k0.elapsed() < Duration::from_secs(15));
    assert!(
        status_of(s)["served_to"][b.lan()].as_u64().unwrap() > 0,
        "the source served nothing to B"
    );

    // ffmpeg on the source dies: the stream process restarts it, B keeps receiving.
    let ss = status_of(s);
    let ffmpeg_pid = ss["ffmpeg_pid"].as_u64().expect("ffmpeg runs") as i32;
    let last = *segments(&status_of(b)).last().unwrap();
    unsafe { libc::kill(ffmpeg_pid, libc::SIGKILL) };
    let took = wait_for(
        "ffmpeg restarted and B fed again",
        Duration::from_secs(30),
        || {
            let (ss, sb) = (status_of(s), status_of(b));
            ss["ffmpeg_starts"].as_u64() == Some(2)
                && ss["ffmpeg_pid"]
                    .as_u64()
                    .is_some_and(|p| p as i32 != ffmpeg_pid)
                && segments(&sb).last().is_some_and(|&l| l > last + 1)
        },
    );
    eprintln!("ffmpeg killed: B fed again {took:?} later");

    // The stream process itself dies: the agent restarts it and publishes it again.
    let services = |n: &Node| -> Value {
        std::fs::read(n.root.join("run/cloudy/services.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    };
    let pid = services(s)["services"]["streaming"]["pid"]
        .as_u64()
        .unwrap() as i32;
    assert!(pid > 0);
    let last = *segments(&status_of(b)).last().unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let took = wait_for(
        "the stream process restarted and B fed again",
        Duration::from_secs(40),
        || {
            let st = &services(s)["services"]["streaming"];
            st["state"] == "running"
                && st["pid"].as_u64().is_some_and(|p| p as i32 != pid)
                && segments(&status_of(b))
                    .last()
                    .is_some_and(|&l| l > last + 1)
                && lists_stream_of(b, s)
        },
    );
    eprintln!("stream process killed: restarted, republished and B fed again {took:?} later");
    eprintln!("{test}: {:?} in all", t0.elapsed());
}

/// Pid, name, resident and private dirty memory (heap, stacks, relocated data: what the process
/// costs beyond library code that can be dropped and reread) in KiB of `pid` and every process
/// below it.
fn tree_rss(pid: u32) -> Vec<(u32, String, u64, u64)> {
    let mut parent: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            if let Some(pp) = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|s| s.parse().ok())
            {
                parent.push((p, pp));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parent.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree.into_iter()
        .filter_map(|p| {
            let st = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            let field = |k: &str| {
                st.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| v.trim().to_string())
            };
            let rss = field("VmRSS:")?.split_whitespace().next()?.parse().ok()?;
            let rollup =
                std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).unwrap_or_default();
            let private: u64 = rollup
                .lines()
                .filter(|l| l.starts_with("Private_Dirty:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmd
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let name = match field("Name:")?.as_str() {
                "cloudy-agent" if args.iter().any(|a| a == "stream") => {
                    "cloudy-agent stream".into()
                }
                "cloudy-agent" => "cloudy-agent run".into(),
                n => n.to_string(),
            };
            Some((p, name, rss, private))
        })
        .collect()
}

/// Until a segment of node `n`'s own playlist is served by `n`.
fn first_segment_served(n: &Node) -> bool {
    let local = SocketAddr::from(([127, 0, 0, 1], PORT));
    let Ok(pl) = get_in(&n.ns, local, "/stream/film/index.m3u8") else {
        return false;
    };
    let Ok(pl) = streaming::playlist::Playlist::parse(&pl) else {
        return false;
    };
    pl.segments.first().is_some_and(|g| {
        get_in(&n.ns, local, &format!("/stream/film/{}", g.name())).is_ok_and(|b| !b.is_empty())
    })
}

/// `make bench` (`bench/agent.sh streaming`): stream start-up at the first and second hop, and the
/// memory of the source's agent, its stream process and ffmpeg.
#[test]
#[ignore]
fn bench_streaming() {
    let test = "bench_streaming";
    let Some(ff) = ffmpeg() else { return };
    if !available(test) || microcloud::serf().is_none() {
        eprintln!("SKIP {test}: needs tinc and serf");
        return;
    }
    let (_input_dir, input) = shared_input(&ff);
    let mut cloud = Cloud::new("hb", 3);
    seed(
        &mut cloud,
        1,
        &format!(
            "[services]\nenable = [\"streaming\"]\n[streaming]\nsource = \"{}\"\nid = \"film\"\n",
            input.display()
        ),
    );
    seed(&mut cloud, 2, "");
    seed(&mut cloud, 3, "");
    open_roots(&cloud);
    cloud.start_all();
    let (s, a, b) = (&cloud.nodes[0], &cloud.nodes[1], &cloud.nodes[2]);
    wait_for("the source streams", Duration::from_secs(60), || {
        first_segment_served(s)
    });
    wait_for("A lists the source", Duration::from_secs(30), || {
        lists_stream_of(a, s)
    });
    let t = Instant::now();
    join(a, "n1");
    wait_for("A serves a segment", Duration::from_secs(60), || {
        first_segment_served(a)
    });
    let hop1 = t.elapsed();
    wait_for("B lists A", Duration::from_secs(30), || {
        lists_stream_of(b, a)
    });
    let t = Instant::now();
    join(b, "n2");
    wait_for("B serves a segment", Duration::from_secs(60), || {
        first_segment_served(b)
    });
    let hop2 = t.elapsed();
    assert_eq!(status_of(b)["provider"]["node"], "n2");
    // Let the source settle into its steady state before measuring memory.
    std::thread::sleep(Duration::from_secs(5));
    let pid = s.child.as_ref().unwrap().id();
    let procs = tree_rss(pid);
    let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
    println!("| streaming (3 nodes, 320x240 H.264 test input, copied) | RSS | private dirty |");
    println!("|---|---|---|");
    println!(
        "| start-up, 1st hop (`join streaming n1` -> first segment served on A) | {:.2} s | |",
        hop1.as_secs_f64()
    );
    println!(
        "| start-up, 2nd hop (`join streaming n2` -> first segment served on B) | {:.2} s | |",
        hop2.as_secs_f64()
    );
    let (mut total, mut total_private) = (0, 0);
    for (p, name, rss, private) in procs
        .iter()
        .filter(|(_, n, _, _)| n != "tincd" && n != "serf")
    {
        println!(
            "| RSS on the source: {name} (pid {p}) | {} | {} |",
            mib(*rss),
            mib(*private)
        );
        total += rss;
        total_private += private;
    }
    println!(
        "| RSS on the source: agent + stream + ffmpeg | {} | {} |",
        mib(total),
        mib(total_private)
    );
}
