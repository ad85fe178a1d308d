//! Issue 15's setup mode for real, in Chromium: three nodes in network namespaces (real agents,
//! tincd, avahi-daemon and serf), each booted with a seed that names no community and no node
//! (only its address on the test LAN, which has no DHCP, and the dashboard's password hash, as
//! the console's generated password cannot be read here). Node A creates a community in its
//! setup page; B joins with an invitation made in A's Invite tab and pasted into B's setup
//! page; A and B then mesh (tinc, member lists, catalogs). C's setup page refuses a used token,
//! an expired one, one bound to another name, an unknown one, one whose inviter does not answer
//! and text that is no token, saying why; a cross-origin POST to a setup form is refused. B's agent restarted comes back a member. Screenshots of each step go
//! to CARGO_TARGET_TMPDIR/setup-screenshots (docs/screens/ holds copies for the README). Needs
//! root, tinc, avahi-daemon, serf, chromium and chromedriver; skips, saying why, without them.

mod microcloud;
mod web;

use microcloud::{discovery_available, hash, wait_for, Cloud};
use std::process::Command;
use std::time::{Duration, Instant};
use web::chromium::{tool, Driver};

const PASSWORD: &str = "setup test password";

fn agent(node: &microcloud::Node, args: &[&str]) -> String {
    let o = Command::new(microcloud::agent())
        .arg("--root")
        .arg(&node.root)
        .args(args)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn body(d: &Driver) -> String {
    d.eval("return document.body.textContent;")
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Logs in on `base` and lands on the setup page, as a person who just read the console.
fn login_to_setup(d: &Driver, base: &str) {
    d.go(&format!("{base}/login"));
    d.type_in("#password", PASSWORD);
    d.click("#submit");
    d.wait_until("the setup page", |d| d.url().ends_with("/setup"));
}

/// Pastes `token` into the join form and waits for the page that answers.
fn join_with(d: &Driver, base: &str, token: &str) -> String {
    d.go(&format!("{base}/setup"));
    d.type_in("#setup-token", token);
    d.click("#join");
    d.wait_until("the join's answer", |d| {
        d.eval("return document.querySelector('#message') !== null;")
            .as_bool()
            .unwrap_or(false)
    });
    d.text("#message")
}

#[test]
fn setup_mode_creates_joins_refuses_and_survives_a_restart() {
    let test = "setup_mode_creates_joins_refuses_and_survives_a_restart";
    if !discovery_available(test) {
        return;
    }
    if !["chromium", "chromedriver"].iter().all(|t| tool(t)) {
        eprintln!("SKIP {test}: chromium or chromedriver not installed (apt-get install chromium chromium-driver)");
        return;
    }
    let mut cloud = Cloud::new("su", 3);
    // The dashboard's unprivileged user must reach the control socket (tempdirs are 0700).
    {
        use std::os::unix::fs::PermissionsExt;
        let top = cloud.nodes[0].root.parent().unwrap();
        std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let h = hash(PASSWORD);
    for n in &cloud.nodes {
        let seed = format!(
            "version = 1\n[dashboard]\npassword_hash = \"{h}\"\n[network]\ninterface = \"eth0\"\n\
             gateway = \"10.213.0.254\"\naddress = \"10.213.0.{}/24\"\n",
            n.i
        );
        let p = n.root.join("boot/firmware/cloudy.toml");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, seed).unwrap();
    }
    for i in 1..=3 {
        cloud.avahi(i, None);
    }
    for n in &mut cloud.nodes {
        let ready = n.start();
        assert_eq!(ready["community"], serde_json::Value::Null, "{ready}");
    }
    let urls: Vec<String> = cloud
        .nodes
        .iter()
        .map(|n| format!("https://{}:8443", n.lan()))
        .collect();
    for n in &cloud.nodes {
        web::wait_up(&n.ns, &format!("{}:8443", n.lan()), Duration::from_secs(20));
    }
    // 1. Before anything: the screen and `status` say setup mode, and `status` reached the
    // running agent over its control socket.
    let a = &cloud.nodes[0];
    let setup_line = "setup mode: open https://cloudy.local:8443/ to create or join a community";
    let issue = std::fs::read_to_string(a.root.join("etc/issue.d/cloudy.issue")).unwrap();
    assert!(issue.contains(setup_line), "{issue}");
    let status = agent(a, &["status"]);
    assert!(status.contains(setup_line), "{status}");
    assert!(
        status.contains("agent:      running, in setup mode"),
        "{status}"
    );

    let pins: Vec<String> = cloud
        .nodes
        .iter()
        .map(|n| web::chromium::spki(&n.root))
        .collect();
    let profile = tempfile::tempdir().unwrap();
    // One browser on the LAN (in A's namespace) reaches all three dashboards.
    let d = Driver::start(
        &a.ns,
        profile.path(),
        &[format!(
            "--ignore-certificate-errors-spki-list={}",
            pins.join(",")
        )],
        "setup-screenshots",
    );

    // 2. A: name it, create a community; the answer shows an invitation with its QR code.
    let t0 = Instant::now();
    login_to_setup(&d, &urls[0]);
    d.shot("setup-1-a-setup-page");
    d.type_in("#setup-name", "alpha");
    d.click("#rename");
    d.wait_until("the rename", |d| body(d).contains("now named \"alpha\""));
    d.type_in("#setup-community", "kitchen");
    d.click("#create");
    d.wait_until("the community created", |d| {
        body(d).contains("Community \"kitchen\" created")
    });
    let created = t0.elapsed();
    assert!(d.text("#token").starts_with("cloudy1:"), "{}", body(&d));
    assert_eq!(
        d.eval("return document.querySelectorAll('#qr svg path').length;"),
        1,
        "the invitation's QR code"
    );
    d.shot("setup-2-a-created");
    assert!(
        agent(a, &["status"]).contains("agent:      running, a member of kitchen"),
        "{}",
        agent(a, &["status"])
    );
    // An invitation that expires in a minute, made now so that the clock runs meanwhile (the
    // shortest the CLI and the dashboard make).
    let short = agent(a, &["invite", "--expires", "1m"]);
    let short = short.lines().next().unwrap().trim().to_string();
    assert!(short.starts_with("cloudy1:"), "{short}");
    let short_made = Instant::now();
    let named = agent(a, &["invite", "--name", "gamma"]);
    let named = named.lines().next().unwrap().trim().to_string();
    assert!(named.starts_with("cloudy1:"), "{named}");

    // 3. A's dashboard is the normal one now, in the same session: its Invite tab.
    d.click("#open-dashboard");
    d.wait_until("A's dashboard", |d| !d.url().ends_with("/setup"));
    d.go(&format!("{}/invite", urls[0]));
    d.click("#invite");
    d.wait_until("the invitation", |d| {
        d.text("#token").starts_with("cloudy1:")
    });
    let token = d.text("#token");
    d.shot("setup-3-a-invite");

    // 4. B: paste it into the setup page's join form.
    login_to_setup(&d, &urls[1]);
    d.type_in("#setup-name", "beta");
    d.click("#rename");
    d.wait_until("the rename", |d| body(d).contains("now named \"beta\""));
    let t1 = Instant::now();
    let said = join_with(&d, &urls[1], &token);
    let joined = t1.elapsed();
    assert!(said.contains("Joined community \"kitchen\""), "{said}");
    d.shot("setup-4-b-joined");

    // 5. A and B mesh: each in the other's member list, tinc up, each in the other's catalog.
    let t2 = Instant::now();
    let members = cloud.wait_members(&[1, 2], Duration::from_secs(60));
    let (a, b, c) = (&cloud.nodes[0], &cloud.nodes[1], &cloud.nodes[2]);
    let b_vpn = b.vpn();
    assert!(a.ping(&b_vpn, 100), "A cannot ping B's VPN address {b_vpn}");
    let (a_id, b_id) = (a.node_id(), b.node_id());
    let has = |n: &microcloud::Node, id: &str| {
        n.services()
            .iter()
            .any(|s| s["node_id"] == id && s["type"] == "tincvpn")
    };
    wait_for("B in A's catalog", Duration::from_secs(60), || {
        has(a, &b_id)
    });
    wait_for("A in B's catalog", Duration::from_secs(60), || {
        has(b, &a_id)
    });
    let meshed = t2.elapsed();
    d.click("#open-dashboard");
    d.wait_until("B's dashboard", |d| !d.url().ends_with("/setup"));
    d.go(&format!("{}/node", urls[1]));
    d.wait_until("A on B's node page", |d| body(d).contains("alpha"));
    d.shot("setup-5-b-node");

    // 6. C refuses a used token, an expired one and an inviter that does not answer, and says
    // why; a cross-origin form post is refused before it reaches the agent.
    login_to_setup(&d, &urls[2]);
    let said = join_with(&d, &urls[2], &token);
    assert!(
        said.contains("Not joined") && said.contains("this invitation was already used"),
        "{said}"
    );
    d.shot("setup-6-c-used");
    let said = join_with(&d, &urls[2], &named);
    assert!(
        said.contains("this invitation is for node \"gamma\""),
        "{said}"
    );
    // Well formed, at A's address, but never made there (a fresh secret).
    let unknown =
        cloudy_agent::mesh::invite::Token::new(vec![format!("{}:6655", a.lan())]).to_string();
    let said = join_with(&d, &urls[2], &unknown);
    assert!(
        said.contains("this invitation is unknown here (wrong token, or revoked)"),
        "{said}"
    );
    let said = join_with(&d, &urls[2], "cloudy1:AAAAAAAAAAAAAAAAAAAAAA@10.213.0.3:1");
    assert!(
        said.contains("no inviting member answered at 10.213.0.3:1")
            && said.contains("is it up and on this LAN?"),
        "{said}"
    );
    let said = join_with(&d, &urls[2], "not a token");
    assert!(said.contains("not an invitation token"), "{said}");
    assert!(
        !said.contains("not a token\""),
        "the text is not echoed: {said}"
    );
    let c_addr = format!("{}:8443", c.lan());
    let pin = web::tls::status_fingerprint(&c.root);
    let cookie = web::tls::login(&c.ns, &c_addr, &pin, PASSWORD);
    let r = web::tls::request(
        &c.ns,
        &c_addr,
        &pin,
        "POST",
        "/setup/create",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &cookie),
            ("Origin", "https://evil.example"),
        ],
        b"community=forged",
    )
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(!c.root.join("var/lib/cloudy/community.json").exists());
    let wait = Duration::from_secs(62).saturating_sub(short_made.elapsed());
    std::thread::sleep(wait);
    let said = join_with(&d, &urls[2], &short);
    assert!(said.contains("this invitation has expired"), "{said}");
    d.shot("setup-7-c-expired");
    let status = agent(c, &["status"]);
    assert!(status.contains("running, in setup mode"), "{status}");

    // 7. B's agent restarted (as after a power cut): a member, not in setup mode.
    let b = &mut cloud.nodes[1];
    b.kill();
    let t3 = Instant::now();
    let ready = b.start();
    assert_eq!(ready["community"], "kitchen", "{ready}");
    assert_eq!(ready["node"], "beta", "{ready}");
    assert!(ready["vpn_address"].is_string(), "{ready}");
    let b = &cloud.nodes[1];
    wait_for("B's control socket", Duration::from_secs(20), || {
        agent(b, &["status"]).contains("agent:      running, a member of kitchen")
    });
    let status = agent(b, &["status"]);
    assert!(!status.contains("setup mode"), "{status}");
    assert!(
        cloud.nodes[0].ping(&cloud.nodes[1].vpn(), 100),
        "A cannot ping B after B's restart"
    );
    let back = t3.elapsed();
    // The browser's session on B was the old process's: B asks for a login again, then shows
    // the dashboard, not the setup page.
    d.go(&format!("{}/setup", urls[1]));
    d.wait_until("B's login", |d| d.url().ends_with("/login"));
    d.type_in("#password", PASSWORD);
    d.click("#submit");
    d.wait_until("B's dashboard", |d| d.url().contains("/services"));
    d.go(&format!("{}/setup", urls[1]));
    d.wait_until("B's setup page leads to the dashboard", |d| {
        d.url().contains("/services")
    });
    eprintln!(
        "setup: community created in {created:?}; B joined in {joined:?}; meshed (members \
         {members:?}) with catalogs in {meshed:?}; B back as a member in {back:?}"
    );
}
