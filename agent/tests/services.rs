//! The service wrappers for real: in each network namespace the agent (with tincd and serf)
//! runs real Tahoe-LAFS and Syncthing processes as their own users. Needs root, tinc, serf,
//! Tahoe-LAFS (/opt/cloudy/tahoe-lafs or CLOUDY_TAHOE) and syncthing; skips, saying why,
//! without them.

mod microcloud;

use microcloud::{available, serf, Cloud, Node};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn tahoe() -> PathBuf {
    std::env::var_os("CLOUDY_TAHOE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/opt/cloudy/tahoe-lafs/bin/tahoe".into())
}

fn syncthing() -> PathBuf {
    std::env::var_os("CLOUDY_SYNCTHING")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/syncthing".into())
}

fn ready(test: &str, need: &[(&str, &Path)]) -> bool {
    if !available(test) {
        return false;
    }
    if serf().is_none() {
        eprintln!("SKIP {test}: serf not installed (ci/deps.sh installs it)");
        return false;
    }
    for (what, p) in need {
        if !p.exists() {
            eprintln!(
                "SKIP {test}: {what} not at {} (ci/deps.sh installs it)",
                p.display()
            );
            return false;
        }
    }
    true
}

/// A cloud whose node roots the services' own users can reach (tempdirs are 0700).
fn cloud(tag: &str, n: usize) -> Cloud {
    use std::os::unix::fs::PermissionsExt;
    let c = Cloud::new(tag, n);
    let top = c.nodes[0].root.parent().unwrap();
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
    c
}

fn seed(cloud: &mut Cloud, i: usize, enable: &[&str]) {
    let peers = if i == 1 { "" } else { "\"10.213.0.1:6655\"" };
    let list: Vec<String> = enable.iter().map(|s| format!("\"{s}\"")).collect();
    cloud.write_seed_text(
        i,
        microcloud::KEY,
        &format!(
            "peers = [{peers}]\n[services]\nenable = [{}]\n[network]\ninterface = \"eth0\"\n",
            list.join(", ")
        ),
    );
}

fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The agent's one services line, once printed.
fn services_line(n: &Node) -> Option<Value> {
    std::fs::read_to_string(n.out())
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("{\"cloudy\":\"services\""))
        .map(|l| serde_json::from_str(l).unwrap())
}

/// The agent's state file: name -> {state, pid, restarts, last_error}.
fn states(n: &Node) -> Value {
    let t = std::fs::read_to_string(n.root.join("run/cloudy/services.json")).unwrap_or_default();
    serde_json::from_str::<Value>(&t).unwrap_or_default()["services"].clone()
}

fn run_in(n: &Node, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", &n.ns])
        .args(args)
        .output()
        .unwrap()
}

fn agent_in(n: &Node, args: &[&str]) -> std::process::Output {
    let root = n.root.to_string_lossy().into_owned();
    let agent = microcloud::agent();
    let mut all = vec![agent.as_str(), "--root", root.as_str()];
    all.extend_from_slice(args);
    run_in(n, &all)
}

