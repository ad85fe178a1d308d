//! User ratings for real: five nodes in network namespaces (agents, tincd, serf). Nodes 2 and
//! 3 offer the same `web` service (TCP listeners the test opens), so node 1's probe scores
//! them alike. A rating given with `cloudy-agent rate` on node 4 must reach node 1 within
//! 10 s over the exchange port; once three nodes (1, 4, 5) rated node 1's first choice low
//! and the other high, node 1's `select` turns to the other; with one rater it does not.
//! Node 5 rates through its dashboard's Rate form (HTTPS, logged in), and node 1's services
//! page shows the rating and the comment, escaped. Needs root, tinc and serf; skips, saying
//! why, without them.

mod microcloud;
mod web;

use microcloud::{discovery_available, hash, listen_in, wait_for, Cloud};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use web::chromium::{tool, Driver};

/// The bound for a rating to reach another member.
const WITHIN: Duration = Duration::from_secs(10);
const PASSWORD: &str = "ratings test password";
const EVIL: &str = "<script>alert(1)</script> slow";

/// The dashboard of `node`: its address, pinned certificate and a session cookie.
fn dashboard(node: &microcloud::Node) -> (String, String, String) {
    let addr = format!("{}:8443", node.lan());
    web::wait_up(&node.ns, &addr, Duration::from_secs(20));
    let pin = web::tls::status_fingerprint(&node.root);
    let cookie = web::tls::login(&node.ns, &addr, &pin, PASSWORD);
    (addr, pin, cookie)
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
    // The dashboard's unprivileged user must reach the control socket (tempdirs are 0700).
    {
        use std::os::unix::fs::PermissionsExt;
        let top = cloud.nodes[0].root.parent().unwrap();
        std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let h = hash(PASSWORD);
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
            &format!(
                "peers = [{peers}]\n{publish}[dashboard]\npassword_hash = \"{h}\"\n[network]\ninterface = \"eth0\"\n"
            ),
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
    rate(n4, &format!("{first}:8080"), "1", EVIL);
    let took = wait_for("n4's rating on n1", WITHIN, || {
        raters_of(n1, &first_id).contains(&n4.node_id())
    });
    eprintln!("n4's rating reached n1 in {:?}", t.elapsed());
    assert!(took < WITHIN);
    // One rater does not count yet.
    assert_eq!(select(n1)["best"]["record"]["node"], first.as_str());

    // 2. Three raters (n1 itself, n4, n5): the choice turns.
    rate(n4, &format!("{other}:8080"), "5", "fine");
    rate(n1, &format!("{first}:8080"), "1", "slow");
    rate(n1, &format!("{other}:8080"), "5", "fine");
    // Node 5 through its dashboard's Rate form. Without a session the form is refused (sent
    // to the login page) and nothing is rated.
    let n5 = &cloud.nodes[4];
    let (addr, pin, cookie) = dashboard(n5);
    let form = |provider: &str, stars: &str, comment: &str| {
        format!(
            "type=web&provider={}&stars={stars}&comment={}",
            web::urlencode(provider),
            web::urlencode(comment)
        )
    };
    let r = web::tls::post_form(
        &n5.ns,
        &addr,
        &pin,
        "/rate",
        None,
        &form(&format!("{first}:8080"), "5", "x"),
    );
    assert!(r.status == 303 || r.status == 307, "{}", r.status);
    assert!(
        !raters_of(n5, &first_id).contains(&n5.node_id()),
        "no rating without a session"
    );
    let page = web::tls::get(&n5.ns, &addr, &pin, "/services?type=web", Some(&cookie)).text();
    assert!(
        page.contains("action=\"/rate\""),
        "the form next to Join: {page}"
    );
    for (p, stars, c) in [(first.as_str(), "1", "slow"), (other, "5", "fine")] {
        let r = web::tls::post_form(
            &n5.ns,
            &addr,
            &pin,
            "/rate",
            Some(&cookie),
            &form(&format!("{p}:8080"), stars, c),
        );
        assert_eq!(r.status, 200);
        assert!(r.text().contains("rated "), "{}", r.text());
    }
    // A 10 KiB comment through the form: refused, said.
    let r = web::tls::post_form(
        &n5.ns,
        &addr,
        &pin,
        "/rate",
        Some(&cookie),
        &form(&format!("{first}:8080"), "3", &"x".repeat(10 * 1024)),
    );
    assert!(r.text().contains("280 allowed"), "{}", r.text());
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
    // The comment travels as text, and node 1's dashboard shows it escaped, with both parts.
    let text = std::fs::read_to_string(n1.root.join("var/lib/cloudy/ratings.json")).unwrap();
    assert!(text.contains(EVIL));
    let (addr, pin, cookie) = dashboard(n1);
    let page = web::tls::get(&n1.ns, &addr, &pin, "/services?type=web", Some(&cookie)).text();
    assert!(!page.contains("<script"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt; slow"),
        "{page}"
    );
    assert!(
        page.contains("5.0/5 (3 node(s))") && page.contains("1.0/5 (3 node(s))"),
        "{page}"
    );
    let api = web::tls::get(&n1.ns, &addr, &pin, "/api/services?type=web", Some(&cookie)).json();
    assert_eq!(api[0]["record"]["node"], other, "{api:#}");
    assert_eq!(api[0]["rating"]["count"], 3, "{api:#}");

    // 3. Chromium on node 1's dashboard: the Rate form next to Join, pressed as a user would.
    if !["chromium", "chromedriver"].iter().all(|t| tool(t)) {
        eprintln!("SKIP the Chromium part: chromium or chromedriver not installed");
        return;
    }
    let profile = tempfile::tempdir().unwrap();
    let driver = Driver::start(
        &n1.ns,
        profile.path(),
        &[format!(
            "--ignore-certificate-errors-spki-list={}",
            web::chromium::spki(&n1.root)
        )],
        "ratings-screenshots",
    );
    let base = format!("https://{addr}");
    driver.go(&format!("{base}/login"));
    driver.type_in("#password", PASSWORD);
    driver.click("#submit");
    driver.wait_until("the services page", |d| d.url().contains("/services"));
    driver.go(&format!("{base}/services?type=web"));
    let row = format!("tr[data-provider=\"{other}:8080\"]");
    driver.shot("ratings-01-services");
    driver.click(&format!("{row} select[name=stars] option[value=\"4\"]"));
    driver.type_in(
        &format!("{row} input[name=comment]"),
        "<b>ok</b> from chromium",
    );
    driver.click(&format!("{row} button.rate"));
    driver.wait_until("the rating's answer", |d| {
        d.eval("return document.body.textContent;")
            .as_str()
            .unwrap_or_default()
            .contains("rated ")
    });
    driver.go(&format!("{base}/services?type=web"));
    let cell = driver.text(&format!("{row} td.rating"));
    // 5, 5 and now 4 stars from node 1: a mean of 4.7; the comment shown as text.
    assert!(cell.contains("4.7/5 (3 node(s))"), "{cell}");
    assert!(cell.contains("<b>ok</b> from chromium"), "{cell}");
    let bold = driver.eval(&format!(
        "return document.querySelectorAll({}).length;",
        serde_json::json!(format!("{row} td.rating b"))
    ));
    assert_eq!(bold, 0, "the comment's markup is text, not markup");
    driver.shot("ratings-02-rated");
}
