//! Invitations for real: node 1 (seeded with the key) makes an invitation with
//! `cloudy-agent invite`; node 2, whose seed holds only that token, redeems it at boot over the
//! exchange port, keeps the key, and meshes; a used token and a made-up one are refused with
//! reasons the refused node shows in its ready line. Agents and tincd in network namespaces
//! (ci/netns-microcloud.sh); needs root, `ip netns` and Debian's `tinc`.

mod microcloud;

use microcloud::{agent, available, Cloud, KEY};
use std::process::Command;
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
