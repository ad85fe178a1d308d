//! Issue 16, distribution without a central server, for real: agents in network namespaces
//! (tincd, the exchange), node 1 holding a verified bundle (checked again when its agent
//! starts), node 2 with no update url. Node 2's `cloudy-agent update check` finds the signed
//! manifest at member n1 over the VPN and streams the bundle from n1's update server, which
//! serves only on its VPN address, only to members, under `[update] max_rate_kib`:
//! - the transfer is cut (node 2's agent killed half way) and resumes by an HTTP Range request
//!   from where the partial file ended, and the bundle is renamed into place only whole and
//!   matching;
//! - the cap holds roughly (a bound with wide margins: the resumed part takes at least half the
//!   time the cap allows, never a timing target);
//! - node 1's update port is closed on its LAN address, and refuses a VPN address that is no
//!   other member's (403);
//! - node 2 never fetches from a non-member: a server on node 3 (no agent, not a member) that
//!   answers on the update port at its LAN address is never contacted;
//! - node 2's dashboard (Updates tab, `/api/updates`) says it holds 1.1, and which release
//!   versions run across the community (n1 on 1.1, n2 on 1.0, from their node infos).
//!
//! Needs root and tinc (the microcloud harness), curl; says SKIP without them.

mod microcloud;
mod web;

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudy_model::update::{encode_signing_key, sha256_hex, Channel, Manifest, SignedManifest};
use ed25519_dalek::SigningKey;
use microcloud::{available, Cloud};

const BOARD: &str = "pc-686-pae";
const PORT: u16 = 6657;
const CAP_KIB: u64 = 256;
const SIZE: usize = 3 << 20;
const PASSWORD: &str = "update test password";

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n + 70; 32])
}

fn write(root: &std::path::Path, p: &str, b: &[u8]) {
    let p = root.join(p);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b).unwrap();
}

/// `curl` in a namespace: (HTTP status or 0, stderr).
fn curl(ns: &str, url: &str) -> (u32, String) {
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-m",
            "5",
        ])
        .args(["-w", "%{http_code}", url])
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A TCP server in namespace `ns` at `addr` that counts connections and answers 200 with a
/// manifest-looking body: what a non-member would offer.
fn counting_server(ns: &str, addr: &str) -> Arc<AtomicUsize> {
    let path = format!("/var/run/netns/{ns}");
    let addr = addr.to_string();
    let l = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        TcpListener::bind(addr).unwrap()
    })
    .join()
    .unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            c.fetch_add(1, Ordering::SeqCst);
            use std::io::Write;
            let mut s = s;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
        }
    });
    n
}

