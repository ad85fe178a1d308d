//! The CLI as a newcomer first meets it: `services`, `scan` and `select` on a node where no
//! agent runs, and `seed check` on a seed whose `[community]` has no key.

use std::process::{Command, Output};

fn agent(root: &std::path::Path, args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_cloudy-agent"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("CLOUDY_ROOT")
        .output()
        .expect("run cloudy-agent");
    eprintln!(
        "$ cloudy-agent {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// At 2293e0e each answered `.../run/cloudy/catalog.json: No such file or directory (os error
/// 2): the catalog exists while `cloudy-agent run` runs with a community`, with no fix.
#[test]
fn without_a_running_agent_the_catalog_commands_say_so_and_how_to_start_it() {
    let d = tempfile::tempdir().unwrap();
    for args in [
        &["services"][..],
        &["services", "--type", "syncthing"],
        &["scan"],
        &["select", "syncthing"],
    ] {
        let o = agent(d.path(), args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("the Cloudy agent is not running"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("systemctl start cloudy-agent"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("journalctl -u cloudy-agent"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("os error"), "{args:?}: {err}");
    }
}

/// At 2293e0e `seed check` said only `ok` for a `[community]` without a key: the node then
/// stays alone and says so only at boot.
#[test]
fn seed_check_warns_that_a_community_without_a_key_leaves_the_node_alone() {
    let d = tempfile::tempdir().unwrap();
    let seed = d.path().join("cloudy.toml");
    std::fs::write(&seed, "version = 1\n[community]\nname = \"home\"\n").unwrap();
    let o = agent(d.path(), &["seed", "check", seed.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "still a valid seed: {err}");
    assert!(
        // Issue 15: such a node no longer stays alone, it waits for a member's approval.
        err.contains("warning") && err.contains("waits as a pending node"),
        "{err}"
    );
    assert!(
        err.contains("community.key") && err.contains("fix:"),
        "{err}"
    );

    std::fs::write(
        &seed,
        "version = 1\n[community]\nname = \"home\"\nkey = \"correct horse battery staple 42\"\n",
    )
    .unwrap();
    let o = agent(d.path(), &["seed", "check", seed.to_str().unwrap()]);
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "no warning with a key"
    );
}

/// At 2293e0e `join tahoe-introducer` (the name the seed and the catalog use) answered
/// `cannot join "tahoe-introducer": choose one of tahoe-lafs, syncthing, streaming`.
#[test]
fn join_takes_the_seeds_names_and_lists_one_vocabulary() {
    let d = tempfile::tempdir().unwrap();
    let o = agent(d.path(), &["join", "ftp", "--wait", "0"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("choose one of tahoe-introducer (or tahoe-lafs), streaming, syncthing"),
        "{err}"
    );
    for name in ["tahoe-introducer", "tahoe-lafs"] {
        // Known now: it fails further on (no agent runs here), not on the name.
        let o = agent(d.path(), &["join", name, "--wait", "0"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("cannot join"), "{name}: {err}");
    }
}

/// Until this change `seed check` stopped at the first bad section: a seed with two typos took
/// two runs to fix, and nothing said that a node would still apply the good sections.
#[test]
fn seed_check_names_every_bad_section_and_that_the_rest_applies() {
    let d = tempfile::tempdir().unwrap();
    let seed = d.path().join("cloudy.toml");
    std::fs::write(
        &seed,
        "version = 1\n[node]\nname = \"kitchen\"\n[dashboard]\nprot = 8080\n[ssh]\nauthorized_keys = []\nshell = true\n",
    )
    .unwrap();
    let o = agent(d.path(), &["seed", "check", seed.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("prot"), "{err}");
    assert!(err.contains("shell"), "{err}");
    assert!(
        err.contains("2 bad section(s): [dashboard], [ssh]"),
        "{err}"
    );
    assert!(err.contains("apply the rest"), "{err}");
}

/// `net` is what tincd's tinc-up runs; a user never needs it, so `--help` must not offer it.
#[test]
fn help_does_not_offer_the_internal_net_command() {
    let d = tempfile::tempdir().unwrap();
    let o = agent(d.path(), &["--help"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(out.contains("status"), "{out}");
    assert!(!out.contains("\n  net "), "{out}");
}
