//! The mesh for real: agents and tincd in network namespaces (ci/netns-microcloud.sh), no host
//! file copied by the test. Needs root, `ip netns` and Debian's `tinc`; skips, saying why,
//! only where those are missing.

mod microcloud;

use microcloud::{available, Cloud};
use std::time::{Duration, Instant};

#[test]
fn five_nodes_mesh_and_a_wrong_key_is_refused() {
    if !available("five_nodes_mesh_and_a_wrong_key_is_refused") {
        return;
    }
    let t0 = Instant::now();
    let mut cloud = Cloud::new("m", 6);
    // The outsider knows every member's address: each one must turn it away.
    let all_peers = (1..=5)
        .map(|i| format!("\"10.213.0.{i}:6655\""))
        .collect::<Vec<_>>()
        .join(", ");
    cloud.write_seed_text(
        6,
        "not the community key at all",
        &format!("peers = [{all_peers}]\n[network]\ninterface = \"eth0\"\n"),
    );
    for i in 1..=6 {
        let ready = cloud.nodes[i - 1].start();
        assert_eq!(ready["node"], format!("n{i}"));
        assert_eq!(ready["community"], "test");
        assert!(ready["errors"].as_array().unwrap().is_empty(), "{ready}");
    }
    let good = [1, 2, 3, 4, 5];
    let took = cloud.wait_members(&good, Duration::from_secs(20));
    let failed = cloud.ping_all(&good, 25);
    assert!(
        failed.is_empty(),
        "pairs that could not ping over the VPN: {failed:?}"
    );
    eprintln!(
        "5 nodes: members converged {took:?} after the last start, all 20 pairs ping; {:?} in all",
        t0.elapsed()
    );

    // The seed's key left the boot medium and sits 0600 in the state directory.
    let n1 = &cloud.nodes[0];
    let seed = std::fs::read_to_string(n1.root.join("boot/firmware/cloudy.toml")).unwrap();
    assert!(
        !seed.contains(microcloud::KEY),
        "key still on the boot medium:\n{seed}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(n1.root.join("var/lib/cloudy/community.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The wrong-key node has been knocking on node 1 all along: give it a little longer.
    std::thread::sleep(Duration::from_secs(2));
    let bad = &cloud.nodes[5];
    let bad_id = bad.node_id();
    let bad_tinc = bad.ready_lines()[0]["tinc_name"]
        .as_str()
        .unwrap()
        .to_string();
    for &i in &good {
        let n = &cloud.nodes[i - 1];
        assert!(
            !n.member_ids().contains(&bad_id),
            "node {i} accepted the wrong-key node"
        );
        assert!(
            !n.hosts().contains(&bad_tinc),
            "node {i} has a host file for the wrong-key node"
        );
    }
    assert_eq!(
        bad.member_ids(),
        vec![bad_id],
        "the wrong-key node learned members"
    );
    assert_eq!(
        bad.hosts().len(),
        1,
        "the wrong-key node got host files: {:?}",
        bad.hosts()
    );
    assert!(
        !bad.ping(&cloud.nodes[0].vpn(), 2),
        "the wrong-key node reaches the VPN"
    );
    for &i in &good {
        assert!(
            cloud.log(i).contains("wrong community key"),
            "node {i} did not log refusing the outsider"
        );
    }
}

#[test]
fn lan_members_find_each_other_by_mdns_without_bootstrap_peers() {
    if !available("lan_members_find_each_other_by_mdns_without_bootstrap_peers") {
        return;
    }
    let mut cloud = Cloud::new("d", 3);
    for i in 1..=3 {
        cloud.write_lan_seed(i);
    }
    let t0 = Instant::now();
    for i in 1..=3 {
        let r = cloud.nodes[i - 1].start();
        assert_eq!(
            r["interface"], "eth0",
            "static address on the first link: {r}"
        );
    }
    cloud.wait_members(&[1, 2, 3], Duration::from_secs(20));
    let failed = cloud.ping_all(&[1, 2, 3], 25);
    assert!(failed.is_empty(), "no mesh from mDNS alone: {failed:?}");
    eprintln!("3 nodes found by mDNS and meshed in {:?}", t0.elapsed());
}

#[test]
fn an_address_that_comes_later_like_dhcp_is_followed() {
    if !available("an_address_that_comes_later_like_dhcp_is_followed") {
        return;
    }
    let mut cloud = Cloud::new("h", 2);
    // Node 2 has no [network]: its address comes from "DHCP" (the test) after the agent starts.
    let seed = format!(
        "version = 1\n[node]\nname = \"n2\"\n[community]\nname = \"test\"\nkey = \"{}\"\npeers = [\"10.213.0.1:6655\"]\n",
        microcloud::KEY
    );
    let path = cloud.nodes[1].root.join("boot/firmware/cloudy.toml");
    std::fs::write(path, seed).unwrap();
    cloud.nodes[0].start();
    let r = cloud.nodes[1].start();
    assert_eq!(r["address"], serde_json::Value::Null, "no address yet: {r}");
    let ns = cloud.nodes[1].ns.clone();
    for args in [
        vec!["link", "set", "eth0", "up"],
        vec!["addr", "add", "10.213.0.2/24", "dev", "eth0"],
        vec!["route", "add", "default", "via", "10.213.0.254"],
    ] {
        let st = std::process::Command::new("ip")
            .args(["-n", &ns])
            .args(&args)
            .status()
            .unwrap();
        assert!(st.success(), "ip {args:?}");
    }
    let t0 = Instant::now();
    cloud.wait_members(&[1, 2], Duration::from_secs(20));
    let failed = cloud.ping_all(&[1, 2], 25);
    assert!(
        failed.is_empty(),
        "no mesh after the address came: {failed:?}"
    );
    let addr = cloud.nodes[0].members()["members"][cloud.nodes[1].node_id()]["address"].clone();
    assert_eq!(addr, "10.213.0.2", "node 1 knows node 2 by its new address");
    eprintln!("address given after start: meshed {:?} later", t0.elapsed());
}

#[test]
fn vpn_address_collision_is_resolved_in_a_live_mesh() {
    if !available("vpn_address_collision_is_resolved_in_a_live_mesh") {
        return;
    }
    use cloudy_agent::mesh::members::vpn_candidate;
    // Two node ids whose first-choice VPN addresses collide in a small range.
    let subnet = (std::net::Ipv4Addr::new(10, 98, 0, 0), 28);
    let id = |n: u32| format!("{n:032x}");
    let (a, b) = (1..)
        .flat_map(|x| (x + 1..x + 40).map(move |y| (x, y)))
        .find(|&(x, y)| vpn_candidate(&id(x), subnet, 0) == vpn_candidate(&id(y), subnet, 0))
        .unwrap();
    let clash = vpn_candidate(&id(a), subnet, 0).to_string();
    let mut cloud = Cloud::new("v", 2);
    for (i, n) in [(1, a), (2, b)] {
        let peers = if i == 1 { "" } else { "\"10.213.0.1:6655\"" };
        cloud.write_seed_text(
            i,
            microcloud::KEY,
            &format!("peers = [{peers}]\n[tinc]\nsubnet = \"10.98.0.0/28\"\n[network]\ninterface = \"eth0\"\n"),
        );
        let state = cloud.nodes[i - 1].root.join("var/lib/cloudy");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("node-id"), format!("{}\n", id(n))).unwrap();
    }
    let t0 = Instant::now();
    assert_eq!(cloud.nodes[0].start()["vpn_address"], clash);
    assert_eq!(
        cloud.nodes[1].start()["vpn_address"],
        clash,
        "both start on the same address"
    );
    cloud.wait_members(&[1, 2], Duration::from_secs(20));
    // The higher id moves; wait until both see the move, then the VPN must carry it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while cloud.nodes[1].vpn() == clash
        || cloud.nodes[0].members()["members"][id(b)]["vpn"] == clash
    {
        assert!(Instant::now() < deadline, "collision not resolved");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        cloud.nodes[0].vpn(),
        clash,
        "the lower id keeps its address"
    );
    let failed = cloud.ping_all(&[1, 2], 25);
    assert!(failed.is_empty(), "no mesh after the move: {failed:?}");
    eprintln!(
        "collision on {clash}: node 2 moved to {}, meshed {:?} after start",
        cloud.nodes[1].vpn(),
        t0.elapsed()
    );
}