#[test]
fn a_member_serves_the_bundle_resumably_capped_and_to_members_only() {
    let test = "a_member_serves_the_bundle_resumably_capped_and_to_members_only";
    if !available(test) {
        return;
    }
    if !Command::new("sh")
        .args(["-c", "command -v curl"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("SKIP {test}: curl not installed");
        return;
    }
    let mut cloud = Cloud::new("upd", 3);
    {
        // The dashboard's unprivileged user must reach the control socket under the roots.
        use std::os::unix::fs::PermissionsExt;
        let top = cloud.nodes[0].root.parent().unwrap();
        std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let h = microcloud::hash(PASSWORD);
    // The release each node runs, the keys every image trusts (K = 2 of 3).
    let public: Vec<String> = (1..=3).map(|i| encode_signing_key(&key(i)).1).collect();
    let keys = serde_json::json!({"threshold": 2, "keys": public}).to_string();
    for (i, version) in [(1, "1.1"), (2, "1.0")] {
        let root = cloud.nodes[i - 1].root.clone();
        write(
            &root,
            "usr/lib/cloudy/release.json",
            format!("{{\"board\": \"{BOARD}\", \"version\": \"{version}\"}}").as_bytes(),
        );
        write(&root, "usr/lib/cloudy/update-keys.json", keys.as_bytes());
        // Slots (RAUC's config) so that node 2 fetches bundles; RAUC itself is not run here.
        write(
            &root,
            "etc/rauc/system.conf",
            b"[system]\ncompatible=test\n",
        );
        cloud.nodes[i - 1]
            .env
            .push(("CLOUDY_RAUC".into(), "/bin/false".into()));
    }
    // Node 1 serves with the cap; node 2 has no url and installs nothing by itself.
    let peers = |i: usize| {
        if i == 1 {
            String::new()
        } else {
            "\"10.213.0.1:6655\"".into()
        }
    };
    for i in 1..=2 {
        cloud.write_seed_text(
            i,
            microcloud::KEY,
            &format!(
                "peers = [{}]\n[update]\nauto = false\nmax_rate_kib = {CAP_KIB}\n[dashboard]\npassword_hash = \"{h}\"\n[network]\ninterface = \"eth0\"\n",
                peers(i)
            ),
        );
    }
    // The bundle node 1 holds, with its signed manifest, as an earlier check left them.
    let bundle: Vec<u8> = (0..SIZE).map(|i| (i * 31 % 253) as u8).collect();
    let name = "cloudy-pc-686-pae-1.1.raucb";
    let mut signed = SignedManifest {
        manifest: Manifest {
            board: BOARD.into(),
            version: "1.1".parse().unwrap(),
            bundle: name.into(),
            sha256: sha256_hex(&bundle),
            size: SIZE as u64,
            channel: Channel::Stable,
            min_version: "1.0".parse().unwrap(),
        },
        signatures: vec![],
    };
    signed.sign(&key(1));
    signed.sign(&key(2));
    let r1 = cloud.nodes[0].root.clone();
    write(
        &r1,
        &format!("var/lib/cloudy/update/bundles/{name}"),
        &bundle,
    );
    write(
        &r1,
        &format!("var/lib/cloudy/update/bundles/{BOARD}.manifest.json"),
        signed.to_json().as_bytes(),
    );
    let non_member = counting_server(&cloud.nodes[2].ns, &format!("10.213.0.3:{PORT}"));

    cloud.nodes[0].start();
    cloud.nodes[1].start();
    cloud.wait_members(&[1, 2], Duration::from_secs(30));
    let vpn1 = cloud.nodes[0].vpn();
    assert!(
        cloud.nodes[1].ping(&vpn1, 50),
        "node 2 reaches node 1 over the VPN"
    );
    // Node 1's update server binds its VPN address once tinc brought it up (retried every 5 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, _) = curl(&cloud.nodes[1].ns, &format!("http://{vpn1}:{PORT}/x"));
        if code == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "node 1 serves on {vpn1}:{PORT}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Members only: closed on the LAN address, 403 for a VPN address that is no other member.
    let (code, err) = curl(
        &cloud.nodes[1].ns,
        &format!("http://10.213.0.1:{PORT}/{name}"),
    );
    assert_eq!(
        code, 0,
        "node 1's LAN address does not serve updates: {err}"
    );
    let (code, _) = curl(
        &cloud.nodes[0].ns,
        &format!("http://{vpn1}:{PORT}/{BOARD}.manifest.json"),
    );
    assert_eq!(code, 403, "node 1's own VPN address is no other member");
    let (code, _) = curl(
        &cloud.nodes[1].ns,
        &format!("http://{vpn1}:{PORT}/{BOARD}.manifest.json"),
    );
    assert_eq!(code, 200, "member node 2 gets the manifest");
    let (code, _) = curl(
        &cloud.nodes[1].ns,
        &format!("http://{vpn1}:{PORT}/secret.part"),
    );
    assert_eq!(
        code, 404,
        "only the held bundle and its manifest are served"
    );

    // Node 2 checks: the manifest from n1, then the bundle, under the cap. Cut it half way.
    let r2 = cloud.nodes[1].root.clone();
    let partial = r2.join(format!(
        "var/lib/cloudy/update/partial/{}.part",
        signed.manifest.sha256
    ));
    let socket = r2.join("run/cloudy/control.sock");
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut check = Command::new(microcloud::agent())
        .arg("--root")
        .arg(&r2)
        .args(["update", "check"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let cut_at = 1 << 20;
    loop {
        let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if have >= cut_at {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "node 2 fetches the bundle ({have} bytes so far)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let first_part = t0.elapsed();
    cloud.nodes[1].kill();
    let _ = check.kill();
    let _ = check.wait();
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(
        kept >= cut_at && kept < SIZE as u64,
        "a partial file was left: {kept}"
    );
    assert!(
        !r2.join(format!("var/lib/cloudy/update/bundles/{name}"))
            .exists(),
        "nothing under the final name before the whole bundle matched"
    );
    // The cap: 1 MiB at 256 KiB/s takes ~4 s; at least half of that.
    assert!(
        first_part >= Duration::from_secs_f64(cut_at as f64 / (CAP_KIB * 1024) as f64 / 2.0),
        "the first MiB took {first_part:?}, faster than twice the cap"
    );

    // Node 2 again: the check resumes from the partial file with a Range request.
    cloud.nodes[1].start();
    cloud.wait_members(&[1, 2], Duration::from_secs(30));
    assert!(
        cloud.nodes[1].ping(&vpn1, 100),
        "node 2 reaches node 1 over the VPN again"
    );
    // The CLI asks the running agent (which asks the members) once its socket answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "node 2's control socket");
        std::thread::sleep(Duration::from_millis(100));
    }
    let t1 = Instant::now();
    let out = cloud.cli(2, &["update", "check"]);
    let resumed = t1.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "first part {first_part:?} ({kept} bytes), resumed part {resumed:?} ({} bytes):\n{text}",
        SIZE as u64 - kept
    );
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("held:     1.1") && text.contains("from member n1"),
        "node 2 holds 1.1, from member n1:\n{text}"
    );
    let got = std::fs::read(r2.join(format!("var/lib/cloudy/update/bundles/{name}"))).unwrap();
    assert_eq!(
        sha256_hex(&got),
        signed.manifest.sha256,
        "the whole bundle, matching"
    );
    assert!(!partial.exists(), "the partial file became the bundle");
    let log1 = std::fs::read_to_string(cloud.nodes[0].log()).unwrap();
    let ranges: Vec<u64> = log1
        .lines()
        .filter(|l| l.contains(&format!("update server: {name} to")))
        .filter_map(|l| l.split("bytes ").nth(1)?.split('-').next()?.parse().ok())
        .collect();
    assert_eq!(
        ranges.first(),
        Some(&0),
        "the first transfer from byte 0: {ranges:?}"
    );
    assert!(
        ranges.contains(&kept),
        "a later transfer resumed at the partial file's end ({kept}): {ranges:?}"
    );
    let log2 = std::fs::read_to_string(cloud.nodes[1].log()).unwrap();
    assert!(
        log2.contains("resuming the bundle from member n1"),
        "node 2 resumed"
    );
    let rest = (SIZE as u64 - kept) as f64;
    assert!(
        resumed >= Duration::from_secs_f64(rest / (CAP_KIB * 1024) as f64 / 2.0),
        "the rest ({rest} bytes) took {resumed:?}: faster than twice the cap"
    );
    // Node 2 now serves it on: node 1 (a member) gets the manifest from node 2.
    let vpn2 = cloud.nodes[1].vpn();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, _) = curl(
            &cloud.nodes[0].ns,
            &format!("http://{vpn2}:{PORT}/{BOARD}.manifest.json"),
        );
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "node 2 serves what it verified");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        non_member.load(Ordering::SeqCst),
        0,
        "the non-member's server was never asked"
    );
    // Node 2's dashboard: its Updates tab says what it holds, and which versions run where
    // (from the members' node infos, fetched every 5 s).
    let ns2 = cloud.nodes[1].ns.clone();
    Command::new("ip")
        .args(["-n", &ns2, "link", "set", "lo", "up"])
        .status()
        .unwrap();
    let addr = "10.213.0.2:8443";
    web::wait_up(&ns2, addr, Duration::from_secs(30));
    let pin = web::tls::status_fingerprint(&cloud.nodes[1].root);
    let cookie = web::tls::login(&ns2, addr, &pin, PASSWORD);
    let api = web::tls::get(&ns2, addr, &pin, "/api/updates", Some(&cookie)).json();
    assert_eq!(api["held"], "1.1", "{api}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        let page = web::tls::get(&ns2, addr, &pin, "/updates", Some(&cookie)).text();
        let table = page
            .split("community-versions")
            .nth(1)
            .unwrap_or("")
            .to_string();
        if table.contains("<td>1.1</td><td>pc-686-pae</td><td>1: n1</td>")
            && table.contains("<td>1.0</td><td>pc-686-pae</td><td>1: n2</td>")
        {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "the Updates tab lists n1 on 1.1 and n2 on 1.0:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        page.contains("<th>held</th><td>1.1 (verified; served to members)</td>"),
        "{page}"
    );

    let status = cloud.cli(2, &["update", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["held"], "1.1");
    assert_eq!(v["release"]["version"], "1.0");
}
