//! Issue 18, done-when 2: the README's "Two nodes in ten minutes", done word by word. The
//! README's own fenced blocks are read here: its seeds are the seeds the nodes boot with, and
//! every command in it is one this file (or the ISO half, `tests/walkthrough.rs`) runs.
//! The agent half runs in network namespaces: kitchen (shares Syncthing) and hall (joins it)
//! on one LAN, found by mDNS with no bootstrap peers; the password is read off the node's
//! console as the README says, the certificate fingerprint and the URL off its login screen
//! (`/etc/issue.d/cloudy.issue`), hall joins kitchen's Syncthing from its dashboard, and a file
//! put in kitchen's shared folder appears in hall's. A third node with another community key
//! sits on the same LAN, as in the README's troubleshooting: kitchen's `status` must say
//! "a member with another key was seen". Last, kitchen gets another address and its login
//! screen must show it within seconds (issue 18, defect 3, through the real rtnetlink).
//!
//! On the old code (main at 4b7764b) the README had no walk-through (the first test failed at
//! "no section"), no node wrote a login screen (the second failed reading
//! etc/issue.d/cloudy.issue) and a wrong key on the LAN was silent.
//! Needs root, tinc and syncthing.

mod microcloud;
mod web;

use microcloud::Cloud;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The README's section `title`, up to the next `## `.
fn section(title: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("README has no section {title:?}"));
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map(|e| e + 3).unwrap_or(rest.len());
    rest[..end].to_string()
}

