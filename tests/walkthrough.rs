//! The ISO half of the README's "Two nodes in ten minutes" (issue 18, done-when 2); the agent
//! half runs in network namespaces in `agent/tests/walkthrough.rs`, which also checks that every
//! `cloudy-image` command of the walk-through appears here word by word.
//!
//! NOT RUN when it was written (the QEMU suite is the coordinator's): it needs the
//! `make image` output `out/pc-686-pae/cloudy-pc-686-pae.iso` and boots it under TCG.

use std::path::Path;
use std::process::Command;

use cloudy_tests::*;

/// The README's fenced `toml` blocks of the walk-through: kitchen's seed, then hall's.
fn seeds() -> (String, String) {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("\n## Two nodes in ten minutes\n")
        .expect("README has the walk-through");
    let walk = &readme[start + 1..];
    let walk = &walk[..walk[3..].find("\n## ").map(|e| e + 3).unwrap_or(walk.len())];
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in walk.lines() {
        match (&mut cur, line.trim_start()) {
            (None, "```toml") => cur = Some(String::new()),
            (Some(b), "```") => {
                out.push(std::mem::take(b));
                cur = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    assert_eq!(out.len(), 2, "two seeds in the walk-through");
    (out[0].clone(), out[1].clone())
}

/// cloudy-image in `dir`, where the README's relative paths resolve (`out/` is the checkout's).
fn cloudy_image_in(dir: &Path, args: &[&str]) -> std::process::Output {
    let o = Command::new(image_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run cloudy-image");
    eprintln!("$ cloudy-image {}\n{}", args.join(" "), text(&o));
    o
}

/// `make image`'s ISO, customised with the README's two seeds by the README's commands (the
/// built ISO left as it was), each copy booted until its node is ready under its own name,
/// with the generated dashboard password on the serial console (the screen's twin: the kernel
/// line names tty0 and the serial port).
#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "end-to-end (root, boots images in QEMU): make test runs it"
)]
fn the_walkthrough_with_the_iso() {
    require_root();
    let built = repo().join("out/pc-686-pae/cloudy-pc-686-pae.iso");
    if !built.exists() {
        let o = Command::new("make")
            .arg("image")
            .current_dir(repo())
            .status()
            .expect("make image");
        assert!(o.success(), "make image");
    }
    let before = std::fs::read(&built).unwrap();
    let dir = out_dir("walkthrough");
    std::os::unix::fs::symlink(repo().join("out"), dir.join("out")).unwrap();
    let (kitchen, hall) = seeds();
    std::fs::write(dir.join("kitchen.toml"), kitchen).unwrap();
    std::fs::write(dir.join("hall.toml"), hall).unwrap();

    let o = cloudy_image_in(
        &dir,
        &[
            "customise",
            "out/pc-686-pae/cloudy-pc-686-pae.iso",
            "--seed",
            "kitchen.toml",
            "-o",
            "kitchen.iso",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = cloudy_image_in(
        &dir,
        &[
            "customise",
            "out/pc-686-pae/cloudy-pc-686-pae.iso",
            "--seed",
            "hall.toml",
            "-o",
            "hall.iso",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        std::fs::read(&built).unwrap() == before,
        "the built ISO is left as it was"
    );

    for name in ["kitchen", "hall"] {
        let iso = dir.join(format!("{name}.iso"));
        let out = dir.join(format!("boot-{name}"));
        std::fs::create_dir_all(&out).unwrap();
        let o = cloudy_image(&[
            "verify",
            "--board",
            "pc-686-pae",
            "--out",
            out.to_str().unwrap(),
            "--image",
            iso.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{name} boots: {}", text(&o));
        let ready = String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.contains("\"cloudy\":\"ready\""))
            .map(str::to_string)
            .unwrap_or_default();
        let ready: serde_json::Value = serde_json::from_str(&ready).unwrap_or_default();
        assert_eq!(ready["hostname"], name, "{ready}");
        let console =
            std::fs::read_to_string(out.join("pc-686-pae/verify-console.log")).unwrap_or_default();
        assert!(
            console.contains("cloudy: dashboard login: admin / "),
            "{name}: the generated password is on the console:\n{console}"
        );
    }
}
