//! Test helper over ci/netns-microcloud.sh: nodes in network namespaces, each with its own
//! root directory and a real `cloudy-agent run` (which runs a real tincd). Everything made is
//! removed on drop, also when a test fails.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const KEY: &str = "test community key 0123456789";

pub fn harness() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/netns-microcloud.sh")
}

/// The agent under test; the bench points CLOUDY_AGENT_BIN at the release build.
pub fn agent() -> String {
    std::env::var("CLOUDY_AGENT_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_cloudy-agent").to_string())
}

pub fn tincd() -> Option<PathBuf> {
    ["/usr/sbin/tincd", "/usr/local/sbin/tincd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// None (with the reason printed) when this machine cannot run a microcloud at all.
pub fn available(test: &str) -> bool {
    if tincd().is_none() {
        eprintln!(
            "SKIP {test}: tincd not installed (apt-get install tinc; CI gets it from ci/deps.sh)"
        );
        return false;
    }
    if !["/usr/bin/ping", "/bin/ping"]
        .iter()
        .any(|p| Path::new(p).exists())
    {
        eprintln!("SKIP {test}: ping not installed (apt-get install iputils-ping; CI gets it from ci/deps.sh)");
        return false;
    }
    match Command::new(harness()).arg("check").output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!("SKIP {test}: {}", String::from_utf8_lossy(&o.stdout).trim());
            false
        }
        Err(e) => {
            eprintln!("SKIP {test}: running {}: {e}", harness().display());
            false
        }
    }
}

