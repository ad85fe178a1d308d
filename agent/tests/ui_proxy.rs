//! Issue 18, defect 6: a joined or running service's own web UI through the dashboard, behind
//! its login. One node in a network namespace (agent, tincd) runs the real Syncthing (the
//! service wrapper, Debian's binary); the dashboard's `/ui/syncthing/` must answer Syncthing's
//! GUI to a logged-in browser and send anyone else to the login page.
//!
//! The old code (main at 4b7764b) had no such route: `/ui/syncthing/` answered the fallback's
//! 404 "not found" with a session, and Syncthing's GUI was reachable only from a shell on the
//! node. This test failed there at "logged in: Syncthing's GUI" (status 404).
//! Needs root, tinc and syncthing.

mod microcloud;
mod web;

use microcloud::Cloud;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "ui proxy test password";
const HTTPS: &str = "10.213.0.1:8443";

fn hash(password: &str) -> String {
    use std::io::Write;
    let mut c = Command::new(microcloud::agent())
        .args(["seed", "hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(c.stdin.take().unwrap(), "{password}").unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success());
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

#[test]
fn the_dashboard_passes_syncthings_gui_through_behind_its_login() {
    let test = "the_dashboard_passes_syncthings_gui_through_behind_its_login";
    if !microcloud::available(test) {
        return;
    }
    if !std::path::Path::new("/usr/bin/syncthing").exists() {
        eprintln!("SKIP {test}: syncthing not installed (CI gets it from ci/deps.sh)");
        return;
    }
    let mut cloud = Cloud::new("ui", 1);
    {
        // The dashboard runs as its own user: it must reach the control socket in the root.
        use std::os::unix::fs::PermissionsExt;
        let top = cloud.nodes[0].root.parent().unwrap();
        std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let h = hash(PASSWORD);
    cloud.write_seed_text(
        1,
        microcloud::KEY,
        &format!(
            "peers = []\n[services]\nenable = [\"syncthing\"]\n[dashboard]\npassword_hash = \"{h}\"\n[network]\ninterface = \"eth0\"\n"
        ),
    );
    cloud.start_all();
    let n1 = &cloud.nodes[0];
    let ns = n1.ns.clone();
    web::wait_up(&ns, HTTPS, Duration::from_secs(30));
    let pin = web::tls::status_fingerprint(&n1.root);

    // Not logged in: the login page, for the UI and anything below it.
    for path in ["/ui/syncthing/", "/ui/syncthing/rest/system/version"] {
        let r = web::tls::get(&ns, HTTPS, &pin, path, None);
        assert_eq!(r.status, 303, "{path}: {}", r.text());
        assert_eq!(r.header("location"), Some("/login"), "{path}");
    }

    let cookie = web::tls::login(&ns, HTTPS, &pin, PASSWORD);
    // Syncthing takes a moment after the node is up.
    let t0 = Instant::now();
    let page = loop {
        let r = web::tls::get(&ns, HTTPS, &pin, "/ui/syncthing/", Some(&cookie));
        if r.status == 200 || t0.elapsed() > Duration::from_secs(60) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        page.status,
        200,
        "logged in: Syncthing's GUI: {}\n{}",
        page.text(),
        cloud.log(1)
    );
    let html = page.text();
    assert!(
        html.contains("<html") && html.contains("syncthing"),
        "Syncthing's GUI page: {}",
        &html[..html.len().min(600)]
    );
    // Its own scripts may run (same origin only); the dashboard's pages keep theirs.
    let csp = page.header("content-security-policy").unwrap_or("");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let own = web::tls::get(&ns, HTTPS, &pin, "/node", Some(&cookie));
    assert!(own
        .header("content-security-policy")
        .unwrap_or("")
        .starts_with("default-src 'none'"));

    // The GUI's REST calls pass too: the proxy gives Syncthing its API key (no Syncthing login
    // or CSRF token needed), and only this node's Syncthing answers.
    let v = web::tls::get(
        &ns,
        HTTPS,
        &pin,
        "/ui/syncthing/rest/system/version",
        Some(&cookie),
    );
    assert_eq!(v.status, 200, "{}", v.text());
    assert!(v.json()["version"].as_str().is_some(), "{}", v.text());

    // No other service, and no host of the request's choosing.
    let r = web::tls::get(&ns, HTTPS, &pin, "/ui/evil.example/", Some(&cookie));
    assert_eq!(r.status, 404, "{}", r.text());
    let r = web::tls::get(&ns, HTTPS, &pin, "/ui/tahoe/", Some(&cookie));
    assert_eq!(r.status, 404, "tahoe does not run here: {}", r.text());

    // The services page links the UI and says where the shared folder is.
    let r = web::tls::get(&ns, HTTPS, &pin, "/services", Some(&cookie));
    assert!(r.text().contains("href=\"/ui/syncthing/\""), "{}", r.text());
    let folder = n1.root.join("var/lib/cloudy/syncthing/shared");
    assert!(
        r.text()
            .contains(&format!("The shared folder is {}", folder.display())),
        "{}",
        r.text()
    );
}
