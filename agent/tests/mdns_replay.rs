//! Attacks on the LAN's mDNS, against real agents, avahi-daemon and (where it matters) serf in
//! network namespaces; the attacker is python3-zeroconf, a second mDNS responder on the LAN
//! (issue 13, defects 9 and 12). Without serf, mDNS is a node's only path to others' records,
//! so what mDNS alone can do to a catalog shows. Needs root, tinc, avahi-daemon, serf and
//! Debian's python3-zeroconf; skips, saying why, without them.

mod microcloud;

use microcloud::{discovery_available, listen_in, wait_for, Cloud};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PYTHON: &str = "/usr/bin/python3";

fn zeroconf_available(test: &str) -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import zeroconf"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIP {test}: python3-zeroconf not installed (apt-get install python3-zeroconf)");
    }
    ok
}

/// Node `i`'s seed: a `web` service on port 8000+i and `extra` publish tables.
fn seed(cloud: &mut Cloud, i: usize, extra: &str) {
    let peers = if i == 1 { "" } else { "\"10.213.0.1:6655\"" };
    cloud.write_seed_text(
        i,
        microcloud::KEY,
        &format!(
            "peers = [{peers}]\n\
             [[services.publish]]\ntype = \"web\"\nport = {}\ndescription = \"web of n{i}\"\n\
             {extra}[network]\ninterface = \"eth0\"\n",
            8000 + i
        ),
    );
}

/// A cloud of `n` nodes with avahi-daemon each; without serf unless `serf`.
fn cloud(tag: &str, n: usize, serf: bool, extra: &[&str]) -> Cloud {
    let mut cloud = Cloud::new(tag, n);
    for i in 1..=n {
        seed(&mut cloud, i, extra.get(i - 1).copied().unwrap_or(""));
        if !serf {
            cloud.nodes[i - 1].env = vec![("CLOUDY_SERF".into(), "/nonexistent".into())];
        }
        cloud.avahi(i, None);
    }
    cloud
}

fn entry(node: &microcloud::Node, port: u64) -> Option<Value> {
    node.services().into_iter().find(|s| s["port"] == port)
}

