//! Running the host tools: their output goes to the build log and the progress line, and a
//! failure carries the tail of that output so the user sees why without opening the log.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::progress::Step;

const TAIL_LINES: usize = 30;

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}); last lines:\n{tail}")]
    Failed {
        command: String,
        status: String,
        tail: String,
    },
    #[error("no space left on device while running `{program}`; last lines:\n{tail}\n  fix: free space on the disk holding --out and --cache (or move them), then run the build again: it resumes")]
    DiskFull { program: String, tail: String },
}

impl CmdError {
    pub fn tail(&self) -> &str {
        match self {
            CmdError::Failed { tail, .. } | CmdError::DiskFull { tail, .. } => tail,
            CmdError::Spawn { .. } => "",
        }
    }
}

/// The build log, shared by every stage (and the threads draining a tool's output). Each line
/// starts with the seconds since the log was opened: stages run side by side and their lines
/// interleave, and a slow step shows as a jump in that column.
#[derive(Clone)]
pub struct Log {
    file: Arc<Mutex<Box<dyn Write + Send>>>,
    opened: std::time::Instant,
}

impl Log {
    pub fn to_file(path: &std::path::Path) -> std::io::Result<Log> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Log {
            file: Arc::new(Mutex::new(Box::new(f))),
            opened: std::time::Instant::now(),
        })
    }

    pub fn sink() -> Log {
        Log {
            file: Arc::new(Mutex::new(Box::new(std::io::sink()))),
            opened: std::time::Instant::now(),
        }
    }

    pub fn line(&self, s: &str) {
        let t = self.opened.elapsed().as_secs_f64();
        if let Ok(mut f) = self.file.lock() {
            let _ = writeln!(f, "[{t:7.1}] {s}");
        }
    }
}

/// Runs `cmd` to completion, logging every output line; returns all of stdout.
pub fn run(cmd: &mut Command, log: &Log, step: &Step) -> Result<String, CmdError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let command = describe(cmd);
    log.line(&format!("$ {command}"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CmdError::Spawn {
            program: program.clone(),
            source,
        })?;
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let err_thread = {
        let (log, tail, step) = (log.clone(), tail.clone(), step.clone());
        std::thread::spawn(move || drain(stderr, &log, &tail, &step, None))
    };
    let mut out = String::new();
    drain(stdout, log, &tail, step, Some(&mut out));
    let _ = err_thread.join();
    let status = child.wait().map_err(|source| CmdError::Spawn {
        program: program.clone(),
        source,
    })?;
    if status.success() {
        Ok(out)
    } else {
        let tail = tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default();
        if tail.contains("No space left on device") {
            return Err(CmdError::DiskFull { program, tail });
        }
        Err(CmdError::Failed {
            command,
            status: status.to_string(),
            tail,
        })
    }
}

fn drain(
    r: impl std::io::Read,
    log: &Log,
    tail: &Mutex<VecDeque<String>>,
    step: &Step,
    mut keep: Option<&mut String>,
) {
    for line in BufReader::new(r).split(b'\n').map_while(Result::ok) {
        let line = String::from_utf8_lossy(&line).into_owned();
        log.line(&line);
        step.message(&line);
        if let Ok(mut t) = tail.lock() {
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line.clone());
        }
        if let Some(out) = keep.as_deref_mut() {
            out.push_str(&line);
            out.push('\n');
        }
    }
}

pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_the_tail() {
        let step = Step::hidden();
        let err = run(
            Command::new("sh").args(["-c", "echo one; echo two >&2; exit 3"]),
            &Log::sink(),
            &step,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("one") && msg.contains("two") && msg.contains("3"),
            "{msg}"
        );
        let err = run(
            Command::new("sh").args([
                "-c",
                "echo 'cp: write error: No space left on device' >&2; exit 1",
            ]),
            &Log::sink(),
            &step,
        )
        .unwrap_err();
        assert!(
            matches!(err, CmdError::DiskFull { .. }) && err.to_string().contains("fix:"),
            "{err}"
        );
        let out = run(
            Command::new("sh").args(["-c", "echo hi"]),
            &Log::sink(),
            &step,
        )
        .unwrap();
        assert_eq!(out, "hi\n");
    }
}
