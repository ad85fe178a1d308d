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
use cloudy_agent::streaming::{self, Config, Stream};
use cloudy_agent::system::System;

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

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
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
    assert!(status(pa)["served_bytes"].as_u64().unwrap() > 0);
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