/// (node name, type) of every record `n`'s CLI lists.
fn published(n: &Node) -> Vec<(String, String)> {
    n.services()
        .iter()
        .map(|s| {
            (
                s["node"].as_str().unwrap_or("").to_string(),
                s["type"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Kills `service`'s process on node `i` with SIGKILL; returns once the agent has restarted
/// it, withdrawn and republished its record (its log says so), and node `observer` lists the
/// record again.
fn kill_and_see_it_back(cloud: &Cloud, i: usize, service: &str, kind: &str, observer: usize) {
    let n = &cloud.nodes[i - 1];
    let o = &cloud.nodes[observer - 1];
    let key = (format!("n{i}"), kind.to_string());
    // Settled first: running and listed (a join may just have restarted it with a new config).
    let before = wait_for(
        &format!("{service} running and listed on n{observer}"),
        Duration::from_secs(60),
        || {
            let s = states(n)[service].clone();
            (s["state"] == "running" && published(o).contains(&key)).then_some(s)
        },
    );
    let pid = before["pid"].as_u64().unwrap() as i32;
    let log_at = std::fs::read_to_string(n.log()).unwrap_or_default().len();
    let t0 = Instant::now();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let mut gone_on_observer = false;
    let tag = format!("{kind}:");
    let within = Duration::from_secs(90);
    loop {
        let there = published(o).contains(&key);
        gone_on_observer |= !there;
        let s = states(n)[service].clone();
        let restarted = s["state"] == "running"
            && s["pid"].as_u64().is_some_and(|p| p as i32 != pid)
            && s["restarts"].as_u64() > before["restarts"].as_u64();
        // The node's own account: a publication without the service, then one with it.
        let log = std::fs::read_to_string(n.log()).unwrap_or_default();
        let pubs: Vec<&str> = log
            .get(log_at..)
            .unwrap_or("")
            .lines()
            .filter(|l| l.contains("publishing"))
            .collect();
        let withdrawn = pubs.iter().position(|l| !l.contains(&tag));
        let republished = withdrawn.is_some_and(|w| pubs[w..].iter().any(|l| l.contains(&tag)));
        if restarted && republished && there {
            break;
        }
        assert!(
            t0.elapsed() < within,
            "{service} on n{i} not back within {within:?}: state {s}, withdrawn {withdrawn:?}, \
             republished {republished}, on n{observer} {there}; publications: {pubs:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "{service} on n{i}: killed, restarted and listed again on n{observer} after {:.1} s \
         (n{observer} saw it gone meanwhile: {gone_on_observer})",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn tahoe_grid_forms_and_a_joined_client_reads_it() {
    let test = "tahoe_grid_forms_and_a_joined_client_reads_it";
    if !ready(test, &[("Tahoe-LAFS", &tahoe())]) {
        return;
    }
    let t0 = Instant::now();
    let mut cloud = cloud("sv", 4);
    seed(&mut cloud, 1, &["tahoe-introducer"]);
    seed(&mut cloud, 2, &["tahoe-storage"]);
    seed(&mut cloud, 3, &["tahoe-storage"]);
    seed(&mut cloud, 4, &[]);
    cloud.start_all();
    for i in 1..=3 {
        let line = wait_for("services line", Duration::from_secs(150), || {
            services_line(&cloud.nodes[i - 1])
        });
        assert_eq!(line["failed"], serde_json::json!({}), "node {i}: {line}");
        eprintln!("n{i}: {line}");
    }
    // Every service runs as its own user, not as root.
    let pid = states(&cloud.nodes[1])["tahoe-storage"]["pid"]
        .as_u64()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(!uid.split_whitespace().nth(1).unwrap().eq("0"), "{uid}");
    // ... and can never gain privileges (setuid programs, file capabilities).
    assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");
    // The introducer's FURL travels in its record.
    let furl = wait_for("introducer record on n3", Duration::from_secs(30), || {
        cloud.nodes[2]
            .services()
            .into_iter()
            .find(|s| s["type"] == "tahoe-introducer")
            .map(|s| s["fields"]["furl"].as_str().unwrap().to_string())
    });
    assert!(furl.starts_with("pb://"), "{furl}");

    // 100 KiB: well above the 56 bytes Tahoe keeps inside the cap itself.
    let data: Vec<u8> = (0..100 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let file = cloud.nodes[1].root.with_extension("data");
    std::fs::write(&file, &data).unwrap();
    let node_dir = |n: &Node, role: &str| {
        n.root
            .join(format!("var/lib/cloudy/{role}/node"))
            .to_string_lossy()
            .into_owned()
    };
    let tahoe_s = tahoe().to_string_lossy().into_owned();
    let n2 = &cloud.nodes[1];
    let cap = wait_for("tahoe put on n2", Duration::from_secs(60), || {
        let o = run_in(
            n2,
            &[
                &tahoe_s,
                "-d",
                &node_dir(n2, "tahoe-storage"),
                "put",
                &file.to_string_lossy(),
            ],
        );
        let cap = String::from_utf8_lossy(&o.stdout).trim().to_string();
        (o.status.success() && cap.starts_with("URI:CHK:")).then_some(cap)
    });
    let get = |n: &Node, role: &str| {
        let out = n.root.with_extension(format!("{role}.got"));
        let o = run_in(
            n,
            &[
                &tahoe_s,
                "-d",
                &node_dir(n, role),
                "get",
                &cap,
                &out.to_string_lossy(),
            ],
        );
        (o.status.success() && std::fs::read(&out).ok()? == data).then_some(())
    };
    wait_for(
        "n3 reads n2's file from the grid",
        Duration::from_secs(60),
        || get(&cloud.nodes[2], "tahoe-storage"),
    );

    // n4 runs no Tahoe at all until the user joins the grid.
    let o = agent_in(&cloud.nodes[3], &["join", "tahoe-lafs"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "join failed: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("of n1") && out.contains("http://127.0.0.1:3456/"),
        "{out}"
    );
    wait_for(
        "the joined client on n4 reads the file",
        Duration::from_secs(60),
        || get(&cloud.nodes[3], "tahoe-client"),
    );

    // `status` shows each service's state, and its confinement: the whole tree read-only but
    // its own directory (as its mount namespace says).
    let st = agent_in(&cloud.nodes[3], &["status"]);
    let st = String::from_utf8_lossy(&st.stdout);
    let own = format!(
        "rw: {}/var/lib/cloudy/tahoe-client,",
        cloud.nodes[3].root.display()
    );
    assert!(
        st.lines().any(|l| l.contains("tahoe-client")
            && l.contains("running")
            && l.contains("no_new_privs")
            && l.contains("ro-root")
            && l.contains(&own)
            && l.contains("hidden: ")),
        "{st}"
    );

    kill_and_see_it_back(&cloud, 2, "tahoe-storage", "tahoe-storage", 1);
    kill_and_see_it_back(&cloud, 1, "tahoe-introducer", "tahoe-introducer", 3);
    eprintln!("{test}: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn syncthing_join_shares_a_folder_both_ways() {
    let test = "syncthing_join_shares_a_folder_both_ways";
    if !ready(test, &[("syncthing", &syncthing())]) {
        return;
    }
    let t0 = Instant::now();
    let mut cloud = cloud("sy", 2);
    seed(&mut cloud, 1, &["syncthing"]);
    seed(&mut cloud, 2, &[]);
    cloud.start_all();
    let line = wait_for("services line", Duration::from_secs(120), || {
        services_line(&cloud.nodes[0])
    });
    assert_eq!(line["running"], serde_json::json!(["syncthing"]), "{line}");
    let n1 = &cloud.nodes[0];
    let n2 = &cloud.nodes[1];
    // The GUI is not open with a default password: its credentials were generated.
    let cfg =
        std::fs::read_to_string(n1.root.join("var/lib/cloudy/syncthing/home/config.xml")).unwrap();
    assert!(
        cfg.contains(&format!("<address>{}:8384</address>", n1.vpn())),
        "GUI on the VPN"
    );
    assert!(
        cfg.contains("<password>$2"),
        "a bcrypt hash of a generated password"
    );
    wait_for(
        "n1's syncthing record on n2",
        Duration::from_secs(30),
        || {
            published(n2)
                .contains(&("n1".to_string(), "syncthing".to_string()))
                .then_some(())
        },
    );
    // n2 keeps its copy where the user says; n1 in its default folder.
    let n2_folder = n2.root.join("srv/shared");
    let o = agent_in(
        n2,
        &[
            "join",
            "syncthing",
            "n1",
            "--folder",
            &n2_folder.to_string_lossy(),
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "join failed: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let shared = |n: &Node| {
        if n.i == 2 {
            n2_folder.clone()
        } else {
            n.root.join("var/lib/cloudy/syncthing/shared")
        }
    };
    std::fs::write(shared(n1).join("from-n1.txt"), "written on n1\n").unwrap();
    let t_sync = Instant::now();
    wait_for("n1's file on n2", Duration::from_secs(90), || {
        (std::fs::read_to_string(shared(n2).join("from-n1.txt")).ok()? == "written on n1\n")
            .then_some(())
    });
    eprintln!("n1 -> n2 in {:.1} s", t_sync.elapsed().as_secs_f64());
    std::fs::write(shared(n2).join("from-n2.txt"), "written on n2\n").unwrap();
    wait_for("n2's file on n1", Duration::from_secs(60), || {
        (std::fs::read_to_string(shared(n1).join("from-n2.txt")).ok()? == "written on n2\n")
            .then_some(())
    });
    kill_and_see_it_back(&cloud, 1, "syncthing", "syncthing", 2);
    // And it still syncs after the restart.
    std::fs::write(shared(n1).join("after.txt"), "after the kill\n").unwrap();
    wait_for("a file after the restart", Duration::from_secs(60), || {
        (std::fs::read_to_string(shared(n2).join("after.txt")).ok()? == "after the kill\n")
            .then_some(())
    });
    eprintln!("{test}: {:.1} s", t0.elapsed().as_secs_f64());
}

/// A service that cannot start is reported failed in the services line (with why) instead of
/// keeping a verify stage waiting, while the others run; `status` shows it too.
#[test]
fn a_service_that_cannot_start_is_reported_failed() {
    let test = "a_service_that_cannot_start_is_reported_failed";
    if !ready(test, &[("syncthing", &syncthing())]) {
        return;
    }
    let mut cloud = cloud("sf", 1);
    seed(&mut cloud, 1, &["tahoe-introducer", "syncthing"]);
    cloud.nodes[0].env = vec![("CLOUDY_TAHOE".into(), "/nonexistent/tahoe".into())];
    cloud.start_all();
    let line = wait_for("services line", Duration::from_secs(60), || {
        services_line(&cloud.nodes[0])
    });
    assert_eq!(line["running"], serde_json::json!(["syncthing"]), "{line}");
    let why = line["failed"]["tahoe-introducer"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("/nonexistent/tahoe"), "{line}");
    let st = agent_in(&cloud.nodes[0], &["status"]);
    let st = String::from_utf8_lossy(&st.stdout);
    assert!(
        st.lines().any(|l| l.contains("tahoe-introducer")
            && l.contains("failed")
            && l.contains("/nonexistent/tahoe")),
        "{st}"
    );
    assert!(
        st.lines()
            .any(|l| l.contains("syncthing") && l.contains("running")),
        "{st}"
    );
}

fn rss_kib(pid: u64) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `make bench` (`bench/agent.sh services`): seed to published for each service, Tahoe put/get
/// throughput in a 3-node grid, memory of each service process.
#[test]
#[ignore]
fn bench_services() {
    let test = "bench_services";
    if !ready(
        test,
        &[("Tahoe-LAFS", &tahoe()), ("syncthing", &syncthing())],
    ) {
        return;
    }
    let mb: usize = std::env::var("CLOUDY_BENCH_TAHOE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    // n1 introducer + syncthing, n2 and n3 storage, n4 runs no service and watches.
    let mut cloud = cloud("sb", 4);
    seed(&mut cloud, 1, &["tahoe-introducer", "syncthing"]);
    seed(&mut cloud, 2, &["tahoe-storage"]);
    seed(&mut cloud, 3, &["tahoe-storage"]);
    seed(&mut cloud, 4, &[]);
    let mut started = Vec::new();
    for n in &mut cloud.nodes {
        n.spawn();
        started.push(Instant::now());
    }
    let want = [
        (1, "tahoe-introducer"),
        (1, "syncthing"),
        (2, "tahoe-storage"),
        (3, "tahoe-storage"),
    ];
    let mut seen: Vec<Option<Duration>> = vec![None; want.len()];
    let catalog = |n: &Node| -> Vec<(String, String)> {
        let t = std::fs::read_to_string(n.root.join("run/cloudy/catalog.json")).unwrap_or_default();
        let v: Value = serde_json::from_str(&t).unwrap_or_default();
        v["entries"]
            .as_array()
            .map(|es| {
                es.iter()
                    .map(|e| {
                        (
                            e["record"]["node"].as_str().unwrap_or("").to_string(),
                            e["record"]["type"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_for(
        "every service published on n4",
        Duration::from_secs(180),
        || {
            let c = catalog(&cloud.nodes[3]);
            for (k, (i, kind)) in want.iter().enumerate() {
                if seen[k].is_none() && c.contains(&(format!("n{i}"), kind.to_string())) {
                    seen[k] = Some(started[i - 1].elapsed());
                }
            }
            seen.iter().all(Option::is_some).then_some(())
        },
    );
    let lines: Vec<Value> = (1..=3)
        .map(|i| {
            wait_for("services line", Duration::from_secs(150), || {
                services_line(&cloud.nodes[i - 1])
            })
        })
        .collect();

    // Throughput: put on n2 (two shares go to n2 and n3), get on n3.
    let data: Vec<u8> = (0..(mb * 1024 * 1024) as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let file = cloud.nodes[1].root.with_extension("data");
    std::fs::write(&file, &data).unwrap();
    let tahoe_s = tahoe().to_string_lossy().into_owned();
    let dir = |n: &Node| {
        n.root
            .join("var/lib/cloudy/tahoe-storage/node")
            .to_string_lossy()
            .into_owned()
    };
    // Both storage servers connected first, so the put places two shares.
    let (n2, n3) = (&cloud.nodes[1], &cloud.nodes[2]);
    wait_for(
        "n2 sees two storage servers",
        Duration::from_secs(60),
        || {
            let o = run_in(n2, &["curl", "-s", "http://127.0.0.1:3459/?t=json"]);
            let v: Value = serde_json::from_slice(&o.stdout).ok()?;
            let up = v["servers"]
                .as_array()?
                .iter()
                .filter(|s| {
                    s["connection_status"]
                        .as_str()
                        .unwrap_or("")
                        .eq_ignore_ascii_case("connected")
                })
                .count();
            (up >= 2).then_some(())
        },
    );
    let t = Instant::now();
    let o = run_in(
        n2,
        &[&tahoe_s, "-d", &dir(n2), "put", &file.to_string_lossy()],
    );
    let put = t.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cap = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let out = n3.root.with_extension("got");
    let t = Instant::now();
    let o = run_in(
        n3,
        &[
            &tahoe_s,
            "-d",
            &dir(n3),
            "get",
            &cap,
            &out.to_string_lossy(),
        ],
    );
    let get = t.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::read(&out).unwrap() == data,
        "read back what was put"
    );

    println!("| measure (4-node microcloud, release agent) | value |");
    println!("|:--|--:|");
    for (k, (i, kind)) in want.iter().enumerate() {
        println!(
            "| seed to {kind} of n{i} published (on n4) | {:.1} s |",
            seen[k].unwrap().as_secs_f64()
        );
    }
    for (i, l) in lines.iter().enumerate() {
        println!(
            "| services line on n{} (agent start to all healthy) | {} s |",
            i + 1,
            l["elapsed_s"]
        );
    }
    let mibs = |d: Duration| mb as f64 / d.as_secs_f64();
    println!(
        "| tahoe put {mb} MiB on n2 (needed 1, total 2: n2 + n3) | {:.2} s, {:.1} MiB/s |",
        put.as_secs_f64(),
        mibs(put)
    );
    println!(
        "| tahoe get {mb} MiB on n3 | {:.2} s, {:.1} MiB/s |",
        get.as_secs_f64(),
        mibs(get)
    );
    for (i, service) in [
        (1, "tahoe-introducer"),
        (1, "syncthing"),
        (2, "tahoe-storage"),
        (3, "tahoe-storage"),
    ] {
        let pid = states(&cloud.nodes[i - 1])[service]["pid"]
            .as_u64()
            .unwrap_or(0);
        match rss_kib(pid) {
            Some(k) => println!(
                "| RSS of {service} on n{i} (pid {pid}) | {:.1} MiB |",
                k as f64 / 1024.0
            ),
            None => println!("| RSS of {service} on n{i} | not running |"),
        }
    }
    for i in 1..=4 {
        if let Some(k) = cloud.nodes[i - 1].rss_kib() {
            println!(
                "| RSS of the agent on n{i} | {:.1} MiB |",
                k as f64 / 1024.0
            );
        }
    }
}