/// The TXT pairs of a service file avahi-daemon announces, as the agent wrote it.
fn txt_of_file(node: &microcloud::Node, name: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(node.root.join("etc/avahi/services").join(name))
        .unwrap_or_else(|e| panic!("{name} on node {}: {e}", node.i));
    text.split("<txt-record>")
        .skip(1)
        .map(|t| {
            let t = t.split("</txt-record>").next().unwrap();
            let t = t
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&");
            let (k, v) = t.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// python3-zeroconf in namespace `ns` at `ip`, announcing one `_cloudy._tcp` instance with
/// exactly `txt` until killed. Returns once it is announced.
fn announce(ns: &str, ip: &str, instance: &str, port: u16, txt: &[(String, String)]) -> Child {
    let script = r#"
import json, socket, sys, time
from zeroconf import Zeroconf, ServiceInfo
ip, instance, port, txt = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
zc = Zeroconf(interfaces=[ip])
info = ServiceInfo("_cloudy._tcp.local.", instance + "._cloudy._tcp.local.",
                   addresses=[socket.inet_aton(ip)], port=port,
                   properties={k.encode(): v.encode() for k, v in txt},
                   server="replayer.local.")
zc.register_service(info)
print("up", flush=True)
time.sleep(600)
"#;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, PYTHON, "-c", script, ip, instance])
        .arg(port.to_string())
        .arg(serde_json::to_string(txt).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "up", "python3-zeroconf did not announce");
    child
}

/// Holds for `during` that `ok` stays true, polling.
fn holds(what: &str, during: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while t0.elapsed() < during {
        assert!(ok(), "{what} (after {:?})", t0.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Defect 9, replay. On 2293e0e an mDNS TXT record was the whole service record with a MAC
/// and no time: replayed at the member's address after the service stopped, it was put back
/// into every catalog (a stopped service, or an old Tahoe FURL, for as long as the replay
/// went on). Now a TXT record is a doorbell: an old one is ignored, and a doorbell brings no
/// record, it only makes the browser fetch the member's current list over the exchange port.
#[test]
fn a_replayed_txt_record_does_not_bring_back_a_stopped_service() {
    let test = "a_replayed_txt_record_does_not_bring_back_a_stopped_service";
    if !discovery_available(test) || !zeroconf_available(test) {
        return;
    }
    let mut cloud = cloud("rp", 2, false, &[]);
    let web1 = listen_in(&cloud.nodes[0].ns, 8001);
    let _web2 = listen_in(&cloud.nodes[1].ns, 8002);
    cloud.start_all();
    wait_for(
        "node 2 lists node 1's web service",
        Duration::from_secs(40),
        || entry(&cloud.nodes[1], 8001).is_some(),
    );
    // Captured as anyone on the LAN would have it (here straight from avahi's file).
    let captured = txt_of_file(&cloud.nodes[0], "cloudy-web-8001.service");
    eprintln!("captured TXT: {captured:?}");
    drop(web1);
    let gone = wait_for(
        "the stopped service leaves node 2's catalog",
        Duration::from_secs(10),
        || entry(&cloud.nodes[1], 8001).is_none(),
    );
    eprintln!("stopped service gone from node 2 in {gone:?}");
    // Replayed from node 1's own address (anyone can send from it on a LAN), under a fresh
    // instance name so that it is news to every browser.
    let mut replayer = announce(
        &cloud.nodes[0].ns,
        "10.213.0.1",
        "replayed web 8001",
        8001,
        &captured,
    );
    holds(
        "node 2 took the replayed record back into its catalog",
        Duration::from_secs(8),
        || entry(&cloud.nodes[1], 8001).is_none(),
    );
    assert!(
        entry(&cloud.nodes[1], 8002).is_some() || entry(&cloud.nodes[0], 8002).is_some(),
        "the cloud still works"
    );
    let _ = replayer.kill();
    let _ = replayer.wait();
}

/// Defect 9, goodbyes. On 2293e0e an mDNS goodbye (a TTL-0 announcement, which anyone on the
/// LAN can send, unsigned) for a member's service withdrew its record from every catalog at
/// once. Now a goodbye only makes the browser ask the member, which still lists the service.
#[test]
fn a_forged_goodbye_does_not_withdraw_a_live_record() {
    let test = "a_forged_goodbye_does_not_withdraw_a_live_record";
    if !discovery_available(test) || !zeroconf_available(test) {
        return;
    }
    let mut cloud = cloud("gb", 2, false, &[]);
    let _l: Vec<_> = (1..=2)
        .map(|i| listen_in(&cloud.nodes[i - 1].ns, 8000 + i as u16))
        .collect();
    cloud.start_all();
    wait_for(
        "node 2 lists node 1's web service",
        Duration::from_secs(40),
        || entry(&cloud.nodes[1], 8001).is_some(),
    );
    // The goodbye, from node 2's namespace (an attacker on its LAN): a PTR record for node
    // 1's instance with TTL 0, nothing signed. A receiver drops the record 1 s after a
    // goodbye (RFC 6762 10.1) and each goodbye restarts that second, so they go in pairs
    // 2 s apart while we watch (a browser that re-resolved the instance loses it again).
    let script = r#"
import sys, time
from zeroconf import Zeroconf, DNSOutgoing, DNSPointer, const
zc = Zeroconf(interfaces=[sys.argv[1]])
name = sys.argv[2] + "._cloudy._tcp.local."
print("up", flush=True)
end = time.time() + float(sys.argv[3])
while time.time() < end:
    for _ in range(2):
        out = DNSOutgoing(const._FLAGS_QR_RESPONSE | const._FLAGS_AA)
        out.add_answer_at_time(DNSPointer("_cloudy._tcp.local.", const._TYPE_PTR, const._CLASS_IN, 0, name), 0)
        zc.send(out)
        time.sleep(0.1)
    time.sleep(2)
zc.close()
"#;
    let mut forger = Command::new("ip")
        .args(["netns", "exec", &cloud.nodes[1].ns, PYTHON, "-c", script])
        .args(["10.213.0.2", "n1 web 8001", "11"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(forger.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "up", "the goodbyes were not sent");
    holds(
        "node 2 withdrew node 1's live service on a forged goodbye",
        Duration::from_secs(10),
        || entry(&cloud.nodes[1], 8001).is_some(),
    );
    let st = forger.wait().unwrap();
    assert!(st.success(), "the goodbyes were not sent");
    // And the real doorbells keep node 1's records through several refreshes (each one a
    // goodbye and a new announcement from avahi-daemon, then a fetch), with no gap.
    holds(
        "node 1's service left node 2's catalog between doorbell refreshes",
        Duration::from_secs(25),
        || entry(&cloud.nodes[1], 8001).is_some(),
    );
}

/// Defect 12, second half. On 2293e0e every typed field of a record went into its TXT record
/// in clear (`f.furl=pb://...` for a Tahoe introducer: a capability, readable by anyone on the
/// LAN). Now no TXT record on the LAN carries a field; the FURL still reaches members, through
/// the authenticated exchange.
#[test]
fn no_capability_in_any_txt_record() {
    let test = "no_capability_in_any_txt_record";
    if !discovery_available(test) || !zeroconf_available(test) {
        return;
    }
    let furl = "pb://tubid7xq@10.213.0.1:3456/swissnumSECRET";
    let device = "MFZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-BONSGYY-LTMRWAD";
    let extra = format!(
        "[[services.publish]]\ntype = \"tahoe-introducer\"\nport = 3456\ndescription = \"grid\"\nfields = {{ furl = \"{furl}\" }}\n\
         [[services.publish]]\ntype = \"syncthing\"\nport = 22000\ndescription = \"folders\"\nfields = {{ device_id = \"{device}\" }}\n"
    );
    let mut cloud = cloud("cap", 2, true, &[&extra]);
    let _l: Vec<_> = [(0, 8001), (0, 3456), (0, 22000), (1, 8002)]
        .iter()
        .map(|&(i, p)| listen_in(&cloud.nodes[i].ns, p))
        .collect();
    cloud.start_all();
    wait_for(
        "node 2 lists the introducer",
        Duration::from_secs(40),
        || entry(&cloud.nodes[1], 3456).is_some(),
    );
    let intro = entry(&cloud.nodes[1], 3456).unwrap();
    assert_eq!(intro["fields"]["furl"], furl, "members still get the FURL");

    // Everything `_cloudy._tcp` on the LAN, as a stranger's mDNS client on it sees it.
    let script = r#"
import json, sys, time
from zeroconf import Zeroconf, ServiceBrowser
zc = Zeroconf(interfaces=[sys.argv[1]])
found = {}
class L:
    def add_service(self, zc, t, name): found[name] = None
    def update_service(self, zc, t, name): pass
    def remove_service(self, zc, t, name): pass
ServiceBrowser(zc, "_cloudy._tcp.local.", L())
time.sleep(3)
out = []
for name in found:
    info = zc.get_service_info("_cloudy._tcp.local.", name, 3000)
    if info:
        out.append({"name": name, "port": info.port,
                    "txt": {k.decode(): (v or b"").decode() for k, v in info.properties.items()}})
zc.close()
print(json.dumps(out))
"#;
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &cloud.nodes[1].ns,
            PYTHON,
            "-c",
            script,
            "10.213.0.2",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let seen: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    let ports: Vec<u64> = seen.iter().filter_map(|s| s["port"].as_u64()).collect();
    for p in [3456, 22000, 8001, 8002] {
        assert!(
            ports.contains(&p),
            "the LAN shows what nodes offer (port {p}): {seen:?}"
        );
    }
    let mut on_lan = serde_json::to_string(&seen).unwrap();
    for name in [
        "cloudy-tahoe-introducer-3456.service",
        "cloudy-syncthing-22000.service",
    ] {
        for (k, v) in txt_of_file(&cloud.nodes[0], name) {
            on_lan += &format!(" {k}={v}");
        }
    }
    assert!(
        !on_lan.contains("swissnum") && !on_lan.contains("furl"),
        "a capability on the LAN: {on_lan}"
    );
    assert!(
        !on_lan.contains("f."),
        "a record's field on the LAN: {on_lan}"
    );
    assert!(
        !on_lan.contains(device),
        "a record's field on the LAN: {on_lan}"
    );
}
