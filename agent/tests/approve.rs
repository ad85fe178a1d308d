//! Approval for real: node 3's seed names the community and holds neither key nor invitation,
//! so it announces itself as pending (avahi-daemon in its namespace), shows its fingerprint,
//! and waits on its exchange port. Node 2 lists it (`cloudy-agent pending`), refuses a wrong or
//! malformed fingerprint with a clear message, approves the right one (`cloudy-agent approve`),
//! and node 3 then meshes with nodes 1 and 2. A stranger's approval (a node of another key
//! that calls its community by the same name) is shown for what it is. Agents, tincd, serf and
//! avahi-daemon in network namespaces (ci/netns-microcloud.sh); needs root.

mod microcloud;

use microcloud::{agent, discovery_available, wait_for, Cloud, KEY};
use std::process::{Command, Output};
use std::time::Duration;

/// Node `i`'s seed: the community's name only (no key, no invitation).
fn pending_seed(cloud: &Cloud, i: usize) {
    let seed = format!(
        "version = 1\n[node]\nname = \"n{i}\"\n[community]\nname = \"test\"\n\
         [network]\ninterface = \"eth0\"\naddress = \"10.213.0.{i}/24\"\n"
    );
    let p = cloud.nodes[i - 1].root.join("boot/firmware/cloudy.toml");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, seed).unwrap();
}

/// `cloudy-agent ARGS` against node `i`'s running agent.
fn cli(cloud: &Cloud, i: usize, args: &[&str]) -> Output {
    Command::new(agent())
        .arg("--root")
        .arg(&cloud.nodes[i - 1].root)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The fingerprint node `i` printed in its `{"cloudy":"pending"}` line.
fn pending_fingerprint(cloud: &Cloud, i: usize) -> String {
    let mut fp = String::new();
    wait_for("the pending line", Duration::from_secs(20), || {
        let out = std::fs::read_to_string(cloud.nodes[i - 1].out()).unwrap_or_default();
        fp = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["cloudy"] == "pending")
            .and_then(|v| v["fingerprint"].as_str().map(String::from))
            .unwrap_or_default();
        !fp.is_empty()
    });
    fp
}

/// Node `on` lists the pending node with fingerprint `fp`.
fn wait_listed(cloud: &Cloud, on: usize, fp: &str) {
    wait_for(
        "the pending node listed by a member",
        Duration::from_secs(30),
        || {
            let o = cli(cloud, on, &["pending", "--json"]);
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(fp)
        },
    );
}

