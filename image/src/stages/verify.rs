//! verify: boot the image in QEMU and wait for the agent's ready line on the serial
//! console. The build fails, with the console's tail, if it does not come in time.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::board::Board;
use crate::cmd::Log;
use crate::progress::Step;
use crate::qemu::Vm;

const TAIL: usize = 40;
pub const READY_MARK: &str = "{\"cloudy\":\"ready\"";
/// The agent's second line, once every service the seed enables is running or has failed.
pub const SERVICES_MARK: &str = "{\"cloudy\":\"services\"";

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot start {program}: {source}\n  fix: run `make deps` (QEMU comes from bookworm-backports)")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("no ready line from the node within {seconds} s (recipe key verify.timeout_s); console tail:\n{tail}\n  full console: {log}")]
    Timeout {
        seconds: u64,
        tail: String,
        log: String,
    },
    #[error("the node was ready but printed no services line within {seconds} s (recipe key verify.timeout_s); the seed enables {enabled}; console tail:\n{tail}\n  full console: {log}")]
    ServicesTimeout {
        seconds: u64,
        enabled: String,
        tail: String,
        log: String,
    },
    #[error("QEMU exited ({status}) before the node was ready; console tail:\n{tail}\n  full console: {log}")]
    Exited {
        status: String,
        tail: String,
        log: String,
    },
    #[error("the guest reported: {message}; console tail:\n{tail}\n  full console: {log}")]
    Guest {
        message: String,
        tail: String,
        log: String,
    },
    #[error("the node booted kernel {got}, but board {board} needs its kernel to end in `{want}`\n  fix: check kernel_package in hardware/{board}.toml")]
    WrongKernel {
        board: String,
        want: String,
        got: String,
    },
    #[error("the node came up but reported seed errors: {0}\n  fix: correct the seed file named there (the recipe's default seed, or one written into the image)")]
    SeedErrors(String),
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub ready: serde_json::Value,
    /// From QEMU's start to the ready line, wall clock.
    pub seconds: f64,
}

/// Finds the ready JSON object in a console line (the console may prefix it with noise).
pub fn parse_ready(line: &str) -> Option<serde_json::Value> {
    parse_marked(line, READY_MARK)
}

pub fn parse_services(line: &str) -> Option<serde_json::Value> {
    parse_marked(line, SERVICES_MARK)
}

fn parse_marked(line: &str, mark: &str) -> Option<serde_json::Value> {
    let start = line.find(mark)?;
    let json = &line[start..];
    let mut de = serde_json::Deserializer::from_str(json).into_iter::<serde_json::Value>();
    de.next()?.ok().filter(|v| v.is_object())
}