/// The fenced blocks of `text` with the given info string, in order.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        let t = line.trim_start();
        match &mut cur {
            None if t == format!("```{lang}") => cur = Some(String::new()),
            Some(b) if t == "```" => {
                out.push(std::mem::take(b));
                cur = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

/// Every command of the walk-through, and where it is done word by word. A command added to
/// the README without a line here fails `every_walkthrough_command_is_tested`.
const COMMANDS: &[(&str, &str)] = &[
    ("make image", "tests/walkthrough.rs (the ISO it builds; make test runs it)"),
    ("cargo build --release -p cloudy-agent", "this file: the agent it runs is that crate's binary"),
    ("export PATH=$PWD/target/release:$PATH", "this file and tests/walkthrough.rs: the built binaries"),
    ("cloudy-agent seed check kitchen.toml", "the_walkthrough_in_namespaces"),
    ("cloudy-agent seed check hall.toml", "the_walkthrough_in_namespaces"),
    (
        "cloudy-image customise out/pc-686-pae/cloudy-pc-686-pae.iso --seed kitchen.toml -o kitchen.iso",
        "tests/walkthrough.rs",
    ),
    (
        "cloudy-image customise out/pc-686-pae/cloudy-pc-686-pae.iso --seed hall.toml -o hall.iso",
        "tests/walkthrough.rs",
    ),
    ("cloudy-agent join syncthing", "the_walkthrough_in_namespaces"),
    ("cloudy-agent status", "the_walkthrough_in_namespaces"),
];

#[test]
fn every_walkthrough_command_is_tested() {
    let walk = section("Two nodes in ten minutes");
    let commands: Vec<String> = blocks(&walk, "sh")
        .iter()
        .flat_map(|b| {
            b.lines()
                .map(str::trim)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let known: Vec<&str> = COMMANDS.iter().map(|(c, _)| *c).collect();
    assert_eq!(commands, known, "the README's commands and the tested ones");
    // The ISO half names the image commands it runs, word by word.
    let iso_half = std::fs::read_to_string(repo().join("tests/walkthrough.rs")).unwrap();
    for (c, _) in COMMANDS
        .iter()
        .filter(|(c, _)| c.starts_with("cloudy-image"))
    {
        let args: Vec<&str> = c.split_whitespace().skip(1).collect();
        let quoted = args
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(",");
        // As rustfmt lays it out: whitespace aside.
        let compact: String = iso_half.split_whitespace().collect();
        assert!(
            compact.contains(&quoted),
            "tests/walkthrough.rs runs `{c}` ({quoted})"
        );
    }
    // The two seeds, then the seed reference: the template the image carries, in full.
    assert_eq!(blocks(&walk, "toml").len(), 2);
    let reference = blocks(&section("The seed"), "toml");
    let example =
        std::fs::read_to_string(repo().join("image/src/stages/cloudy.toml.example")).unwrap();
    assert!(
        reference.contains(&example),
        "README's seed reference is image/src/stages/cloudy.toml.example"
    );
}

/// `cloudy-agent --root ROOT ARGS` in the node's namespace: a shell on that node.
fn agent(args: &[&str], node: &microcloud::Node) -> (String, i32) {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &node.ns, &microcloud::agent(), "--root"])
        .arg(&node.root);
    let o = c.args(args).output().unwrap();
    (
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        o.status.code().unwrap_or(-1),
    )
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_walkthrough_in_namespaces() {
    let test = "the_walkthrough_in_namespaces";
    if !microcloud::available(test) {
        return;
    }
    if !Path::new("/usr/bin/syncthing").exists() {
        eprintln!("SKIP {test}: syncthing not installed (CI gets it from ci/deps.sh)");
        return;
    }
    let walk = section("Two nodes in ten minutes");
    let seeds = blocks(&walk, "toml");
    let (kitchen, hall) = (&seeds[0], &seeds[1]);
    assert!(kitchen.contains("name = \"kitchen\"") && hall.contains("name = \"hall\""));

    // 3. `cloudy-agent seed check kitchen.toml` and `hall.toml`.
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [("kitchen.toml", kitchen), ("hall.toml", hall)] {
        std::fs::write(dir.path().join(name), text).unwrap();
        let o = Command::new(microcloud::agent())
            .args(["seed", "check", name])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "seed check {name}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // 4. Boot: the README's seeds, plus what a LAN's DHCP and router would give (namespaces
    // have no DHCP). Node 3 is a stranger with another community key on the same LAN.
    let mut cloud = Cloud::new("wk", 3);
    {
        use std::os::unix::fs::PermissionsExt;
        let top = cloud.nodes[0].root.parent().unwrap();
        std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let stranger = "version = 1\n[node]\nname = \"stranger\"\n[community]\nname = \"ourstreet\"\n\
                    key = \"another street's long shared secret\"\n";
    for (i, seed) in [(1, kitchen.as_str()), (2, hall.as_str()), (3, stranger)] {
        let n = &mut cloud.nodes[i - 1];
        let text =
            format!("{seed}[network]\ngateway = \"10.213.0.254\"\naddress = \"10.213.0.{i}/24\"\n");
        let p = n.root.join("boot/firmware/cloudy.toml");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        // The screen: the node's console.
        std::fs::create_dir_all(n.root.join("dev")).unwrap();
        std::fs::write(n.root.join("dev/console"), "").unwrap();
    }
    cloud.nodes[2].key = "another street's long shared secret".into();
    cloud.start_all();
    cloud.wait_members(&[1, 2], Duration::from_secs(30));

    // The screen shows the password once, and the login screen the URL and fingerprint.
    let screen = |i: usize| -> (String, String, String) {
        let root = &cloud.nodes[i - 1].root;
        let console = std::fs::read_to_string(root.join("dev/console")).unwrap();
        let password = console
            .lines()
            .find_map(|l| l.strip_prefix("cloudy: dashboard login: admin / "))
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no password on node {i}'s console:\n{console}"))
            .to_string();
        let issue = root.join("etc/issue.d/cloudy.issue");
        let mut text = String::new();
        wait_for("the login screen", Duration::from_secs(10), || {
            text = std::fs::read_to_string(&issue).unwrap_or_default();
            text.contains(&format!("10.213.0.{i}"))
        });
        let pin = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("certificate SHA-256: "))
            .unwrap_or_else(|| panic!("no fingerprint on the login screen:\n{text}"))
            .to_string();
        (password, pin, text)
    };
    let (kpass, kpin, kissue) = screen(1);
    assert!(kissue.contains("Cloudy node kitchen"), "{kissue}");
    assert!(kissue.contains("https://kitchen.local:8443/"), "{kissue}");
    assert!(kissue.contains("seed: applied"), "{kissue}");
    let (hpass, hpin, hissue) = screen(2);
    assert!(hissue.contains("https://hall.local:8443/"), "{hissue}");

    // 5. Log in to both dashboards with the password from the screen, the certificate pinned
    // by the fingerprint the screen shows.
    let k_https = "10.213.0.1:8443";
    let h_https = "10.213.0.2:8443";
    web::wait_up(&cloud.nodes[0].ns, k_https, Duration::from_secs(30));
    web::wait_up(&cloud.nodes[1].ns, h_https, Duration::from_secs(30));
    let _kcookie = web::tls::login(&cloud.nodes[0].ns, k_https, &kpin, &kpass);
    let hcookie = web::tls::login(&cloud.nodes[1].ns, h_https, &hpin, &hpass);

    // 6. On hall: the syncthing tab shows kitchen's row; Join it.
    let hns = cloud.nodes[1].ns.clone();
    wait_for(
        "kitchen's Syncthing on hall's tab",
        Duration::from_secs(60),
        || {
            web::tls::get(
                &hns,
                h_https,
                &hpin,
                "/services?type=syncthing",
                Some(&hcookie),
            )
            .text()
            .contains("kitchen:22000")
        },
    );
    // `cloudy-agent join syncthing` from a shell on hall (the README's other way), first: once
    // hall runs Syncthing itself, `join` without a provider would pick hall and refuse.
    let (out, code) = agent(&["join", "syncthing"], &cloud.nodes[1]);
    assert_eq!(code, 0, "cloudy-agent join syncthing on hall: {out}");

    // And Join on kitchen's row of hall's dashboard: the same, again.
    let r = web::tls::post_form(
        &hns,
        h_https,
        &hpin,
        "/join",
        Some(&hcookie),
        "type=syncthing&provider=kitchen%3A22000",
    );
    assert!(r.status < 400, "Join: {} {}", r.status, r.text());
    // A file put in kitchen's shared folder appears on hall.
    let kshared = cloud.nodes[0].root.join("var/lib/cloudy/syncthing/shared");
    let hshared = cloud.nodes[1].root.join("var/lib/cloudy/syncthing/shared");
    wait_for("kitchen's shared folder", Duration::from_secs(30), || {
        kshared.join(".stfolder").exists()
    });
    std::fs::write(kshared.join("hello.txt"), "from the kitchen\n").unwrap();
    wait_for("the file on hall", Duration::from_secs(90), || {
        std::fs::read_to_string(hshared.join("hello.txt"))
            .ok()
            .as_deref()
            == Some("from the kitchen\n")
    });
    // The tab links Syncthing's own page (on the UI origin, port 8444) and names the folder.
    let page = web::tls::get(
        &hns,
        h_https,
        &hpin,
        "/services?type=syncthing",
        Some(&hcookie),
    );
    assert!(
        page.text()
            .contains("href=\"https://10.213.0.2:8444/ui/syncthing/\""),
        "{}",
        page.text()
    );
    assert!(
        page.text().contains(&hshared.display().to_string()),
        "{}",
        page.text()
    );

    // `cloudy-agent status`: the addresses and the dashboard's URL; on kitchen, the stranger.
    let (st, _) = agent(&["status"], &cloud.nodes[1]);
    assert!(st.contains("url:        https://hall.local:8443/"), "{st}");
    wait_for(
        "the stranger seen by kitchen",
        Duration::from_secs(20),
        || {
            agent(&["status"], &cloud.nodes[0])
                .0
                .contains("a member with another key was seen: 1 node(s)")
        },
    );
    assert!(
        cloud
            .log(1)
            .contains("a member with another key was seen on the LAN"),
        "kitchen's journal"
    );

    // The login screen follows the addresses (a new DHCP lease, say): the agent rewrites it.
    let issue = cloud.nodes[0].root.join("etc/issue.d/cloudy.issue");
    let st = Command::new("ip")
        .args([
            "-n",
            &cloud.nodes[0].ns,
            "addr",
            "add",
            "10.213.0.51/24",
            "dev",
            "eth0",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    wait_for(
        "the new address on the login screen",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&issue)
                .unwrap_or_default()
                .contains("10.213.0.51")
        },
    );
}
