//! Keeps tincd running: restarts it with backoff when it dies, passes on reloads (SIGHUP) and
//! restarts, and clears out a tincd left behind by an agent that was killed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::tinc::Paths;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A tincd that ran this long was healthy; the next failure starts the backoff afresh.
const STABLE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Control {
    /// Reread tinc.conf and hosts/ (new members).
    Reload,
    /// Stop and start (tinc-up changed).
    Restart,
    Stop,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub starts: AtomicU32,
    pub pid: AtomicU32,
}

pub struct Tincd {
    pub tincd: PathBuf,
    pub paths: Paths,
    pub stats: Arc<Stats>,
}

impl Tincd {
    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.tincd);
        c.arg("-c")
            .arg(&self.paths.confdir)
            .arg(format!("--pidfile={}", self.paths.pidfile.display()))
            // Stay in the foreground as our child; log to our stderr (the journal).
            .arg("-D")
            // More detail for chasing a VPN problem: CLOUDY_TINCD_DEBUG=3.
            .arg(format!(
                "-d{}",
                std::env::var("CLOUDY_TINCD_DEBUG")
                    .ok()
                    .and_then(|v| v.parse::<u8>().ok())
                    .unwrap_or(1)
            ))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl, getppid and _exit are async-signal-safe and touch only the child.
        unsafe {
            c.pre_exec(move || {
                // If the agent is killed, tincd goes too, and the restarted agent starts clean.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                // The agent may have died between fork and prctl: then nobody would stop us.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        c
    }

    /// Runs until `Stop` or the control channel closes.
    pub async fn supervise(self, mut ctl: mpsc::UnboundedReceiver<Control>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            stop_stale(&self.paths.pidfile, &self.paths.confdir).await;
            if let Some(run) = self.paths.pidfile.parent() {
                let _ = std::fs::create_dir_all(run);
            }
            let started = Instant::now();
            let mut child = match self.command().spawn() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(
                        "starting {}: {e}; retrying in {backoff:?}",
                        self.tincd.display()
                    );
                    if wait_or_stop(&mut ctl, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            let pid = child.id().unwrap_or(0);
            self.stats.pid.store(pid, Ordering::SeqCst);
            let n = self.stats.starts.fetch_add(1, Ordering::SeqCst) + 1;
            tracing::info!(pid, starts = n, "tincd started");
            let mut restart_now = false;
            loop {
                tokio::select! {
                    st = child.wait() => {
                        tracing::warn!("tincd (pid {pid}) exited: {st:?}");
                        break;
                    }
                    c = ctl.recv() => match c {
                        Some(Control::Reload) => {
                            tracing::info!("tincd: reloading its configuration");
                            signal(pid, libc::SIGHUP);
                            // New members: connect now, not after tincd's retry backoff.
                            signal(pid, libc::SIGALRM);
                        }
                        Some(Control::Restart) => {
                            stop_child(&mut child, pid).await;
                            restart_now = true;
                            break;
                        }
                        Some(Control::Stop) | None => {
                            stop_child(&mut child, pid).await;
                            return;
                        }
                    }
                }
            }
            self.stats.pid.store(0, Ordering::SeqCst);
            if restart_now {
                backoff = BACKOFF_MIN;
                continue;
            }
            if started.elapsed() >= STABLE {
                backoff = BACKOFF_MIN;
            }
            tracing::info!("restarting tincd in {backoff:?}");
            if wait_or_stop(&mut ctl, backoff).await {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// Sleeps, but returns true at once if told to stop; other requests wait for the new tincd.
async fn wait_or_stop(ctl: &mut mpsc::UnboundedReceiver<Control>, d: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return false,
            c = ctl.recv() => match c {
                Some(Control::Stop) | None => return true,
                Some(_) => {}
            }
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    if pid > 0 {
        // SAFETY: plain syscall on a pid we started.
        unsafe { libc::kill(pid as libc::pid_t, sig) };
    }
}

async fn stop_child(child: &mut tokio::process::Child, pid: u32) {
    // SIGTERM lets tincd run tinc-down and say goodbye to its peers.
    signal(pid, libc::SIGTERM);
    if tokio::time::timeout(Duration::from_secs(3), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// A tincd from an earlier agent (killed before it could stop it) holds our port and device.
/// Found by its command line naming our config directory, so another network's tincd (or
/// another test node's) is never touched.
pub async fn stop_stale(pidfile: &Path, confdir: &Path) {
    let conf = confdir.to_string_lossy().into_owned();
    let ours = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
                let is_tincd = args.first().is_some_and(|a| a.ends_with(b"tincd"));
                is_tincd
                    && args
                        .windows(2)
                        .any(|w| w[0] == b"-c" && w[1] == conf.as_bytes())
            })
            .unwrap_or(false)
    };
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id();
    let stale: Vec<u32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && ours(pid))
        .collect();
    for pid in stale {
        tracing::warn!("stopping a leftover tincd (pid {pid})");
        signal(pid, libc::SIGTERM);
        for i in 0..40 {
            if !ours(pid) {
                break;
            }
            if i == 30 {
                signal(pid, libc::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A stopped tincd can linger as a zombie until init reaps it, and tincd refuses to start
    // while its pidfile names any existing pid: drop a pidfile that names no live tincd of ours.
    if let Some(pid) = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    {
        if !ours(pid) {
            let _ = std::fs::remove_file(pidfile);
        }
    }
}
