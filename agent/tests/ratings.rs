//! User ratings for real: five nodes in network namespaces (agents, tincd, serf). Nodes 2 and
//! 3 offer the same `web` service (TCP listeners the test opens), so node 1's probe scores
//! them alike. A rating given with `cloudy-agent rate` on node 4 must reach node 1 within
//! 10 s over the exchange port; once three nodes (1, 4, 5) rated node 1's first choice low
//! and the other high, node 1's `select` turns to the other; with one rater it does not.
//! Needs root, tinc and serf; skips, saying why, without them.

mod microcloud;

use microcloud::{discovery_available, listen_in, Cloud};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

/// The bound for a rating to reach another member.
const WITHIN: Duration = Duration::from_secs(10);

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
}

fn agent(node: &microcloud::Node, args: &[&str]) -> std::process::Output {
    Command::new(microcloud::agent())
        .arg("--root")
        .arg(&node.root)
        .args(args)
        .output()
        .unwrap()
}

fn select(node: &microcloud::Node) -> Value {
    let o = agent(node, &["select", "web", "--json"]);
    assert!(
        o.status.success(),
        "select: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn rate(node: &microcloud::Node, provider: &str, stars: &str, comment: &str) {
    let o = agent(
        node,
        &["rate", "web", provider, stars, "--comment", comment],
    );
    assert!(
        o.status.success(),
        "rate on n{}: {}{}",
        node.i,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The raters whose rating of `provider_id` node `node` holds (its ratings file).
fn raters_of(node: &microcloud::Node, provider_id: &str) -> Vec<String> {
    let text =
        std::fs::read_to_string(node.root.join("var/lib/cloudy/ratings.json")).unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or_default();
    v["ratings"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter(|r| r["provider"] == provider_id)
                .filter_map(|r| r["rater"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_rating_reaches_another_node_and_turns_a_close_choice() {
    let test = "a_rating_reaches_another_node_and_turns_a_close_choice";
    if !discovery_available(test) {
        return;
    }
    let mut cloud = Cloud::new("rt", 5);
    for i in 1..=5 {
        let peers = if i == 1 { "" } else { "\"10.213.0.1:6655\"" };
        let publish = if i == 2 || i == 3 {
            format!("[[services.publish]]\ntype = \"web\"\nport = 8080\ndescription = \"web of n{i}\"\n")
        } else {
            String::new()
        };
        cloud.write_seed_text(
            i,
            microcloud::KEY,
            &format!("peers = [{peers}]\n{publish}[network]\ninterface = \"eth0\"\n"),
        );
        // Scans only when the test asks (select scans unprobed providers).
        cloud.nodes[i - 1]
            .env
            .push(("CLOUDY_PROBE_FIRST_S".into(), "100000".into()));
    }
    let _web2 = listen_in(&cloud.nodes[1].ns, 8080);
    let _web3 = listen_in(&cloud.nodes[2].ns, 8080);
    cloud.start_all();
    cloud.wait_members(&[1, 2, 3, 4, 5], Duration::from_secs(60));
    for i in [1, 4, 5] {
        let n = &cloud.nodes[i - 1];
        wait_for(
            &format!("n{i} lists both web providers"),
            Duration::from_secs(60),
            || n.services().iter().filter(|s| s["type"] == "web").count() == 2,
        );
    }

    // Node 1's choice on the probe alone: two alike providers, scores close.
    let n1 = &cloud.nodes[0];
    let v = select(n1);
    let first = v["best"]["record"]["node"].as_str().unwrap().to_string();
    let other = if first == "n2" { "n3" } else { "n2" };
    let ranked = v["ranked"].as_array().unwrap();
    let score = |node: &str| {
        ranked.iter().find(|r| r["record"]["node"] == node).unwrap()["probe"]["score"]
            .as_u64()
            .unwrap()
    };
    let (s1, s2) = (score(&first), score(other));
    eprintln!("before ratings: {first} ({s1}) over {other} ({s2})");
    assert!(s1.abs_diff(s2) <= 10, "technical scores close: {v:#}");
    let id_of = |name: &str| {
        let i: usize = name[1..].parse().unwrap();
        cloud.nodes[i - 1].node_id()
    };
    let (first_id, other_id) = (id_of(&first), id_of(other));

    // 1. A rating on node 4 reaches node 1 within 10 s.
    let n4 = &cloud.nodes[3];
    let t = Instant::now();
    rate(
        n4,
        &format!("{first}:8080"),
        "1",
        "<script>alert(1)</script> slow",
    );
    let took = wait_for("n4's rating on n1", WITHIN, || {
        raters_of(n1, &first_id).contains(&n4.node_id())
    });
    eprintln!("n4's rating reached n1 in {:?}", t.elapsed());
    assert!(took < WITHIN);
    // One rater does not count yet.
    assert_eq!(select(n1)["best"]["record"]["node"], first.as_str());

    // 2. Three raters (n1 itself, n4, n5): the choice turns.
    rate(n4, &format!("{other}:8080"), "5", "fine");
    for i in [1, 5] {
        let n = &cloud.nodes[i - 1];
        rate(n, &format!("{first}:8080"), "1", "slow");
        rate(n, &format!("{other}:8080"), "5", "fine");
    }
    wait_for("three raters of each on n1", WITHIN, || {
        raters_of(n1, &first_id).len() == 3 && raters_of(n1, &other_id).len() == 3
    });
    let v = select(n1);
    assert_eq!(v["best"]["record"]["node"], other, "{v:#}");
    // Both parts shown: the technical score and the users' rating, and the blend.
    let best = &v["best"];
    assert_eq!(best["rating"]["count"], 3, "{best:#}");
    assert_eq!(best["rating"]["mean"], 5.0);
    let tech = best["probe"]["score"].as_f64().unwrap();
    assert_eq!(best["blended"].as_f64().unwrap(), 0.8 * tech + 20.0);

    // A node cannot rate itself: n2 rating its own web is refused by its agent.
    let n2 = &cloud.nodes[1];
    let o = agent(n2, &["rate", "web", "n2:8080", "5"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot rate itself"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The comment travels as text (the dashboard escapes it).
    let text = std::fs::read_to_string(n1.root.join("var/lib/cloudy/ratings.json")).unwrap();
    assert!(text.contains("<script>alert(1)</script> slow"));
}