/// Strips terminal escapes and carriage returns from a console line.
pub fn clean(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(line);
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

pub fn run(
    vm: &Vm,
    timeout_s: u64,
    console_log: &Path,
    log: &Log,
    step: &Step,
) -> Result<Outcome, VerifyError> {
    let waiting = std::cell::RefCell::new(None::<serde_json::Value>);
    // The ready line within timeout_s; the services line (services start after the mesh and
    // may take minutes on slow hardware) within as long again.
    let started = Instant::now();
    let late = std::cell::Cell::new(false);
    let until = |line: &str| {
        if waiting.borrow().is_none() && started.elapsed() > Duration::from_secs(timeout_s) {
            late.set(true);
            return Some(Err(String::new()));
        }
        services_watch(&waiting, line)
    };
    let outcome = watch(vm, timeout_s * 2, console_log, log, step, &until).map_err(|e| {
        match (e, waiting.borrow().as_ref()) {
            (VerifyError::Timeout { seconds, tail, log }, Some(ready)) => {
                VerifyError::ServicesTimeout {
                    seconds,
                    enabled: enabled_services(ready).join(", "),
                    tail,
                    log,
                }
            }
            (VerifyError::Timeout { tail, log, .. }, None) => VerifyError::Timeout {
                seconds: timeout_s,
                tail,
                log,
            },
            (VerifyError::Guest { tail, log, .. }, None) if late.get() => VerifyError::Timeout {
                seconds: timeout_s,
                tail,
                log,
            },
            (e, _) => e,
        }
    })?;
    log.line(&format!(
        "verify: ready after {:.1} s: {}",
        outcome.seconds, outcome.ready
    ));
    check(vm.board, &outcome.ready)?;
    Ok(outcome)
}

/// Done at the ready line, unless it says the seed enables services: then done at the
/// services line, which must report every one of them running. The ready value comes back
/// with the services report under `"services_report"`.
fn services_watch(
    waiting: &std::cell::RefCell<Option<serde_json::Value>>,
    line: &str,
) -> Option<Result<serde_json::Value, String>> {
    if let Some(ready) = parse_ready(line) {
        let enabled = enabled_services(&ready);
        if enabled.is_empty() {
            return Some(Ok(ready));
        }
        *waiting.borrow_mut() = Some(ready);
        return None;
    }
    let report = parse_services(line)?;
    // Cloned, not taken: a failure reported here must still be known as past the ready line.
    let mut ready = waiting.borrow().clone()?;
    let running: Vec<&str> = report["running"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let missing: Vec<String> = enabled_services(&ready)
        .into_iter()
        .filter(|s| !running.contains(&s.as_str()))
        .map(|s| {
            let why = report["failed"][s.as_str()]
                .as_str()
                .unwrap_or("not running");
            format!("{s} ({why})")
        })
        .collect();
    if !missing.is_empty() {
        return Some(Err(format!(
            "services the seed enables did not start: {}",
            missing.join(", ")
        )));
    }
    ready["services_report"] = report;
    Some(Ok(ready))
}

fn enabled_services(ready: &serde_json::Value) -> Vec<String> {
    ready["services"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// What a console line means to a watcher: nothing (None), done (Some(Ok(value))), or a
/// failure the guest reported itself (Some(Err(message))).
pub type Watcher<'a> = &'a dyn Fn(&str) -> Option<Result<serde_json::Value, String>>;

/// Boots `vm` and reads its serial console until `until` decides, QEMU exits, or time is up.
pub fn watch(
    vm: &Vm,
    timeout_s: u64,
    console_log: &Path,
    log: &Log,
    step: &Step,
    until: Watcher,
) -> Result<Outcome, VerifyError> {
    let board = vm.board;
    let mut console = std::fs::File::create(console_log).map_err(|source| VerifyError::Io {
        path: console_log.display().to_string(),
        source,
    })?;
    let mut qemu = vm.command();
    qemu.args(["-serial", "stdio", "-monitor", "none"]);
    // The outer timeout is the guarantee: a wedged guest (or a stuck QEMU) is killed even if
    // this process dies.
    let mut c = std::process::Command::new("timeout");
    c.args(["--kill-after=10", &format!("{}", timeout_s + 15)])
        .arg(qemu.get_program())
        .args(qemu.get_args());
    log.line(&format!("$ {}", crate::cmd::describe(&c)));
    let started = Instant::now();
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| VerifyError::Spawn {
            program: board.qemu.system.clone(),
            source,
        })?;
    let (tx, rx) = mpsc::channel::<String>();
    for pipe in [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
                if tx.send(clean(&line)).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let deadline = started + Duration::from_secs(timeout_s);
    let mut tail: std::collections::VecDeque<String> = Default::default();
    let outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let _ = writeln!(console, "{line}");
                step.message(&line);
                if tail.len() == TAIL {
                    tail.pop_front();
                }
                tail.push_back(line.clone());
                match until(&line) {
                    Some(Ok(ready)) => {
                        break Ok(Outcome {
                            ready,
                            seconds: started.elapsed().as_secs_f64(),
                        })
                    }
                    Some(Err(message)) => {
                        break Err(VerifyError::Guest {
                            message,
                            tail: join(&tail),
                            log: console_log.display().to_string(),
                        })
                    }
                    None => {}
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break Err(VerifyError::Timeout {
                    seconds: timeout_s,
                    tail: join(&tail),
                    log: console_log.display().to_string(),
                })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                break Err(VerifyError::Exited {
                    status,
                    tail: join(&tail),
                    log: console_log.display().to_string(),
                });
            }
        }
    };
    // `timeout` passes the TERM on to QEMU.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    outcome
}

/// What the ready line must say for this board.
pub fn check(board: &Board, ready: &serde_json::Value) -> Result<(), VerifyError> {
    let kernel = ready["kernel"].as_str().unwrap_or_default();
    if !kernel.ends_with(&format!("-{}", board.kernel_flavour)) {
        return Err(VerifyError::WrongKernel {
            board: board.name.clone(),
            want: board.kernel_flavour.clone(),
            got: kernel.to_string(),
        });
    }
    if let Some(errors) = ready["seed_errors"].as_array().filter(|e| !e.is_empty()) {
        return Err(VerifyError::SeedErrors(
            serde_json::to_string(errors).unwrap_or_default(),
        ));
    }
    Ok(())
}

fn join(tail: &std::collections::VecDeque<String>) -> String {
    tail.iter()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_found_among_console_noise() {
        let line = clean(b"\x1b[0m[   34.1] cloud-agent[211]: {\"cloudy\":\"ready\",\"node\":\"a\",\"kernel\":\"6.1.0-50-686-pae\"}\r");
        let v = parse_ready(&line).unwrap();
        assert_eq!(v["node"], "a");
        assert!(parse_ready("{\"cloudy\":\"starting\"}").is_none());
        assert!(
            parse_ready("{\"cloudy\":\"ready\",\"node\":").is_none(),
            "a cut line is not ready"
        );
    }

    #[test]
    fn services_line_awaited_when_the_seed_enables_services() {
        let w = std::cell::RefCell::new(None);
        let plain = r#"{"cloudy":"ready","kernel":"k"}"#;
        assert!(
            matches!(services_watch(&w, plain), Some(Ok(_))),
            "no services: done at ready"
        );
        let ready =
            r#"x {"cloudy":"ready","kernel":"k","services":["syncthing","tahoe-introducer"]}"#;
        assert!(services_watch(&w, ready).is_none(), "keeps watching");
        assert!(services_watch(&w, "noise").is_none());
        let good =
            r#"{"cloudy":"services","running":["tahoe-introducer","syncthing"],"failed":{}}"#;
        let v = services_watch(&w, good).unwrap().unwrap();
        assert_eq!(v["services_report"]["running"][1], "syncthing");
        services_watch(&w, ready);
        let bad = r#"{"cloudy":"services","running":["syncthing"],"failed":{"tahoe-introducer":"tahoe not installed"}}"#;
        let e = services_watch(&w, bad).unwrap().unwrap_err();
        assert!(e.contains("tahoe-introducer (tahoe not installed)"), "{e}");
        assert!(
            w.borrow().is_some(),
            "a failed services line is still past the ready line"
        );
    }

    #[test]
    fn kernel_flavour_checked() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("hardware");
        let (board, _) = Board::load(&root.join("pc-686-pae.toml")).unwrap();
        let ok = serde_json::json!({"kernel": "6.1.0-50-686-pae", "seed_errors": []});
        check(&board, &ok).unwrap();
        let (i386, _) = Board::load(&root.join("pc-i386.toml")).unwrap();
        assert!(
            matches!(check(&i386, &ok), Err(VerifyError::WrongKernel { .. })),
            "686-pae is not 686"
        );
        let bad = serde_json::json!({"kernel": "6.1.0-50-686-pae", "seed_errors": ["x"]});
        assert!(matches!(
            check(&board, &bad),
            Err(VerifyError::SeedErrors(_))
        ));
    }
}