pub fn serf() -> Option<PathBuf> {
    ["/usr/bin/serf", "/usr/local/bin/serf"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Like `available`, and also avahi-daemon and serf, for the discovery tests.
pub fn discovery_available(test: &str) -> bool {
    if !available(test) {
        return false;
    }
    if !Path::new("/usr/sbin/avahi-daemon").exists() {
        eprintln!("SKIP {test}: avahi-daemon not installed (apt-get install avahi-daemon; CI gets it from ci/deps.sh)");
        return false;
    }
    if serf().is_none() {
        eprintln!(
            "SKIP {test}: serf not installed (apt-get install serf; CI gets it from ci/deps.sh)"
        );
        return false;
    }
    true
}

/// A TCP service inside namespace `ns` for the agent's health check to find: accepts and
/// closes connections (an unaccepted backlog would fill up and fail the check after ~2
/// minutes). Dropping it stops the "service".
pub struct Listener {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn listen_in(ns: &str, port: u16) -> Listener {
    let path = format!("/var/run/netns/{ns}");
    let l = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let f = fs::File::open(&path).unwrap();
        // Only this short-lived thread changes namespace; the socket stays in it.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        std::net::TcpListener::bind(("0.0.0.0", port)).unwrap()
    })
    .join()
    .unwrap();
    l.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        while !s.load(std::sync::atomic::Ordering::SeqCst) {
            while l.accept().is_ok() {}
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    Listener {
        stop,
        thread: Some(thread),
    }
}

pub struct Node {
    pub i: usize,
    pub ns: String,
    pub root: PathBuf,
    pub child: Option<Child>,
    pub key: String,
    /// Extra environment for the agent (e.g. CLOUDY_SERF to run without serf).
    pub env: Vec<(String, String)>,
}

impl Node {
    pub fn lan(&self) -> String {
        format!("10.213.0.{}", self.i)
    }

    pub fn out(&self) -> PathBuf {
        self.root.with_extension("out")
    }

    pub fn log(&self) -> PathBuf {
        self.root.with_extension("log")
    }

    pub fn ready_lines(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.out())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("{\"cloudy\":\"ready\""))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn members(&self) -> serde_json::Value {
        let text =
            fs::read_to_string(self.root.join("var/lib/cloudy/members.json")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    pub fn member_ids(&self) -> Vec<String> {
        self.members()["members"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn node_id(&self) -> String {
        fs::read_to_string(self.root.join("var/lib/cloudy/node-id"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    pub fn vpn(&self) -> String {
        let m = self.members();
        let id = m["me"].as_str().unwrap_or_default().to_string();
        m["members"][&id]["vpn"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn tincd_pid(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.root.join("run/tinc.cloudy.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    pub fn private_key(&self) -> Option<Vec<u8>> {
        fs::read(self.root.join("var/lib/cloudy/tinc/rsa_key.priv")).ok()
    }

    pub fn hosts(&self) -> Vec<String> {
        fs::read_dir(self.root.join("etc/tinc/cloudy/hosts"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn ping(&self, addr: &str, tries: u32) -> bool {
        Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "ping", "-n", "-q", "-c1", "-W1", addr,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
            || (tries > 1 && {
                std::thread::sleep(Duration::from_millis(200));
                self.ping(addr, tries - 1)
            })
    }

    /// Starts the agent; does not wait.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} already running", self.i);
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.out())
            .unwrap();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, &agent(), "--root"])
            .arg(&self.root)
            .args(["run", "--manage-network", "--tincd"])
            .arg(tincd().unwrap())
            // CLOUDY_NODE_LOG raises the nodes' log level when a run needs debugging.
            .env(
                "CLOUDY_LOG",
                std::env::var("CLOUDY_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Starts the agent and waits for its (next) ready line.
    pub fn start(&mut self) -> serde_json::Value {
        let before = self.ready_lines().len();
        self.spawn();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let lines = self.ready_lines();
            if lines.len() > before {
                return lines.last().unwrap().clone();
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "agent {} exited with {st} before ready; log:\n{}",
                    self.i,
                    fs::read_to_string(self.log()).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "agent {} not ready in 20 s",
                self.i
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `cloudy-agent services --json` as the CLI prints it on this node.
    pub fn services(&self) -> Vec<serde_json::Value> {
        let o = Command::new(agent())
            .arg("--root")
            .arg(&self.root)
            .args(["services", "--json"])
            .output()
            .unwrap();
        if !o.status.success() {
            return Vec::new();
        }
        serde_json::from_slice(&o.stdout).unwrap_or_default()
    }

    /// Ports in the catalog file the CLI reads, without starting a process (the bench polls
    /// dozens of nodes on a loaded machine).
    pub fn catalog_ports(&self) -> Vec<u64> {
        let text =
            fs::read_to_string(self.root.join("run/cloudy/catalog.json")).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        v["entries"]
            .as_array()
            .map(|es| {
                es.iter()
                    .filter_map(|e| e["record"]["port"].as_u64())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Resident memory of the running agent, KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    /// SIGKILL, the way a power cut or the OOM killer stops the agent.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // `ip netns exec` execs the agent, so the child's pid is the agent's.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

pub struct Cloud {
    pub prefix: String,
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cloud {
    /// `cloudy-agent ARGS` against node `i`'s root (its running agent, for most commands).
    pub fn cli(&self, i: usize, args: &[&str]) -> std::process::Output {
        std::process::Command::new(agent())
            .arg("--root")
            .arg(&self.nodes[i - 1].root)
            .args(args)
            .output()
            .unwrap()
    }

    /// The community key node `i` keeps (empty when it has none).
    pub fn stored_key(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i - 1].root.join("var/lib/cloudy/community.key"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// `tag` keeps concurrent tests' namespaces apart (2-4 letters).
    pub fn new(tag: &str, n: usize) -> Cloud {
        let prefix = format!("c{tag}{}", std::process::id() % 10000);
        let st = Command::new(harness())
            .args(["up", &prefix, &n.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "harness up failed");
        let mut dir = tempfile::tempdir().unwrap();
        // CLOUDY_KEEP keeps every node's root and log for a look after the run.
        if std::env::var_os("CLOUDY_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("microcloud: node roots kept in {}", dir.path().display());
        }
        let nodes = (1..=n)
            .map(|i| Node {
                i,
                ns: format!("{prefix}-n{i}"),
                root: dir.path().join(format!("n{i}")),
                child: None,
                key: KEY.into(),
                env: Vec::new(),
            })
            .collect();
        let mut c = Cloud {
            prefix,
            nodes,
            _dir: dir,
        };
        for i in 1..=n {
            c.write_seed(i, KEY);
        }
        c
    }

    /// The node's seed on its "SD card": named n<i>, bootstrapping from node 1.
    pub fn write_seed(&mut self, i: usize, key: &str) {
        let peers = if i == 1 {
            String::new()
        } else {
            "\"10.213.0.1:6655\"".into()
        };
        self.write_seed_text(
            i,
            key,
            &format!("peers = [{peers}]\n[network]\ninterface = \"eth0\"\n"),
        );
    }

    /// A seed as on a LAN with a router: no bootstrap peers, a default route (so mDNS
    /// multicast has a way out and the primary interface is the default route's).
    pub fn write_lan_seed(&mut self, i: usize) {
        self.write_seed_text(i, KEY, "[network]\ngateway = \"10.213.0.254\"\n");
    }

    pub fn write_seed_text(&mut self, i: usize, key: &str, rest: &str) {
        let node = &mut self.nodes[i - 1];
        node.key = key.into();
        // `rest` opens [network] last, so the address below lands in it.
        let seed = format!(
            "version = 1\n[node]\nname = \"n{i}\"\n[community]\nname = \"test\"\nkey = \"{key}\"\n{rest}\
             address = \"10.213.0.{i}/24\"\n"
        );
        let p = node.root.join("boot/firmware/cloudy.toml");
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, seed).unwrap();
    }

    /// avahi-daemon in node `i`'s namespace, announcing that node's service files.
    pub fn avahi(&self, i: usize, ifaces: Option<&str>) {
        let root = &self.nodes[i - 1].root;
        let mut c = Command::new(harness());
        c.args(["avahi", &self.prefix, &i.to_string()]).arg(root);
        if let Some(f) = ifaces {
            c.arg(f);
        }
        assert!(c.status().unwrap().success(), "avahi-daemon in node {i}");
    }

    /// The bridge stops flooding multicast: no mDNS between the nodes.
    pub fn no_multicast(&self) {
        let st = Command::new(harness())
            .args(["nomcast", &self.prefix])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Starts every agent at once, then waits for each one's ready line.
    pub fn start_all(&mut self) {
        for n in &mut self.nodes {
            n.spawn();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in &mut self.nodes {
            while n.ready_lines().is_empty() {
                assert!(Instant::now() < deadline, "node {} not ready in 30 s", n.i);
                if let Some(st) = n.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!("agent {} exited with {st}", n.i);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Waits until each of `among` lists exactly the ids of `among`.
    pub fn wait_members(&self, among: &[usize], within: Duration) -> Duration {
        let t0 = Instant::now();
        let mut want: Vec<String> = among.iter().map(|&i| self.nodes[i - 1].node_id()).collect();
        want.sort();
        loop {
            let ok = among
                .iter()
                .all(|&i| self.nodes[i - 1].member_ids() == want);
            if ok {
                return t0.elapsed();
            }
            if t0.elapsed() > within {
                let seen: Vec<_> = among
                    .iter()
                    .map(|&i| (i, self.nodes[i - 1].member_ids().len()))
                    .collect();
                panic!("members did not converge in {within:?}: (node, members known) {seen:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Each node pings the next (a ring) and node 1 pings everyone and back (a star): enough to
    /// show the mesh whole at sizes where all pairs would take long.
    pub fn ping_ring_and_star(&self, tries: u32) -> Vec<(usize, usize)> {
        let n = self.nodes.len();
        let mut pairs: Vec<(usize, usize)> = (1..=n).map(|a| (a, a % n + 1)).collect();
        for b in 2..=n {
            pairs.push((1, b));
            pairs.push((b, 1));
        }
        pairs.sort();
        pairs.dedup();
        let mut failed = Vec::new();
        std::thread::scope(|s| {
            let hs: Vec<_> = pairs
                .into_iter()
                .map(|(a, b)| {
                    let (na, nb) = (&self.nodes[a - 1], &self.nodes[b - 1]);
                    s.spawn(move || ((a, b), na.ping(&nb.vpn(), tries)))
                })
                .collect();
            for h in hs {
                let (pair, ok) = h.join().unwrap();
                if !ok {
                    failed.push(pair);
                }
            }
        });
        failed
    }

    /// Every ordered pair of `among` pings over the VPN; returns the pairs that did not.
    pub fn ping_all(&self, among: &[usize], tries: u32) -> Vec<(usize, usize)> {
        let mut failed = Vec::new();
        std::thread::scope(|s| {
            let hs: Vec<_> = among
                .iter()
                .flat_map(|&a| among.iter().filter(move |&&b| b != a).map(move |&b| (a, b)))
                .map(|(a, b)| {
                    let (na, nb) = (&self.nodes[a - 1], &self.nodes[b - 1]);
                    s.spawn(move || ((a, b), na.ping(&nb.vpn(), tries)))
                })
                .collect();
            for h in hs {
                let (pair, ok) = h.join().unwrap();
                if !ok {
                    failed.push(pair);
                }
            }
        });
        failed
    }

    /// What a human would look at when the VPN does not carry a ping.
    pub fn diagnose(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let tincds: Vec<String> = fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter(|e| {
                    fs::read(e.path().join("cmdline"))
                        .map(|c| {
                            let c = String::from_utf8_lossy(&c).replace('\0', " ");
                            c.contains("tincd")
                                && c.contains(&*n.root.join("etc/tinc/cloudy").to_string_lossy())
                        })
                        .unwrap_or(false)
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            let ip = |args: &[&str]| {
                let o = Command::new("ip")
                    .args(["-n", &n.ns])
                    .args(args)
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&o.stdout).into_owned()
            };
            out += &format!(
                "== node {} vpn {} tincd pids {:?} hosts {:?}\n{}{}",
                n.i,
                n.vpn(),
                tincds,
                n.hosts(),
                ip(&["-br", "addr"]),
                ip(&["neigh"])
            );
        }
        out
    }

    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(self.nodes[i - 1].log()).unwrap_or_default()
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = Command::new(harness())
            .args(["down", &self.prefix])
            .status();
        if std::thread::panicking() {
            for n in &self.nodes {
                eprintln!("--- node {} log (tail) ---", n.i);
                let log = fs::read_to_string(n.log()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(25).collect();
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// The PHC hash of `password`, made by the agent's own `seed hash-password`.
pub fn hash(password: &str) -> String {
    use std::io::Write;
    let mut c = std::process::Command::new(agent())
        .args(["seed", "hash-password"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(c.stdin.take().unwrap(), "{password}").unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success());
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// Polls `ok` until it holds, failing the test after `within`; how long it took.
pub fn wait_for(
    what: &str,
    within: std::time::Duration,
    mut ok: impl FnMut() -> bool,
) -> std::time::Duration {
    let t0 = std::time::Instant::now();
    while !ok() {
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    t0.elapsed()
}

/// A command's exit code and both outputs, for assertion messages.
pub fn said(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
