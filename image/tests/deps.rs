//! `make image` installs the build set of ci/deps.sh only: it must hold every package the
//! build checks for (image/src/tools.rs, every board, the boot check included), and none of
//! the test-only ones. At 2293e0e there was one set: `make image` installed Chromium,
//! live-build, avahi-daemon, serf, tinc and pip-installed Tahoe-LAFS into /opt.

use std::path::Path;

use cloudy_image::board::{self, Board};
use cloudy_image::tools;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The words of a bash array `name=( ... )` in ci/deps.sh, versions cut off.
fn array(script: &str, name: &str) -> Vec<String> {
    let start = script
        .find(&format!("\n{name}=("))
        .unwrap_or_else(|| panic!("ci/deps.sh has no {name}=( )"));
    let body = &script[start + name.len() + 3..];
    let body = &body[..body.find(')').unwrap()];
    body.lines()
        .map(|l| l.split('#').next().unwrap())
        .flat_map(str::split_whitespace)
        .map(|w| w.split('=').next().unwrap().to_string())
        .collect()
}

#[test]
fn the_build_set_has_what_the_build_checks_and_nothing_only_tests_need() {
    let script = std::fs::read_to_string(repo().join("ci/deps.sh")).unwrap();
    let mut build = array(&script, "build_pkgs");
    build.extend(array(&script, "backports"));
    let test = array(&script, "test_pkgs");
    let hw = repo().join("hardware");
    let boards = board::list(&hw);
    assert!(boards.len() >= 3, "{boards:?}");
    for name in &boards {
        let (b, _, _) = Board::find(&hw, name).unwrap();
        for t in tools::for_build(&b, true, true) {
            // "qemu-system-arm (from bookworm-backports)" -> qemu-system-arm
            let pkg = t.package.split_whitespace().next().unwrap();
            // Essential: on every Debian system already.
            let essential = ["dpkg", "coreutils"].contains(&pkg);
            assert!(
                essential || build.iter().any(|p| p == pkg),
                "{name}: {} comes from {pkg}, not in the build set",
                t.program
            );
        }
    }
    // `pip download` of the image's wheels runs on the host
    assert!(build.iter().any(|p| p == "python3-pip"));
    for only_tests in [
        "chromium",
        "chromium-driver",
        "live-build",
        "avahi-daemon",
        "serf",
        "tinc",
        "syncthing",
        "python3-venv",
    ] {
        assert!(
            !build.iter().any(|p| p == only_tests),
            "{only_tests} is in the build set"
        );
        assert!(
            test.iter().any(|p| p == only_tests),
            "{only_tests} kept for the tests"
        );
    }
    // Tahoe-LAFS goes into /opt for the test set only
    let tahoe_calls: Vec<&str> = script
        .lines()
        .filter(|l| l.contains("install_tahoe") && !l.trim_start().starts_with("install_tahoe()"))
        .collect();
    assert!(!tahoe_calls.is_empty());
    for l in tahoe_calls {
        assert!(l.contains("\"$set_name\" = test"), "unconditional: {l}");
    }
    let make = std::fs::read_to_string(repo().join("Makefile")).unwrap();
    assert!(
        make.contains("\nimage: deps-build tool\n"),
        "make image uses the build set"
    );
    assert!(make.contains("\tci/deps.sh build\n") && make.contains("\tci/deps.sh test\n"));
}
