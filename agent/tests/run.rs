//! The agent binary as the boot unit and a user run it: seed checks, the ready line with good,
//! bad and missing seeds, and a restart that changes nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn agent(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cloudy-agent"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env("CLOUDY_LOG", "warn")
        .output()
        .unwrap()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../model/tests/seeds")
        .join(name)
}

fn ready(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("{\"cloudy\":\"ready\""))
        .unwrap_or_else(|| {
            panic!(
                "no ready line; stdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).unwrap()
}

#[test]
fn seed_check_accepts_good_and_names_the_key_in_bad() {
    let root = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let out = agent(root.path(), &["seed", "check", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if name.starts_with("good-") {
            assert!(out.status.success(), "{name}: {stderr}");
        } else {
            assert_eq!(out.status.code(), Some(1), "{name} accepted");
            assert!(
                stderr.contains(&name),
                "{name}: message does not name the file: {stderr}"
            );
        }
    }
}

#[test]
fn bad_seed_still_reaches_ready_and_says_why() {
    let root = tempfile::tempdir().unwrap();
    let medium = root.path().join("boot/firmware/cloudy.toml");
    std::fs::create_dir_all(medium.parent().unwrap()).unwrap();
    std::fs::copy(fixture("bad-community-key.toml"), &medium).unwrap();
    let t0 = Instant::now();
    // `--once` (changed with issue 15): a node in no community now stays up in setup mode,
    // serving its dashboard, instead of exiting after the ready line this test checks.
    let out = agent(root.path(), &["run", "--once"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "ready took {:?}",
        t0.elapsed()
    );
    let r = ready(&out);
    assert_eq!(r["node"], "cloudy", "booted on defaults");
    let errs = r["seed_errors"].as_array().unwrap();
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].as_str().unwrap().contains("community.key"),
        "{errs:?}"
    );
    assert_eq!(
        r["community"],
        serde_json::Value::Null,
        "no mesh from a refused seed"
    );
    let status = agent(root.path(), &["status"]);
    let s = String::from_utf8_lossy(&status.stdout);
    assert!(
        s.contains("seed error:") && s.contains("community.key"),
        "{s}"
    );
}

#[test]
fn no_seed_reaches_ready_alone_with_a_fresh_identity() {
    let root = tempfile::tempdir().unwrap();
    // `--once` (changed with issue 15): a node in no community now stays up in setup mode,
    // serving its dashboard, instead of exiting after the ready line this test checks.
    let out = agent(root.path(), &["run", "--once"]);
    assert!(out.status.success());
    let r = ready(&out);
    assert!(r["seed_errors"].as_array().unwrap().is_empty());
    assert_eq!(r["node_id"].as_str().unwrap().len(), 32);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("dashboard login: admin / "),
        "first boot shows the generated password"
    );
    let again = agent(root.path(), &["run", "--once"]);
    assert_eq!(ready(&again)["node_id"], r["node_id"]);
    assert!(
        !String::from_utf8_lossy(&again.stdout).contains("dashboard login"),
        "shown only once"
    );
}

#[test]
fn community_seed_applies_once_and_restarts_change_nothing() {
    let Some(tincd) = ["/usr/sbin/tincd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        eprintln!("SKIP community_seed_applies_once_and_restarts_change_nothing: tincd not installed (apt-get install tinc)");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let medium = root.path().join("boot/firmware/cloudy.toml");
    std::fs::create_dir_all(medium.parent().unwrap()).unwrap();
    std::fs::copy(fixture("good-full.toml"), &medium).unwrap();
    let run = || {
        agent(
            root.path(),
            &["run", "--once", "--tincd", tincd.to_str().unwrap()],
        )
    };
    let first = ready(&run());
    assert_eq!(first["community"], "sants");
    assert!(first["vpn_address"].as_str().unwrap().starts_with("10.99."));
    let priv_key = root.path().join("var/lib/cloudy/tinc/rsa_key.priv");
    let key1 = std::fs::read(&priv_key).unwrap();
    let seed_after = std::fs::read_to_string(&medium).unwrap();
    assert!(
        !seed_after.contains("correct horse"),
        "community key left on the boot medium"
    );
    assert!(
        !seed_after.contains("$y$"),
        "password hash left on the boot medium"
    );
    let conf = root.path().join("etc/tinc/cloudy/tinc.conf");
    let conf1 = std::fs::read_to_string(&conf).unwrap();
    assert!(conf1.contains("Mode = switch"));
    let mtime = std::fs::metadata(&conf).unwrap().modified().unwrap();

    let second = ready(&run());
    assert_eq!(second["node_id"], first["node_id"]);
    assert_eq!(second["vpn_address"], first["vpn_address"]);
    assert_eq!(
        second["community"], "sants",
        "the stored key carries on without the seed's"
    );
    assert_eq!(std::fs::read(&priv_key).unwrap(), key1, "tinc key replaced");
    assert_eq!(
        std::fs::metadata(&conf).unwrap().modified().unwrap(),
        mtime,
        "tinc.conf rewritten"
    );
    let keys = std::fs::read_to_string(root.path().join("root/.ssh/authorized_keys")).unwrap();
    assert!(keys.contains("me@laptop"));
}

/// A boot medium the agent cannot write keeps the seed's secrets: the node still comes up, and
/// says so loudly on the console, in the ready line and in `status`. The medium is made
/// read-only by a bind mount in a private mount namespace (`unshare`, as root).
#[test]
fn read_only_medium_keeps_the_secret_and_says_so() {
    let root = tempfile::tempdir().unwrap();
    let firmware = root.path().join("boot/firmware");
    std::fs::create_dir_all(&firmware).unwrap();
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$NwZ4byZvLV+H8Rqc8Q0s8w$8dRbbGgPfDasaEPgPJZsneNCEuYXxPOlNn9Qkm2lYnQ";
    let seed = format!("version = 1\n[dashboard]\npassword_hash = \"{hash}\"\n");
    std::fs::write(firmware.join("cloudy.toml"), &seed).unwrap();
    let probe = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIP read_only_medium_keeps_the_secret_and_says_so: no mount namespace here (needs root and unshare)");
        return;
    }
    let script = r#"mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@""#;
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&firmware)
        .arg(env!("CARGO_BIN_EXE_cloudy-agent"))
        .arg("--root")
        .arg(root.path())
        .args(["run", "--once"])
        .env("CLOUDY_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(firmware.join("cloudy.toml")).unwrap(),
        seed,
        "the medium was read-only"
    );
    let console = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        console
            .lines()
            .any(|l| l.contains("WARNING") && l.contains("boot/firmware/cloudy.toml")),
        "no warning on the console:\n{console}"
    );
    let r = ready(&out);
    let errors = r["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e
            .as_str()
            .unwrap()
            .contains("still holds [dashboard] password_hash")),
        "{errors:?}"
    );
    let status = agent(root.path(), &["status"]);
    let s = String::from_utf8_lossy(&status.stdout);
    assert!(
        s.lines()
            .any(|l| l.starts_with("WARNING") && l.contains("boot/firmware/cloudy.toml")),
        "status does not warn:\n{s}"
    );
    assert!(!s.contains(hash), "status quotes the secret:\n{s}");
}