fn stored_key(cloud: &Cloud, i: usize) -> String {
    std::fs::read_to_string(cloud.nodes[i - 1].root.join("var/lib/cloudy/community.key"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn a_pending_node_is_approved_by_fingerprint_and_meshes() {
    let test = "a_pending_node_is_approved_by_fingerprint_and_meshes";
    if !discovery_available(test) {
        return;
    }
    let mut cloud = Cloud::new("ap", 3);
    pending_seed(&cloud, 3);
    for i in 1..=3 {
        cloud.avahi(i, None);
    }
    cloud.nodes[0].start();
    cloud.nodes[1].start();
    let r3 = cloud.nodes[2].start();
    assert_eq!(r3["community"], serde_json::Value::Null, "{r3}");
    let fp = pending_fingerprint(&cloud, 3);
    assert_eq!(fp.len(), 19, "{fp}");
    // The console and the login screen show it; the announcement carries no secret.
    let issue =
        std::fs::read_to_string(cloud.nodes[2].root.join("etc/issue.d/cloudy.issue")).unwrap();
    assert!(issue.contains(&fp), "{issue}");
    let ann = std::fs::read_to_string(
        cloud.nodes[2]
            .root
            .join("etc/avahi/services/cloudy-pending.service"),
    )
    .unwrap();
    assert!(ann.contains("_cloudy-pending._tcp"), "{ann}");
    assert!(!stored_key(&cloud, 3).contains(KEY));

    let t = std::time::Instant::now();
    wait_listed(&cloud, 2, &fp);
    eprintln!("listed on node 2 {:?} after node 3 was ready", t.elapsed());

    // A fingerprint of no pending node, and one that is not a fingerprint at all.
    let o = cli(&cloud, 2, &["approve", "AAAA-AAAA-AAAA-AAAA"]);
    let said = text(&o);
    assert_eq!(o.status.code(), Some(1), "{said}");
    assert!(
        said.contains("no pending node with fingerprint AAAA-AAAA-AAAA-AAAA")
            && said.contains(&format!("pending now: {fp}"))
            && said.contains("console"),
        "{said}"
    );
    let o = cli(&cloud, 2, &["approve", "ABCD-EFGH"]);
    let said = text(&o);
    assert!(!o.status.success(), "{said}");
    assert!(said.contains("is not a fingerprint"), "{said}");
    assert_eq!(stored_key(&cloud, 3), "", "nothing granted yet");

    // The right one, typed in lower case without dashes.
    let t = std::time::Instant::now();
    let o = cli(&cloud, 2, &["approve", &fp.replace('-', "").to_lowercase()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("approved"), "{}", text(&o));
    assert_eq!(stored_key(&cloud, 3), KEY);
    let took = cloud.wait_members(&[1, 2, 3], Duration::from_secs(40));
    eprintln!(
        "approved in {:?}; all three list each other {took:?} later",
        t.elapsed() - took
    );
    let failed = cloud.ping_all(&[1, 2, 3], 25);
    assert!(failed.is_empty(), "no mesh after the approval: {failed:?}");
    let out = std::fs::read_to_string(cloud.nodes[2].out()).unwrap();
    assert!(out.contains("\"cloudy\":\"approved\""), "{out}");
    // Its announcement is withdrawn; a second approval finds no pending node.
    assert!(!cloud.nodes[2]
        .root
        .join("etc/avahi/services/cloudy-pending.service")
        .exists());
    wait_for("the goodbye", Duration::from_secs(15), || {
        !String::from_utf8_lossy(&cli(&cloud, 1, &["pending", "--json"]).stdout).contains(&fp)
    });
    let o = cli(&cloud, 1, &["approve", &fp]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("no pending node with fingerprint"),
        "{}",
        text(&o)
    );
}

/// The limit of approval, shown: the pending node cannot tell a member from anyone else on the
/// LAN, so a stranger holding another key but calling its community by the same name can
/// approve it first. Then the node takes no other approval (the real member's is refused), it
/// never joins the real community (not in node 1's member list), and its console and ready
/// output say who approved it: the admin, who compared the fingerprint and sees the node
/// missing, resets it. README, Security model.
#[test]
fn a_strangers_approval_wins_once_and_the_node_never_joins_the_community() {
    let test = "a_strangers_approval_wins_once_and_the_node_never_joins_the_community";
    if !discovery_available(test) {
        return;
    }
    let mut cloud = Cloud::new("as", 3);
    let stranger_key = "a stranger's key, not the community's";
    // Node 2 is the stranger: its own key, no peers, the same community name.
    cloud.write_seed_text(
        2,
        stranger_key,
        "peers = []\n[network]\ninterface = \"eth0\"\n",
    );
    pending_seed(&cloud, 3);
    for i in 1..=3 {
        cloud.avahi(i, None);
    }
    cloud.nodes[0].start();
    cloud.nodes[1].start();
    cloud.nodes[2].start();
    let fp = pending_fingerprint(&cloud, 3);
    wait_listed(&cloud, 2, &fp);
    wait_listed(&cloud, 1, &fp);

    let o = cli(&cloud, 2, &["approve", &fp]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(stored_key(&cloud, 3), stranger_key);
    // The member's approval comes second: refused (the node is gone from the LAN's pending
    // list, or refuses a second approval if the goodbye has not arrived yet).
    let o = cli(&cloud, 1, &["approve", &fp]);
    let said = text(&o);
    assert_eq!(o.status.code(), Some(1), "{said}");
    assert!(
        said.contains("no pending node with fingerprint") || said.contains("not approved"),
        "{said}"
    );
    assert_eq!(
        stored_key(&cloud, 3),
        stranger_key,
        "the first approval holds"
    );
    // Node 3 meshes with the stranger, never with node 1.
    cloud.wait_members(&[2, 3], Duration::from_secs(40));
    std::thread::sleep(Duration::from_secs(3));
    assert!(!cloud.nodes[0]
        .member_ids()
        .contains(&cloud.nodes[2].node_id()));
    let out = std::fs::read_to_string(cloud.nodes[2].out()).unwrap();
    assert!(out.contains("\"cloudy\":\"approved\""), "{out}");
}
