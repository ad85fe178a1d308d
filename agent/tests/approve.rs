//! Approval for real: node 3's seed names the community and holds neither key nor invitation,
//! so it announces itself as pending (avahi-daemon in its namespace), shows its fingerprint,
//! and waits on its exchange port. Node 2 lists it (`cloudy-agent pending`), refuses a wrong or
//! malformed fingerprint with a clear message, approves the right one (`cloudy-agent approve`),
//! and node 3 then meshes with nodes 1 and 2. A stranger's approval (a node of another key
//! that calls its community by the same name) is shown for what it is. Agents, tincd, serf and
//! avahi-daemon in network namespaces (ci/netns-microcloud.sh); needs root.

mod microcloud;
mod web;

use microcloud::{discovery_available, hash, said, wait_for, Cloud, KEY};
use std::time::Duration;
use web::chromium::{tool, Driver};

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
            let o = cloud.cli(on, &["pending", "--json"]);
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(fp)
        },
    );
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
    // The announcement is written just after the pending line (once the address is known).
    let ann_file = cloud.nodes[2]
        .root
        .join("etc/avahi/services/cloudy-pending.service");
    wait_for(
        "node 3's pending announcement",
        Duration::from_secs(30),
        || ann_file.exists(),
    );
    let ann = std::fs::read_to_string(&ann_file).unwrap();
    assert!(ann.contains("_cloudy-pending._tcp"), "{ann}");
    assert!(!cloud.stored_key(3).contains(KEY));

    let t = std::time::Instant::now();
    wait_listed(&cloud, 2, &fp);
    eprintln!("listed on node 2 {:?} after node 3 was ready", t.elapsed());

    // A fingerprint of no pending node, and one that is not a fingerprint at all.
    let o = cloud.cli(2, &["approve", "AAAA-AAAA-AAAA-AAAA"]);
    let out = said(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("no pending node with fingerprint AAAA-AAAA-AAAA-AAAA")
            && out.contains(&format!("pending now: {fp}"))
            && out.contains("console"),
        "{out}"
    );
    let o = cloud.cli(2, &["approve", "ABCD-EFGH"]);
    let out = said(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("is not a fingerprint"), "{out}");
    assert_eq!(cloud.stored_key(3), "", "nothing granted yet");

    // The right one, typed in lower case without dashes.
    let t = std::time::Instant::now();
    let o = cloud.cli(2, &["approve", &fp.replace('-', "").to_lowercase()]);
    assert!(o.status.success(), "{}", said(&o));
    assert!(said(&o).contains("approved"), "{}", said(&o));
    assert_eq!(cloud.stored_key(3), KEY);
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
        !String::from_utf8_lossy(&cloud.cli(1, &["pending", "--json"]).stdout).contains(&fp)
    });
    let o = cloud.cli(1, &["approve", &fp]);
    assert_eq!(o.status.code(), Some(1), "{}", said(&o));
    assert!(
        said(&o).contains("no pending node with fingerprint"),
        "{}",
        said(&o)
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

    let o = cloud.cli(2, &["approve", &fp]);
    assert!(o.status.success(), "{}", said(&o));
    assert_eq!(cloud.stored_key(3), stranger_key);
    // The member's approval comes second: refused (the node is gone from the LAN's pending
    // list, or refuses a second approval if the goodbye has not arrived yet).
    let o = cloud.cli(1, &["approve", &fp]);
    let out = said(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("no pending node with fingerprint") || out.contains("not approved"),
        "{out}"
    );
    assert_eq!(
        cloud.stored_key(3),
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

const PASSWORD: &str = "approve test password";

/// The SPKI hash of a node's dashboard certificate, for Chromium's pin.
fn spki(root: &std::path::Path) -> String {
    use base64::Engine;
    use rustls::pki_types::pem::PemObject;
    use sha2::Digest;
    let pem = std::fs::read_to_string(root.join("var/lib/cloudy/dashboard.crt")).unwrap();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let cert = webpki::EndEntityCert::try_from(&der).unwrap();
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(
        cert.subject_public_key_info().as_ref(),
    ))
}

/// Chromium on node 1's dashboard: the Pending tab lists node 2 with its fingerprint, a typed
/// fingerprint of no pending node is refused with a clear message, and the node's Approve
/// button approves it: node 2 stores the key and meshes with node 1.
#[test]
fn the_dashboards_approve_button_approves_a_pending_node() {
    let test = "the_dashboards_approve_button_approves_a_pending_node";
    if !discovery_available(test) {
        return;
    }
    if !["chromium", "chromedriver"].iter().all(|t| tool(t)) {
        eprintln!("SKIP {test}: chromium or chromedriver not installed");
        return;
    }
    let mut cloud = Cloud::new("ad", 2);
    // The dashboard's unprivileged user must reach the control socket (tempdirs are 0700).
    {
        use std::os::unix::fs::PermissionsExt;
        let top = cloud.nodes[0].root.parent().unwrap();
        std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let h = hash(PASSWORD);
    cloud.write_seed_text(
        1,
        KEY,
        &format!(
            "peers = []\n[dashboard]\npassword_hash = \"{h}\"\n[network]\ninterface = \"eth0\"\n"
        ),
    );
    pending_seed(&cloud, 2);
    for i in 1..=2 {
        cloud.avahi(i, None);
    }
    cloud.nodes[0].start();
    cloud.nodes[1].start();
    let fp = pending_fingerprint(&cloud, 2);
    wait_listed(&cloud, 1, &fp);

    let n1 = &cloud.nodes[0];
    let addr = format!("{}:8443", n1.lan());
    web::wait_up(&n1.ns, &addr, Duration::from_secs(30));
    let profile = tempfile::tempdir().unwrap();
    let driver = Driver::start(
        &n1.ns,
        profile.path(),
        &[format!(
            "--ignore-certificate-errors-spki-list={}",
            spki(&n1.root)
        )],
        "approve-screenshots",
    );
    let base = format!("https://{addr}");
    driver.go(&format!("{base}/login"));
    driver.type_in("#password", PASSWORD);
    driver.click("#submit");
    driver.wait_until("the services page", |d| d.url().contains("/services"));
    driver.click("nav.tabs a[href=\"/pending\"]");
    driver.wait_until("the Pending tab", |d| d.url().contains("/pending"));
    let row = format!("tr[data-fingerprint=\"{fp}\"]");
    assert!(driver.text(&row).contains(&fp));
    driver.shot("approve-01-pending");

    // A fingerprint of no pending node, typed.
    driver.type_in("#approve-fingerprints", "AAAA-AAAA-AAAA-AAAA");
    driver.click("#approve-typed");
    driver.wait_until("the refusal", |d| {
        d.eval("return document.body.textContent;")
            .as_str()
            .unwrap_or_default()
            .contains("no pending node with fingerprint AAAA-AAAA-AAAA-AAAA")
    });
    let msg = driver.text("#message");
    assert!(msg.contains("console"), "{msg}");
    assert_eq!(cloud.stored_key(2), "");
    driver.shot("approve-02-wrong-fingerprint");

    driver.click(&format!("{row} button.approve"));
    driver.wait_until("the approval's answer", |d| {
        d.eval("return document.body.textContent;")
            .as_str()
            .unwrap_or_default()
            .contains("approved the node at 10.213.0.2")
    });
    driver.shot("approve-03-approved");
    assert_eq!(cloud.stored_key(2), KEY);
    cloud.wait_members(&[1, 2], Duration::from_secs(40));

    // The same tab's rekey button: both members move to a new key.
    driver.click("#rekey");
    driver.wait_until("the rekey's answer", |d| {
        d.eval("return document.body.textContent;")
            .as_str()
            .unwrap_or_default()
            .contains("Community key replaced (serial 1)")
    });
    let page = driver
        .eval("return document.body.textContent;")
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(page.contains("n2: switched to the new key"), "{page}");
    driver.shot("approve-04-rekeyed");
    let new = cloud.stored_key(1);
    assert_ne!(new, KEY);
    wait_for("node 2 takes the new key", Duration::from_secs(5), || {
        cloud.stored_key(2) == new
    });
}
