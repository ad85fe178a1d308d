//! Helpers for the end-to-end tests: where the checkout and the built tool are, and whether
//! this machine can run them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the checkout")
        .to_path_buf()
}

/// The release cloudy-image that `make test` builds before running these tests.
pub fn image_bin() -> PathBuf {
    let p = std::env::var_os("CLOUDY_IMAGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/release/cloudy-image"));
    assert!(
        p.exists(),
        "{} missing: run `make test` (it builds the tool first)",
        p.display()
    );
    p
}

/// End-to-end tests build images as root with host tools. None of them skips itself: those
/// `make test` runs are `#[ignore]`d unless the `e2e` feature is on (`make test` turns it on),
/// and those only `make e2e` runs are always `#[ignore]`d (`make e2e` passes
/// `--include-ignored`), so a test that did not run is counted as ignored, never as passed.
pub fn require_root() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "end-to-end image tests need root (mmdebstrap, chroot)"
    );
}

/// `make e2e` (CLOUDY_E2E_ALL=1): tests that `make test` also runs check more, e.g. boot a
/// customised SD image a second time.
pub fn all_boards() -> bool {
    std::env::var("CLOUDY_E2E_ALL").is_ok_and(|v| v == "1")
}

/// Runs cloudy-image from the checkout with the shared cache; returns its output.
pub fn cloudy_image(args: &[&str]) -> Output {
    let out = Command::new(image_bin())
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run cloudy-image");
    eprintln!(
        "$ cloudy-image {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .expect("json")
}

/// Output directory for a test, under target/ so `cargo clean` takes it away.
pub fn out_dir(name: &str) -> PathBuf {
    let d = repo().join("target/e2e").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Files under `dir` whose names end in `.iso` (a final output).
pub fn isos(dir: &Path) -> Vec<PathBuf> {
    let mut v = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "iso") {
                v.push(p);
            }
        }
    }
    v
}
