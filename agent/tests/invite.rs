//! Invitations for real: node 1 (seeded with the key) makes an invitation with
//! `cloudy-agent invite`; node 2, whose seed holds only that token, redeems it at boot over the
//! exchange port, keeps the key, and meshes; a used token and a made-up one are refused with
//! reasons the refused node shows in its ready line. Agents and tincd in network namespaces
//! (ci/netns-microcloud.sh); needs root, `ip netns` and Debian's `tinc`.

mod microcloud;
mod web;

use microcloud::{agent, available, Cloud, KEY};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `cloudy-agent invite ARGS` on node `i` (through its control socket, which opens just after
/// the ready line), the token it printed.
fn invite(cloud: &Cloud, i: usize, args: &[&str]) -> String {
    let sock = cloud.nodes[i - 1].root.join("run/cloudy/control.sock");
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = Command::new(agent())
        .arg("--root")
        .arg(&cloud.nodes[i - 1].root)
        .arg("invite")
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "invite failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// Node `i`'s seed: a name, the community's name and an invitation in place of the key.
fn invited_seed(cloud: &Cloud, i: usize, token: &str) -> std::path::PathBuf {
    let seed = format!(
        "version = 1\n[node]\nname = \"n{i}\"\n[community]\nname = \"test\"\ninvite = \"{token}\"\n\
         peers = [\"10.213.0.1:6655\"]\n[network]\ninterface = \"eth0\"\naddress = \"10.213.0.{i}/24\"\n"
    );
    let p = cloud.nodes[i - 1].root.join("boot/firmware/cloudy.toml");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, seed).unwrap();
    p
}

#[test]
fn a_node_joins_with_an_invitation_and_a_used_or_wrong_one_is_refused() {
    if !available("a_node_joins_with_an_invitation_and_a_used_or_wrong_one_is_refused") {
        return;
    }
    let mut cloud = Cloud::new("iv", 3);
    let r1 = cloud.nodes[0].start();
    assert!(r1["errors"].as_array().unwrap().is_empty(), "{r1}");
    let token = invite(&cloud, 1, &["--name", "n2", "--expires", "1h"]);
    assert!(
        token.starts_with("cloudy1:") && token.contains("@10.213.0.1:6655"),
        "{token}"
    );
    // The inviter keeps a hash, never the token.
    let stored =
        std::fs::read_to_string(cloud.nodes[0].root.join("var/lib/cloudy/invites.json")).unwrap();
    let secret = token["cloudy1:".len()..].split('@').next().unwrap();
    assert!(!stored.contains(secret), "the token is stored: {stored}");

    let seed2 = invited_seed(&cloud, 2, &token);
    let r2 = cloud.nodes[1].start();
    assert_eq!(r2["community"], "test", "{r2}");
    assert!(r2["errors"].as_array().unwrap().is_empty(), "{r2}");
    cloud.wait_members(&[1, 2], Duration::from_secs(20));
    let failed = cloud.ping_all(&[1, 2], 25);
    assert!(
        failed.is_empty(),
        "no mesh after the invitation: {failed:?}"
    );
    // The key is kept like a seed's, and the token has left the medium.
    let key =
        std::fs::read_to_string(cloud.nodes[1].root.join("var/lib/cloudy/community.key")).unwrap();
    assert_eq!(key.trim(), KEY);
    let after = std::fs::read_to_string(&seed2).unwrap();
    assert!(
        !after.contains(secret),
        "token still on the medium:\n{after}"
    );

    // The same token on node 3: used (and bound to n2 besides; the count is checked first).
    invited_seed(&cloud, 3, &token);
    let r3 = cloud.nodes[2].start();
    let errors = r3["errors"].to_string();
    assert!(errors.contains("already used"), "{r3}");
    assert!(!errors.contains(secret), "the token is echoed: {r3}");
    assert_eq!(r3["community"], serde_json::Value::Null, "{r3}");
    cloud.nodes[2].kill();

    // A token node 1 never made, at node 1's address.
    let made_up = "cloudy1:AAAAAAAAAAAAAAAAAAAAAA@10.213.0.1:6655";
    let seed3 = invited_seed(&cloud, 3, made_up);
    let r3 = cloud.nodes[2].start();
    assert!(r3["errors"].to_string().contains("unknown"), "{r3}");
    // A refused token stays on the medium for the next boot.
    assert!(std::fs::read_to_string(&seed3).unwrap().contains(made_up));
    assert!(!cloud.nodes[0]
        .member_ids()
        .contains(&cloud.nodes[2].node_id()));
}

const PASSWORD: &str = "invite test password";
const HTTPS: &str = "10.213.0.1:8443";

fn hash(password: &str) -> String {
    use std::io::Write;
    let mut c = Command::new(agent())
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

/// The text of the element `<TAG id="ID">...</TAG>` in a page.
fn element(page: &str, open: &str, close: &str) -> Option<String> {
    let start = page.find(open)? + open.len();
    let len = page[start..].find(close)?;
    Some(page[start..start + len].to_string())
}

/// Node 1's dashboard (HTTPS, its certificate pinned) makes an invitation, shown with a QR code
/// as inline SVG; node 2 joins with it; the list then shows it used up, and revoking it works.
#[test]
fn an_invitation_made_in_the_dashboard_lets_a_node_join() {
    if !available("an_invitation_made_in_the_dashboard_lets_a_node_join") {
        return;
    }
    let mut cloud = Cloud::new("id", 2);
    // The dashboard's unprivileged user must reach the control socket (tempdirs are 0700).
    use std::os::unix::fs::PermissionsExt;
    let top = cloud.nodes[0].root.parent().unwrap().to_path_buf();
    std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).unwrap();
    let h = hash(PASSWORD);
    cloud.write_seed_text(
        1,
        KEY,
        &format!(
            "peers = []\n[dashboard]\npassword_hash = \"{h}\"\n[network]\ninterface = \"eth0\"\n"
        ),
    );
    cloud.nodes[0].start();
    let ns = cloud.nodes[0].ns.clone();
    web::wait_up(&ns, HTTPS, Duration::from_secs(30));
    let pin = web::tls::status_fingerprint(&cloud.nodes[0].root);
    let cookie = web::tls::login(&ns, HTTPS, &pin, PASSWORD);
    let r = web::tls::post_form(
        &ns,
        HTTPS,
        &pin,
        "/invite",
        Some(&cookie),
        "name=&expires=1h&uses=1",
    );
    let page = r.text();
    assert_eq!(r.status, 200, "{page}");
    let token = element(&page, "<code id=\"token\">", "</code>")
        .unwrap_or_else(|| panic!("no token on the page:\n{page}"));
    assert!(token.starts_with("cloudy1:"), "{token}");
    let qr = element(&page, "<div id=\"qr\">", "</div>").unwrap();
    assert!(qr.contains("<svg") && !qr.contains("<script"), "{qr}");
    let id = element(&page, "Invitation ", ",").unwrap();

    invited_seed(&cloud, 2, &token);
    let r2 = cloud.nodes[1].start();
    assert!(r2["errors"].as_array().unwrap().is_empty(), "{r2}");
    cloud.wait_members(&[1, 2], Duration::from_secs(20));

    let list = web::tls::get(&ns, HTTPS, &pin, "/invite", Some(&cookie)).text();
    let rows = element(&list, "<tbody>", "</tbody>").unwrap();
    assert!(rows.contains(&id) && rows.contains("<td>0</td>"), "{rows}");
    assert!(!list.contains(&token), "a token is shown again:\n{list}");
    let r = web::tls::post_form(
        &ns,
        HTTPS,
        &pin,
        "/invite/revoke",
        Some(&cookie),
        &format!("id={id}"),
    );
    let after = r.text();
    assert!(after.contains("Revoked"), "{after}");
    assert!(!element(&after, "<tbody>", "</tbody>")
        .unwrap()
        .contains(&id));
    // Without a session: the login page, no invitation.
    let r = web::tls::post_form(&ns, HTTPS, &pin, "/invite", None, "name=&expires=1h&uses=1");
    assert!(!r.text().contains("id=\"token\""), "{}", r.text());
}
