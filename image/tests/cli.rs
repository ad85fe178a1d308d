//! cloudy-image's command line: help on everything, and errors a newcomer meets first.

use std::path::Path;
use std::process::{Command, Output};

use clap::CommandFactory;
use cloudy_image::commands::Cli;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn cloudy_image(args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_cloudy-image"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run cloudy-image");
    eprintln!(
        "$ cloudy-image {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn undocumented(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
    let here = format!("{path} {}", cmd.get_name()).trim().to_string();
    for a in cmd.get_arguments() {
        if a.get_help().is_none() && a.get_long_help().is_none() {
            out.push(format!("{here}: {}", a.get_id()));
        }
    }
    for sub in cmd.get_subcommands() {
        if sub.get_about().is_none() && sub.get_long_about().is_none() {
            out.push(format!("{here}: subcommand {}", sub.get_name()));
        }
        undocumented(sub, &here, out);
    }
}

/// At 2293e0e `verify --firmware` had no help line.
#[test]
fn every_argument_option_and_subcommand_has_help() {
    let mut cmd = Cli::command();
    cmd.build();
    let mut missing = Vec::new();
    undocumented(&cmd, "", &mut missing);
    assert!(missing.is_empty(), "no help text: {missing:#?}");
}

/// At 2293e0e `cloudy-image boot --board rpi3` answered that out/rpi3/cloudy-rpi3.iso does
/// not exist and to build it, which makes an SD image, never an ISO.
#[test]
fn boot_says_it_opens_isos_only() {
    let out = tempfile::tempdir().unwrap();
    let o = cloudy_image(&[
        "boot",
        "--board",
        "rpi3",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("ISO images only") && err.contains("SD card"),
        "{err}"
    );
    assert!(err.contains("cloudy-image verify --board rpi3"), "{err}");
    assert!(!err.contains(".iso does not exist"), "{err}");
}

/// At 2293e0e: `/nope.toml: cannot read: No such file or directory (os error 2): No such file
/// or directory (os error 2)`.
#[test]
fn an_error_says_its_cause_once() {
    let out = tempfile::tempdir().unwrap();
    let o = cloudy_image(&[
        "build",
        "--recipe",
        "/nonexistent/recipe.toml",
        "--no-verify",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("/nonexistent/recipe.toml"), "{err}");
    assert_eq!(err.matches("(os error 2)").count(), 1, "{err}");
}