#[test]
fn killed_tincd_is_restarted_and_the_mesh_heals() {
    if !available("killed_tincd_is_restarted_and_the_mesh_heals") {
        return;
    }
    let mut cloud = Cloud::new("t", 3);
    for i in 1..=3 {
        cloud.nodes[i - 1].start();
    }
    cloud.wait_members(&[1, 2, 3], Duration::from_secs(20));
    assert!(
        cloud.ping_all(&[1, 2, 3], 25).is_empty(),
        "mesh not up before the kill"
    );
    let n2 = &cloud.nodes[1];
    let old = n2.tincd_pid().expect("tincd running on node 2");
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let t0 = Instant::now();
    let new = loop {
        if let Some(p) = n2.tincd_pid().filter(|&p| p != old) {
            break p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "tincd not restarted in 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    if !cloud.ping_all(&[1, 2, 3], 10).is_empty() {
        eprintln!("slow to heal:\n{}", cloud.diagnose());
        for i in 1..=3 {
            let log = cloud.log(i);
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "--- node {i} ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    let failed = cloud.ping_all(&[1, 2, 3], 50);
    assert!(failed.is_empty(), "mesh did not heal: {failed:?}");
    eprintln!("tincd {old} killed; {new} running after the agent restarted it; mesh healed {:?} after the kill", t0.elapsed());
    assert!(cloud.log(2).contains("tincd started"));
}

#[test]
fn sigkill_at_random_points_of_first_boot_converges_with_the_same_keys() {
    if !available("sigkill_at_random_points_of_first_boot_converges_with_the_same_keys") {
        return;
    }
    let t_all = Instant::now();
    let mut cloud = Cloud::new("k", 3);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("random seed {seed}");
    let mut rand = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut first_key: Vec<Option<Vec<u8>>> = vec![None; 3];
    let mut kills_with_key = 0;
    let mut first_id: Vec<Option<String>> = vec![None; 3];
    let mut first_node_key: Vec<Option<Vec<u8>>> = vec![None; 3];
    for round in 0..20 {
        let i = round % 3;
        let node = &mut cloud.nodes[i];
        node.spawn();
        // First boot takes ~0.3-1 s here (keys, config, tincd, first gossip). Early rounds kill
        // within the first tens of milliseconds (seed, identity, key generation), later ones
        // anywhere up to the first gossip.
        std::thread::sleep(Duration::from_millis(rand(40 + 45 * round as u64)));
        node.kill();
        if let Some(k) = node.private_key() {
            kills_with_key += 1;
            let first = first_key[i].get_or_insert(k.clone());
            assert_eq!(*first, k, "node {} key replaced after kill {round}", i + 1);
        }
        let id = node.node_id();
        if !id.is_empty() {
            assert_eq!(
                first_id[i].get_or_insert(id.clone()),
                &id,
                "node id changed"
            );
        }
        // The node signing key: made once, whole or not at all, never replaced.
        if let Ok(k) = std::fs::read(node.root.join("var/lib/cloudy/node.key")) {
            assert_eq!(k.len(), 65, "a whole key file: {k:?}");
            let first = first_node_key[i].get_or_insert(k.clone());
            assert_eq!(
                *first,
                k,
                "node {} signing key replaced after kill {round}",
                i + 1
            );
        }
    }
    eprintln!(
        "20 kills, {kills_with_key} after the key pair existed, {:?}",
        t_all.elapsed()
    );
    let t0 = Instant::now();
    for i in 1..=3 {
        cloud.nodes[i - 1].start();
    }
    cloud.wait_members(&[1, 2, 3], Duration::from_secs(30));
    if !cloud.ping_all(&[1, 2, 3], 10).is_empty() {
        eprintln!("slow to mesh after the kills:\n{}", cloud.diagnose());
        for i in 1..=3 {
            let log = cloud.log(i);
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "--- node {i} ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    let failed = cloud.ping_all(&[1, 2, 3], 50);
    assert!(
        failed.is_empty(),
        "no full mesh after the kills: {failed:?}"
    );
    eprintln!(
        "after the kills: full mesh {:?} after restarting the agents",
        t0.elapsed()
    );
    for i in 0..3 {
        let n = &cloud.nodes[i];
        if let Some(k) = &first_key[i] {
            assert_eq!(
                n.private_key().as_ref(),
                Some(k),
                "node {} key differs from the first run",
                i + 1
            );
        }
        if let Some(id) = &first_id[i] {
            assert_eq!(&n.node_id(), id);
        }
        // Every member pinned this node's own signing key (the one in its node.key).
        let sys = cloudy_agent::os::system::System::new(&n.root);
        let public = cloudy_agent::os::identity::NodeKey::load(&sys)
            .unwrap()
            .public_hex();
        for o in &cloud.nodes {
            assert_eq!(
                o.members()["members"][n.node_id()]["signkey"],
                public.as_str(),
                "node {}'s key as pinned by {}",
                i + 1,
                o.root.display()
            );
        }
        // One tincd per node: a leftover from a killed agent would hold the port.
        let ours = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .map(|c| {
                        String::from_utf8_lossy(&c)
                            .contains(&*n.root.join("etc/tinc/cloudy").to_string_lossy())
                    })
                    .unwrap_or(false)
            })
            .count();
        assert_eq!(ours, 1, "node {}: {ours} tincd processes", i + 1);
    }
}

/// `bench/agent.sh mesh` runs this (ignored by `cargo test`): agent start to full mesh for several
/// sizes, and the agent's memory once the mesh is up. Prints a table; asserts nothing about speed.
#[test]
#[ignore]
fn bench_mesh() {
    if !available("bench_mesh") {
        return;
    }
    let sizes: Vec<usize> = std::env::var("CLOUDY_BENCH_SIZES")
        .unwrap_or_else(|_| "3,10,25".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("CLOUDY_BENCH_SIZES: comma-separated numbers")
        })
        .collect();
    let mut rows = Vec::new();
    for n in sizes {
        let mut cloud = Cloud::new("b", n);
        let t0 = Instant::now();
        for node in &mut cloud.nodes {
            node.spawn();
        }
        let all: Vec<usize> = (1..=n).collect();
        let ready = loop {
            if cloud.nodes.iter().all(|nd| !nd.ready_lines().is_empty()) {
                break t0.elapsed();
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "not all ready");
            std::thread::sleep(Duration::from_millis(10));
        };
        cloud.wait_members(&all, Duration::from_secs(120));
        let members = t0.elapsed();
        let failed = cloud.ping_ring_and_star(100);
        assert!(failed.is_empty(), "{n} nodes: no mesh: {failed:?}");
        let meshed = t0.elapsed();
        // Let the agents settle into their steady state before measuring memory.
        std::thread::sleep(Duration::from_secs(2));
        let rss: Vec<u64> = cloud.nodes.iter().filter_map(|nd| nd.rss_kib()).collect();
        let max = *rss.iter().max().unwrap_or(&0) as f64 / 1024.0;
        let mean = rss.iter().sum::<u64>() as f64 / rss.len().max(1) as f64 / 1024.0;
        rows.push((n, ready, members, meshed, max, mean));
        drop(cloud);
    }
    println!();
    println!("agent: {}", microcloud::agent());
    println!("| nodes | all ready (s) | member lists complete (s) | ring+star ping over VPN (s) | agent RSS max (MiB) | agent RSS mean (MiB) |");
    println!("|------:|--------------:|--------------------------:|----------------------------:|--------------------:|---------------------:|");
    for (n, r, m, p, max, mean) in rows {
        println!(
            "| {n:>5} | {:>13.2} | {:>25.2} | {:>27.2} | {max:>19.2} | {mean:>20.2} |",
            r.as_secs_f64(),
            m.as_secs_f64(),
            p.as_secs_f64()
        );
    }
    println!("targets: 10 nodes meshed <= 5 s after start; RSS <= 8 MiB");
}

/// Descriptors the process holds now.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Runs `f` on a thread that has entered namespace `ns`: threads it starts (mdns-sd's) stay
/// in that namespace.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&path).unwrap();
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
    .join()
    .unwrap()
}

/// Anyone on the LAN sees the community's mDNS tag and can announce exchange services under
/// it. A flooder announces 400 that lead nowhere (addresses on the LAN where no host answers,
/// so each dial hangs on ARP); then leaves without a goodbye. The agent's descriptors must stay
/// bounded meanwhile and come back to where they were, and a real member must still mesh.
#[test]
fn a_lan_flood_of_fake_exchange_services_holds_no_descriptors() {
    if !available("a_lan_flood_of_fake_exchange_services_holds_no_descriptors") {
        return;
    }
    const FAKES: u32 = 400;
    // Descriptors over the quiet baseline: the bounded dials (16 a round) and a real member's
    // fit well inside; one per fake does not.
    const DURING: usize = 64;
    const AFTER: usize = 6;
    let mut cloud = Cloud::new("fl", 4);
    for i in [1, 2, 4] {
        cloud.write_lan_seed(i);
    }
    // Node 3 is the flooder: no agent, only an address on the LAN and mDNS.
    let flooder = cloud.nodes[2].ns.clone();
    for args in [
        vec!["link", "set", "eth0", "up"],
        vec!["addr", "add", "10.213.0.3/24", "dev", "eth0"],
        vec!["route", "add", "default", "via", "10.213.0.254"],
    ] {
        let st = std::process::Command::new("ip")
            .args(["-n", &flooder])
            .args(&args)
            .status()
            .unwrap();
        assert!(st.success(), "ip {args:?}");
    }
    cloud.nodes[0].start();
    cloud.nodes[1].start();
    cloud.wait_members(&[1, 2], Duration::from_secs(20));
    let pid = cloud.nodes[0].child.as_ref().unwrap().id();
    // The quiet baseline: the most seen over a few seconds of ordinary gossip.
    let sample = |secs: u64| {
        let t = Instant::now();
        let mut max = 0;
        while t.elapsed() < Duration::from_secs(secs) {
            max = max.max(open_fds(pid));
            std::thread::sleep(Duration::from_millis(50));
        }
        max
    };
    std::thread::sleep(Duration::from_secs(2));
    let baseline = sample(3);

    let tag = cloudy_agent::mesh::exchange::CommunityKey::derive("test", microcloud::KEY).tag();
    let daemon = in_netns(&flooder, move || {
        let d = mdns_sd::ServiceDaemon::new().unwrap();
        for i in 0..FAKES {
            let id = format!("{i:032x}");
            let ip = format!("10.213.0.{}", 100 + i / 4);
            let info = mdns_sd::ServiceInfo::new(
                cloudy_agent::mesh::lan::SERVICE_TYPE,
                &format!("fake{i}"),
                &format!("fake{i}.local."),
                ip.as_str(),
                (20000 + i) as u16,
                &[("c", tag.as_str()), ("id", id.as_str())][..],
            )
            .unwrap();
            // The daemon's command queue is short: wait for room.
            let mut info = Some(info);
            while let Some(i) = info.take() {
                match d.register(i.clone()) {
                    Err(mdns_sd::Error::Again) => {
                        info = Some(i);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    r => r.unwrap(),
                }
            }
        }
        d
    });
    let t0 = Instant::now();
    let mut during = sample(4);
    // A member that comes up in the middle of the flood still meshes.
    cloud.nodes[3].start();
    let t = Instant::now();
    loop {
        during = during.max(open_fds(pid));
        let want = {
            let mut w: Vec<String> = [1, 2, 4]
                .iter()
                .map(|&i| cloud.nodes[i - 1].node_id())
                .collect();
            w.sort();
            w
        };
        if [1, 2, 4]
            .iter()
            .all(|&i| cloud.nodes[i - 1].member_ids() == want)
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "no mesh with node 4 during the flood; descriptors up to {during} (baseline {baseline})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let meshed = t.elapsed();
    during = during.max(sample(6));
    let found = cloud.log(1).matches("found an exchange service").count();
    eprintln!(
        "flood of {FAKES}: node 1 held up to {during} descriptors (baseline {baseline}); \
         node 4 meshed {meshed:?} into it; {found} exchange services taken"
    );
    assert!(found >= 1, "the flood never reached node 1");
    assert!(
        during <= baseline + DURING,
        "descriptors during the flood: {during}, baseline {baseline}"
    );

    // The flooder goes without a goodbye: its link first, then its daemon.
    let st = std::process::Command::new("ip")
        .args(["-n", &flooder, "link", "set", "eth0", "down"])
        .status()
        .unwrap();
    assert!(st.success());
    drop(daemon);
    let gone = Instant::now();
    let mut quiet_since: Option<Instant> = None;
    let last = loop {
        let last = open_fds(pid);
        if last <= baseline + AFTER {
            let q = *quiet_since.get_or_insert_with(Instant::now);
            if q.elapsed() >= Duration::from_secs(8) {
                break last;
            }
        } else {
            quiet_since = None;
        }
        assert!(
            gone.elapsed() < Duration::from_secs(75),
            "descriptors did not come back after the flooder left: {last}, baseline {baseline}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "flooder gone: node 1 back to {last} descriptors (baseline {baseline}) {:?} later; {:?} in all",
        gone.elapsed(),
        t0.elapsed()
    );
    assert!(
        cloud.ping_all(&[1, 2, 4], 25).is_empty(),
        "the members' VPN does not work after the flood"
    );
}

/// `cloudy-agent status` on node `n`: (exit code, output).
fn status(n: &microcloud::Node) -> (i32, String) {
    let o = std::process::Command::new(microcloud::agent())
        .arg("--root")
        .arg(&n.root)
        .arg("status")
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

/// When the running agent last wrote its catalog (it does every 2 s while it runs).
fn catalog_written(n: &microcloud::Node) -> u64 {
    let text = std::fs::read_to_string(n.root.join("run/cloudy/catalog.json")).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default()["written"]
        .as_u64()
        .unwrap_or(0)
}

/// A /30 holds two VPN addresses; three members cannot all have one. The node left without
/// one must say so (status now, the ready line after a restart) and keep running: answering
/// members, writing its catalog. It used to search 2^32 candidates with the member list
/// locked (the agent froze), then panic.
#[test]
fn a_full_vpn_subnet_is_reported_and_the_node_stays_responsive() {
    if !available("a_full_vpn_subnet_is_reported_and_the_node_stays_responsive") {
        return;
    }
    const FULL: &str = "VPN subnet 10.99.0.0/30 is full";
    let mut cloud = Cloud::new("s", 3);
    for i in 1..=3 {
        let peers = if i == 1 { "" } else { "\"10.213.0.1:6655\"" };
        cloud.write_seed_text(
            i,
            microcloud::KEY,
            &format!("peers = [{peers}]\n[tinc]\nsubnet = \"10.99.0.0/30\"\n[network]\ninterface = \"eth0\"\n"),
        );
    }
    for i in 1..=3 {
        cloud.nodes[i - 1].start();
    }
    let t0 = Instant::now();
    cloud.wait_members(&[1, 2, 3], Duration::from_secs(30));
    let reporting = loop {
        let r: Vec<usize> = (1..=3)
            .filter(|&i| status(&cloud.nodes[i - 1]).1.contains(FULL))
            .collect();
        if !r.is_empty() {
            break r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no node reports the full subnet; status of each:\n{}",
            (1..=3)
                .map(|i| status(&cloud.nodes[i - 1]).1)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (code, text) = status(&cloud.nodes[reporting[0] - 1]);
    assert_eq!(code, 1, "status fails while the mesh has an error:\n{text}");
    // Every agent keeps running: each writes its catalog again within a few seconds.
    let before: Vec<u64> = cloud.nodes.iter().map(catalog_written).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cloud
        .nodes
        .iter()
        .zip(&before)
        .any(|(n, &b)| catalog_written(n) <= b)
    {
        assert!(
            Instant::now() < deadline,
            "an agent stopped working: catalog written {before:?} -> {:?}",
            cloud.nodes.iter().map(catalog_written).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Restarted, the node says it in its ready line, and still meshes with the others on the
    // LAN.
    let i = reporting[0];
    cloud.nodes[i - 1].kill();
    let ready = cloud.nodes[i - 1].start();
    let errors = ready["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e.as_str().unwrap().contains(FULL)),
        "{ready}"
    );
    cloud.wait_members(&[1, 2, 3], Duration::from_secs(20));
    assert!(status(&cloud.nodes[i - 1]).1.contains(FULL));
    eprintln!(
        "full /30: node {i} reports {:?}; all agents alive, {:?}",
        errors,
        t0.elapsed()
    );
}