/// The password generated on a first boot without `[dashboard] password_hash` is shown on the
/// console only: stdout and stderr go to the journal, which keeps them on disk. A private root
/// stands for the console with `<root>/dev/console`.
#[test]
fn generated_password_goes_to_the_console_only() {
    use cloudy_agent::os::identity::{verify_password, DASHBOARD_HASH_FILE};
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("dev")).unwrap();
    let console = root.path().join("dev/console");
    std::fs::write(&console, "").unwrap();
    let out = agent(root.path(), &["run", "--once"]);
    assert!(out.status.success());
    ready(&out);
    let logged = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // What follows "admin / " on a line the journal gets must not be a password.
    for line in logged.lines() {
        if let Some((_, after)) = line.split_once("dashboard login: admin / ") {
            let word = after.split_whitespace().next().unwrap_or("");
            let password_like = word.len() >= 12 && word.chars().all(|c| c.is_ascii_alphanumeric());
            assert!(
                !password_like,
                "stdout/stderr (the journal) carry the password: {line}"
            );
        }
    }
    let shown = std::fs::read_to_string(&console).unwrap();
    let password = shown
        .lines()
        .find_map(|l| l.split_once("dashboard login: admin / "))
        .and_then(|(_, after)| after.split_whitespace().next())
        .unwrap_or_else(|| panic!("no password on the console: {shown:?}"))
        .to_string();
    assert_eq!(password.len(), 20, "{shown}");
    assert!(
        !logged.contains(&password),
        "the password reached stdout/stderr"
    );
    let hash = std::fs::read_to_string(
        root.path()
            .join(DASHBOARD_HASH_FILE.trim_start_matches('/')),
    )
    .unwrap();
    assert!(
        verify_password(hash.trim(), &password),
        "the stored hash is not the shown password's"
    );
    // Nothing on disk holds it but the console stand-in.
    fn walk(dir: &Path, skip: &Path, password: &str) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p == skip || p.is_symlink() {
                continue;
            }
            if p.is_dir() {
                walk(&p, skip, password);
            } else if let Ok(bytes) = std::fs::read(&p) {
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(password),
                    "{} holds the password",
                    p.display()
                );
            }
        }
    }
    walk(root.path(), &console, &password);
    let again = agent(root.path(), &["run", "--once"]);
    assert!(again.status.success());
    assert_eq!(
        std::fs::read_to_string(&console).unwrap(),
        shown,
        "shown once, on the first boot only"
    );
}
