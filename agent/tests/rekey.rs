//! Rekey for real: three members (agents, tincd, serf, avahi-daemon in network namespaces),
//! node 3 down while node 1 runs `cloudy-agent rekey`. Node 2 switches at once; a service that
//! node 2 starts after the overlap reaches node 1's catalog through the mDNS doorbell (its MAC
//! under the new key), the exchange (its proof and seals) and Serf's gossip (its new key), so
//! all three derivations moved. Node 3 comes back holding the old key, gets the new one from a
//! member that pins its node key, and meshes again. A fourth node that only ever held the old
//! key is refused; so is node 3 once a second rekey removes it. Needs root, tinc, avahi-daemon
//! and serf; skips, saying why, without them.

mod microcloud;

use microcloud::{discovery_available, listen_in, said, wait_for, Cloud, KEY};
use std::time::{Duration, Instant};

/// The overlap the nodes keep the old key for (the default is 2 minutes).
const OVERLAP_S: u64 = 4;

/// Node `on` lists node `of`'s web service (port 8000+of), with these sources among its claims.
fn lists_web(cloud: &Cloud, on: usize, of: usize, sources: &[&str]) -> bool {
    cloud.nodes[on - 1].services().iter().any(|s| {
        s["type"] == "web"
            && s["port"] == 8000 + of as u64
            && sources.iter().all(|want| {
                s["source"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == want))
            })
    })
}

/// The control socket answers (it opens just after the ready line).
fn wait_control(cloud: &Cloud, i: usize) {
    let sock = cloud.nodes[i - 1].root.join("run/cloudy/control.sock");
    wait_for("the control socket", Duration::from_secs(10), || {
        sock.exists()
    });
}

#[test]
fn after_a_rekey_members_mesh_a_returning_one_catches_up_and_old_key_holders_are_refused() {
    let test =
        "after_a_rekey_members_mesh_a_returning_one_catches_up_and_old_key_holders_are_refused";
    if !discovery_available(test) {
        return;
    }
    let mut cloud = Cloud::new("rk", 4);
    for i in 1..=4 {
        let peers = if i == 1 { "" } else { "\"10.213.0.1:6655\"" };
        cloud.write_seed_text(
            i,
            KEY,
            &format!(
                "peers = [{peers}]\n[[services.publish]]\ntype = \"web\"\nport = {}\ndescription = \"web of n{i}\"\n\
                 [network]\ninterface = \"eth0\"\n",
                8000 + i
            ),
        );
        cloud.nodes[i - 1].env = vec![("CLOUDY_REKEY_OVERLAP_S".into(), OVERLAP_S.to_string())];
        cloud.avahi(i, None);
    }
    let _web1 = listen_in(&cloud.nodes[0].ns, 8001);
    let _web3 = listen_in(&cloud.nodes[2].ns, 8003);
    for i in 1..=3 {
        cloud.nodes[i - 1].start();
    }
    cloud.wait_members(&[1, 2, 3], Duration::from_secs(40));
    wait_for("node 3's web on node 1", Duration::from_secs(30), || {
        lists_web(&cloud, 1, 3, &["serf"])
    });

    // Node 3 is away during the rekey.
    cloud.nodes[2].kill();
    wait_control(&cloud, 1);
    let t = Instant::now();
    let o = cloud.cli(1, &["rekey"]);
    let out = said(&o);
    eprintln!("rekey on node 1 took {:?}:\n{out}", t.elapsed());
    assert!(o.status.success(), "{out}");
    assert!(out.contains("community key replaced (serial 1)"), "{out}");
    assert!(
        out.contains("n2 (") && out.contains("switched to the new key"),
        "{out}"
    );
    assert!(
        out.contains("n3 (") && out.contains("gets the new key from any member"),
        "{out}"
    );
    let new = cloud.stored_key(1);
    assert_ne!(new, KEY);
    assert!(new.len() >= 32, "{new}");
    wait_for("node 2 stores the new key", Duration::from_secs(5), || {
        cloud.stored_key(2) == new
    });
    // The history keeps the old key for members that come back; 0600 like the key.
    let hist = cloud.nodes[0]
        .root
        .join("var/lib/cloudy/community-keys.json");
    assert!(std::fs::read_to_string(&hist).unwrap().contains(KEY));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&hist).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Past the overlap, a service node 2 starts now reaches node 1 by mDNS and by Serf: the
    // doorbell MAC, the exchange and Serf's gossip all run on the new key.
    std::thread::sleep(Duration::from_secs(OVERLAP_S + 1));
    // Node 2's serf dies and the agent starts it again: until this change it came back with
    // the key the agent started with (the old one, gone from every keyring now), and node 2's
    // service never reached node 1 by Serf.
    let root2 = cloud.nodes[1].root.display().to_string();
    let killed = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &format!("serf agent -config-file={root2}/")])
        .status()
        .unwrap();
    assert!(killed.success(), "node 2's serf was running");
    let _web2 = listen_in(&cloud.nodes[1].ns, 8002);
    let t = Instant::now();
    wait_for(
        "node 2's new service on node 1 by mDNS and Serf",
        Duration::from_secs(60),
        || lists_web(&cloud, 1, 2, &["mdns", "serf"]),
    );
    eprintln!(
        "node 2's service on node 1 (mdns and serf) {:?} after it started",
        t.elapsed()
    );

    // Node 3 comes back with the old key and catches up through a member.
    let t = Instant::now();
    cloud.nodes[2].start();
    wait_for("node 3 gets the new key", Duration::from_secs(40), || {
        cloud.stored_key(3) == new
    });
    eprintln!("node 3 had the new key {:?} after it started", t.elapsed());
    wait_for(
        "node 3 fetches node 2's records",
        Duration::from_secs(40),
        || lists_web(&cloud, 3, 2, &[]),
    );
    cloud.wait_members(&[1, 2, 3], Duration::from_secs(40));

    // A fourth node that only ever held the old key: refused, never a member.
    wait_control(&cloud, 1);
    cloud.nodes[3].start();
    std::thread::sleep(Duration::from_secs(25));
    let n4 = cloud.nodes[3].node_id();
    for i in 1..=3 {
        assert!(
            !cloud.nodes[i - 1].member_ids().contains(&n4),
            "node {i} took the old key's holder in"
        );
    }
    assert_eq!(cloud.stored_key(4), KEY, "node 4 was given the new key");
    assert_eq!(cloud.nodes[3].member_ids(), vec![n4]);

    // A second rekey removes node 3: it is left on the first new key and out of every list.
    let o = cloud.cli(2, &["rekey", "--remove", "n3"]);
    let out = said(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("(serial 2)") && !out.contains("n3 ("), "{out}");
    let newer = cloud.stored_key(2);
    assert_ne!(newer, new);
    wait_for(
        "node 1 takes the second key",
        Duration::from_secs(5),
        || cloud.stored_key(1) == newer,
    );
    let n3 = cloud.nodes[2].node_id();
    std::thread::sleep(Duration::from_secs(OVERLAP_S + 25));
    assert_eq!(cloud.stored_key(3), new, "the removed node got the new key");
    for i in [1, 2] {
        assert!(
            !cloud.nodes[i - 1].member_ids().contains(&n3),
            "node {i} lists the removed node"
        );
    }
}
