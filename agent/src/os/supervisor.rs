//! Keeps one child process running: restarts it with exponential backoff when it dies, passes
//! on reloads (a signal) and restarts, clears out a copy left behind by an agent that was
//! killed, and records what happened (state, pid, restarts, last error) for `status`.
//!
//! One supervisor for every child: tincd and each service's program are a `Program`. A program
//! run as a service user is confined ([`sandbox`]): no new privileges, and nothing writable but
//! its own directories.

pub mod sandbox;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::os::files::{FileError, SafeDir};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A child that ran this long was healthy; the next failure starts the backoff afresh.
pub const STABLE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Control {
    /// Reread the configuration in place (`Program::reload` signals).
    Reload,
    /// Stop and start (a configuration the child only reads at start changed).
    Restart,
    Stop,
}

/// Doubling delays between restarts, back to the minimum after a stable run.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    /// The delay to wait now; the one after is twice as long (up to the maximum).
    pub fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(BACKOFF_MIN, BACKOFF_MAX)
    }
}

/// What a program to supervise is. Everything is fixed when the supervisor starts; a changed
/// configuration is new files plus `Control::Restart` (or a new supervisor).
#[derive(Debug, Clone)]
pub struct Program {
    /// For logs and `status`.
    pub name: String,
    pub exe: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// Run as this uid/gid (supplementary groups dropped), confined: `no_new_privs`, the whole
    /// tree read-only but `writable`, a private `/tmp`. None: as the agent, unconfined.
    pub user: Option<(u32, u32)>,
    /// For a program with a `user`: the only directories it may write (each must exist).
    pub writable: Vec<PathBuf>,
    /// For a program with a `user`: directories it does not see at all (an empty tmpfs in
    /// their place, holding only the mount points of its writable directories below them).
    pub hidden: Vec<PathBuf>,
    /// Sent on `Control::Reload`, in order.
    pub reload: Vec<Signal>,
    /// A process whose command line holds this exact argument (and whose program name is
    /// `exe`'s) is a leftover of ours from an agent that was killed: stopped before we start.
    pub marker: Option<String>,
    /// A pid file the child writes and refuses to start over (tincd): removed when stale.
    pub pidfile: Option<PathBuf>,
    /// Where the child's stdout and stderr go (appended); None: the agent's stderr.
    pub log: Option<Log>,
    /// Told when the child exits (after `Status` says so), e.g. to withdraw its records now
    /// rather than at the next health check.
    pub on_exit: Option<Arc<tokio::sync::Notify>>,
}

/// A child's log file, in a directory its (unprivileged) user may write: opened by the agent
/// through [`SafeDir`] from `base` (root's), so a link put in its place, or in place of a
/// directory on the way, is refused rather than followed.
#[derive(Debug, Clone)]
pub struct Log {
    pub base: PathBuf,
    pub path: PathBuf,
}

impl Log {
    pub fn new(base: impl Into<PathBuf>, path: impl Into<PathBuf>) -> Log {
        Log {
            base: base.into(),
            path: path.into(),
        }
    }

    /// Opened for appending (`O_APPEND|O_CREAT|O_NOFOLLOW`, 0640, made if missing).
    pub fn open(&self) -> Result<std::fs::File, FileError> {
        let dir = self.path.parent().unwrap_or(&self.base);
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| FileError::Failed(format!("log {}", self.path.display())))?;
        SafeDir::base(&self.base)?
            .descend(dir, true)?
            .append(name, 0o640)
    }
}

impl Program {
    pub fn new(name: &str, exe: impl Into<PathBuf>) -> Program {
        Program {
            name: name.into(),
            exe: exe.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            user: None,
            writable: Vec::new(),
            hidden: Vec::new(),
            reload: Vec::new(),
            marker: None,
            pidfile: None,
            log: None,
            on_exit: None,
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Program {
        self.args.push(a.into());
        self
    }

    fn command(&self) -> std::io::Result<tokio::process::Command> {
        let mut c = tokio::process::Command::new(&self.exe);
        c.args(&self.args)
            .envs(self.env.iter().cloned())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        // Made before the fork: the child only makes system calls with it.
        let sandbox = self
            .user
            .map(|u| sandbox::Sandbox::new(u, &self.writable, &self.hidden, self.cwd.as_deref()))
            .transpose()
            .map_err(std::io::Error::other)?;
        match &sandbox {
            // The sandbox enters it once its own mounts are in place.
            Some(s) => {
                if let Some(t) = s.tmpdir() {
                    c.env("TMPDIR", t);
                }
            }
            None => {
                if let Some(d) = &self.cwd {
                    c.current_dir(d);
                }
            }
        }
        if let Some(log) = &self.log {
            // Opened by the agent, before the fork: the file need not be writable inside.
            let f = log.open().map_err(std::io::Error::other)?;
            c.stdout(f.try_clone()?).stderr(f);
        }
        // Not `Command::uid`: std would change the user before pre_exec, and mounting needs
        // root. The sandbox drops the groups, then the gid, then the uid itself.
        let parent = nix::unistd::getpid();
        // SAFETY: the child runs only system calls (unshare, mount, mount_setattr, mkdir, chdir,
        // setgroups, setgid, setuid, prctl, getppid, _exit), all async-signal-safe, on memory
        // allocated before the fork (the sandbox's C strings); nothing allocates or locks.
        // nix does not wrap _exit(2): libc's, through nix's re-export.
        unsafe {
            c.pre_exec(move || {
                if let Some(s) = &sandbox {
                    s.enter()?;
                }
                // If the agent is killed, the child goes too, and the restarted agent starts
                // clean. Set after the uid change, which would clear it.
                let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
                // A service user's program, and all it runs, never gains privileges (no setuid
                // or file capabilities): refuse to run at all rather than without it.
                if sandbox.is_some() {
                    nix::sys::prctl::set_no_new_privs()?;
                }
                // The agent may have died between fork and prctl: then nobody would stop us.
                if nix::unistd::getppid() != parent {
                    nix::libc::_exit(1);
                }
                Ok(())
            });
        }
        Ok(c)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not started (yet), or stopped on purpose.
    Stopped,
    /// Running (or about to), not yet healthy.
    Starting,
    /// Running and healthy.
    Running,
    /// Could not be configured or started, or exited: waiting to retry.
    Failed,
}

/// What `status` shows of one supervised child; the supervisor and the health checks write it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub state: State,
    /// 0 while not running.
    pub pid: u32,
    /// Starts after the first one.
    pub restarts: u32,
    /// Attempts that could not even start the program (missing executable, ...).
    #[serde(default)]
    pub spawn_failures: u32,
    pub last_error: Option<String>,
    /// What confines the running child, as the kernel reports it (`/proc/<pid>/status` and
    /// `mountinfo`): `uid N, no_new_privs, ro-root, rw: <dirs>, tmpfs: /tmp`, or `root`; None
    /// while not running.
    #[serde(default)]
    pub confinement: Option<String>,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            state: State::Stopped,
            pid: 0,
            restarts: 0,
            spawn_failures: 0,
            last_error: None,
            confinement: None,
        }
    }
}

/// What confines process `pid`, read from the kernel: its uid, whether it may gain privileges
/// (`PR_SET_NO_NEW_PRIVS`), and what its mount namespace lets it write
/// (`uid 998, no_new_privs, ro-root, rw: /var/lib/cloudy/tahoe, tmpfs: /tmp /dev/shm`).
pub fn confinement(pid: u32) -> Option<String> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| st.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
    let uid = field("Uid:")?.split_whitespace().next()?.to_string();
    let mut parts = vec![if uid == "0" {
        "root".to_string()
    } else {
        format!("uid {uid}")
    }];
    if field("NoNewPrivs:") == Some("1") {
        parts.push("no_new_privs".into());
    }
    parts.extend(sandbox::describe(pid));
    Some(parts.join(", "))
}

pub type Shared = Arc<Mutex<Status>>;

/// Runs `p` until `Stop` or the control channel closes.
pub async fn supervise(p: Program, status: Shared, mut ctl: mpsc::UnboundedReceiver<Control>) {
    let mut backoff = Backoff::default();
    let mut starts = 0u32;
    loop {
        clear_leftovers(&p).await;
        let started = Instant::now();
        let mut child = match p.command().and_then(|mut c| c.spawn()) {
            Ok(c) => c,
            Err(e) => {
                let wait = backoff.step();
                record_spawn_failure(&p, &status, &e, wait);
                if pause_or_stop(&mut ctl, &status, wait).await {
                    return;
                }
                continue;
            }
        };
        let pid = child.id().unwrap_or(0);
        starts += 1;
        record_start(&p, &status, pid, starts);
        match watch(&p, &mut child, pid, &status, &mut ctl).await {
            Ended::Stopped => return,
            Ended::Restarted => {
                status.lock().unwrap().pid = 0;
                backoff.reset();
                status.lock().unwrap().state = State::Starting;
                continue;
            }
            Ended::Exited => status.lock().unwrap().pid = 0,
        }
        if started.elapsed() >= STABLE {
            backoff.reset();
        }
        let wait = backoff.step();
        tracing::info!("restarting {} in {wait:?}", p.name);
        if pause_or_stop(&mut ctl, &status, wait).await {
            return;
        }
    }
}

/// Clears what an earlier copy left behind: its process (by marker) and a stale pid file.
async fn clear_leftovers(p: &Program) {
    if let Some(m) = &p.marker {
        stop_stale(&p.exe, m).await;
    }
    if let Some(pf) = &p.pidfile {
        drop_stale_pidfile(pf, &p.exe, p.marker.as_deref());
        if let Some(run) = pf.parent() {
            let _ = std::fs::create_dir_all(run);
        }
    }
}

fn record_spawn_failure(p: &Program, status: &Shared, e: &std::io::Error, wait: Duration) {
    tracing::error!(
        "{}: starting {}: {e}; retrying in {wait:?}",
        p.name,
        p.exe.display()
    );
    let mut s = status.lock().unwrap();
    s.state = State::Failed;
    s.pid = 0;
    s.spawn_failures += 1;
    s.last_error = Some(format!("starting {}: {e}", p.exe.display()));
}

fn record_start(p: &Program, status: &Shared, pid: u32, starts: u32) {
    {
        let mut s = status.lock().unwrap();
        s.pid = pid;
        s.restarts = starts - 1;
        // spawn returns once the child has exec'd: its uid and flags are final.
        s.confinement = confinement(pid);
        if s.state != State::Running {
            s.state = State::Starting;
        }
    }
    tracing::info!(pid, starts, "{} started", p.name);
}

/// How a child's run ended.
enum Ended {
    /// It exited (or could not be waited for): restart after the backoff.
    Exited,
    /// Stopped for `Control::Restart`: start again at once.
    Restarted,
    /// Stopped for good (`Control::Stop` or the channel closed); the status says Stopped.
    Stopped,
}

/// Waits for the child to exit while passing on reloads; stops it when told to.
async fn watch(
    p: &Program,
    child: &mut tokio::process::Child,
    pid: u32,
    status: &Shared,
    ctl: &mut mpsc::UnboundedReceiver<Control>,
) -> Ended {
    loop {
        tokio::select! {
            st = child.wait() => {
                let what = match st {
                    Ok(st) => format!("exited: {st}"),
                    Err(e) => format!("wait failed: {e}"),
                };
                tracing::warn!("{} (pid {pid}) {what}", p.name);
                {
                    let mut s = status.lock().unwrap();
                    s.state = State::Failed;
                    s.last_error = Some(format!("pid {pid} {what}"));
                }
                if let Some(n) = &p.on_exit {
                    n.notify_one();
                }
                return Ended::Exited;
            }
            c = ctl.recv() => match c {
                Some(Control::Reload) => {
                    tracing::info!("{}: reloading its configuration", p.name);
                    for &sig in &p.reload {
                        signal(pid, sig);
                    }
                }
                Some(Control::Restart) => {
                    stop_child(child, pid).await;
                    return Ended::Restarted;
                }
                Some(Control::Stop) | None => {
                    stop_child(child, pid).await;
                    let mut s = status.lock().unwrap();
                    s.state = State::Stopped;
                    s.pid = 0;
                    return Ended::Stopped;
                }
            }
        }
    }
}

/// Waits `d` before the next start; true (and the status says Stopped) if told to stop meanwhile.
async fn pause_or_stop(
    ctl: &mut mpsc::UnboundedReceiver<Control>,
    status: &Shared,
    d: Duration,
) -> bool {
    let stop = wait_or_stop(ctl, d).await;
    if stop {
        status.lock().unwrap().state = State::Stopped;
    }
    stop
}

/// Sleeps, but returns true at once if told to stop; other requests wait for the new child.
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

/// Signals a pid we started (or checked with `is_ours`); 0 (not running) is never signalled.
fn signal(pid: u32, sig: Signal) {
    if pid > 0 {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), sig);
    }
}

async fn stop_child(child: &mut tokio::process::Child, pid: u32) {
    // SIGTERM lets the child clean up (tincd runs tinc-down and says goodbye to its peers).
    signal(pid, Signal::SIGTERM);
    if tokio::time::timeout(Duration::from_secs(3), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// True if `pid` runs `exe` (by program or script name: `python3 .../tahoe` counts) with
/// `marker` as one of its arguments.
fn is_ours(pid: u32, exe: &Path, marker: &str) -> bool {
    let Some(name) = exe.file_name() else {
        return false;
    };
    let name = name.as_encoded_bytes();
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
            let runs_exe = args
                .iter()
                .take(2)
                .any(|a| a.rsplit(|&b| b == b'/').next() == Some(name));
            runs_exe && args.contains(&marker.as_bytes())
        })
        .unwrap_or(false)
}

/// A child from an earlier agent (killed before it could stop it) holds our ports. Found by
/// its command line naming our marker (a config directory), so another node's copy (another
/// test node, another network's tincd) is never touched.
pub async fn stop_stale(exe: &Path, marker: &str) {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id();
    let stale: Vec<u32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && is_ours(pid, exe, marker))
        .collect();
    for pid in stale {
        tracing::warn!("stopping a leftover {} (pid {pid})", exe.display());
        signal(pid, Signal::SIGTERM);
        for i in 0..40 {
            if !is_ours(pid, exe, marker) {
                break;
            }
            if i == 30 {
                signal(pid, Signal::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A stopped child can linger as a zombie until init reaps it, and tincd refuses to start
/// while its pidfile names any existing pid: drop a pidfile that names no live child of ours.
fn drop_stale_pidfile(pidfile: &Path, exe: &Path, marker: Option<&str>) {
    if let Some(pid) = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    {
        if !marker.is_some_and(|m| is_ours(pid, exe, m)) {
            let _ = std::fs::remove_file(pidfile);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let got: Vec<u128> = (0..5).map(|_| b.step().as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 700, 700]);
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(100));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_child_that_dies_is_restarted_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("m").to_string_lossy().into_owned();
        // Exits at once: the supervisor keeps restarting it, with backoff.
        let p = Program::new("sh", "/bin/sh")
            .arg("-c")
            .arg("exit 3")
            .arg(&marker);
        let status: Shared = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(supervise(p, status.clone(), rx));
        let t0 = Instant::now();
        // Between runs (waiting out the backoff) it is failed, with the exit as its error.
        loop {
            {
                let s = status.lock().unwrap();
                if s.restarts >= 3 && s.state == State::Failed {
                    assert!(s.last_error.as_deref().unwrap().contains("exit status: 3"));
                    break;
                }
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "not restarted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tx.send(Control::Stop).unwrap();
        task.await.unwrap();
        assert_eq!(status.lock().unwrap().state, State::Stopped);
    }

    /// A service user's program runs with no_new_privs, and the status says so.
    #[tokio::test(flavor = "current_thread")]
    async fn a_service_program_cannot_gain_privileges() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP a_service_program_cannot_gain_privileges: needs root (setuid)");
            return;
        }
        let mut p = Program::new("sleep", "/bin/sleep").arg("30");
        p.user = Some((65534, 65534));
        let status: Shared = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(supervise(p, status.clone(), rx));
        let t0 = Instant::now();
        while status.lock().unwrap().pid == 0 {
            assert!(t0.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let pid = status.lock().unwrap().pid;
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(st.lines().any(|l| l == "NoNewPrivs:\t1"), "{st}");
        // Since the read-only root, the column also says what the program may write (here
        // nothing but its private tmpfs): it used to end at `no_new_privs`.
        assert_eq!(
            status.lock().unwrap().confinement.as_deref(),
            Some("uid 65534, no_new_privs, ro-root, tmpfs: /tmp /dev/shm")
        );
        tx.send(Control::Stop).unwrap();
        task.await.unwrap();
    }

    /// The attack: a compromised service process writes outside its own directory, to plant
    /// files where others (or root) will find them: into a world-writable directory
    /// (`/var/tmp`), into a directory its user owns but that is not its own (another service's,
    /// a share it was once given), or into the shared `/tmp`; and it reads what lies beside
    /// its directory in the agent's state (a readable file there). The old code (today's
    /// main, 8eedc01) ran it with only its uid and no_new_privs: the writes succeeded
    /// (`escaped /var/tmp`, `escaped other`, the file appeared in the real /tmp) and the
    /// read too. Now the tree is read-only but its own directory, its /tmp is a tmpfs nobody
    /// else sees, and the state directory around its own is an empty tmpfs.
    #[tokio::test(flavor = "current_thread")]
    async fn a_service_program_writes_nothing_but_its_own_directory() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP a_service_program_writes_nothing_but_its_own_directory: needs root");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        // Not below /tmp, so that /tmp itself is made private (as on a node).
        let top = tempfile::Builder::new()
            .prefix("cloudy-confine-")
            .tempdir_in("/var/tmp")
            .unwrap();
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // `base` stands for /var/lib/cloudy: root's, with the service's directory inside.
        let base = top.path().join("base");
        std::fs::create_dir(&base).unwrap();
        std::fs::write(base.join("beside"), "not yours\n").unwrap();
        let (own, other) = (base.join("own"), top.path().join("other"));
        for d in [&own, &other] {
            std::fs::create_dir(d).unwrap();
            std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
        }
        let tag = top
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let (vartmp, tmp) = (
            PathBuf::from(format!("/var/tmp/{tag}.planted")),
            PathBuf::from(format!("/tmp/{tag}.planted")),
        );
        let script = format!(
            "echo mine > own.txt || echo own-failed >> report
             echo x 2>/dev/null > {vartmp} && echo 'escaped /var/tmp' >> report
             echo x 2>/dev/null > {other}/planted && echo 'escaped other' >> report
             echo x 2>/dev/null > {tmp} || echo 'no /tmp' >> report
             cat {base}/beside 2>/dev/null && echo 'read beside' >> report
             [ \"$(ls {base})\" = own ] || echo \"sees $(ls {base} | tr '\\n' ' ')\" >> report
             touch done; exec sleep 30",
            vartmp = vartmp.display(),
            other = other.display(),
            tmp = tmp.display(),
            base = base.display(),
        );
        let mut p = Program::new("attacker", "/bin/sh").arg("-c").arg(script);
        p.user = Some((65534, 65534));
        p.writable = vec![own.clone()];
        p.hidden = vec![base.clone()];
        p.cwd = Some(own.clone());
        let status: Shared = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(supervise(p, status.clone(), rx));
        let t0 = Instant::now();
        while !own.join("done").exists() {
            let err = status.lock().unwrap().last_error.clone();
            assert!(t0.elapsed() < Duration::from_secs(10), "never ran: {err:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let confinement = status.lock().unwrap().confinement.clone().unwrap();
        tx.send(Control::Stop).unwrap();
        task.await.unwrap();
        let report = std::fs::read_to_string(own.join("report")).unwrap_or_default();
        let planted = [&vartmp, &other.join("planted"), &tmp].map(|p| (p.exists(), p.clone()));
        for (_, p) in &planted {
            let _ = std::fs::remove_file(p);
        }
        assert_eq!(report, "", "the service wrote outside its own directory");
        assert!(planted.iter().all(|(e, _)| !e), "{planted:?}");
        assert_eq!(
            std::fs::read_to_string(own.join("own.txt")).unwrap(),
            "mine\n"
        );
        assert_eq!(
            confinement,
            format!(
                "uid 65534, no_new_privs, ro-root, rw: {}, tmpfs: /tmp /dev/shm, hidden: {}",
                own.display(),
                base.display()
            )
        );
    }

    /// A writable directory that is missing is a failure to start (retried), not a program
    /// that runs and cannot write where it expects.
    #[tokio::test(flavor = "current_thread")]
    async fn a_missing_writable_directory_fails_the_start() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP a_missing_writable_directory_fails_the_start: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut p = Program::new("sleep", "/bin/sleep").arg("30");
        p.user = Some((65534, 65534));
        p.writable = vec![dir.path().join("missing")];
        let status: Shared = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(supervise(p, status.clone(), rx));
        let t0 = Instant::now();
        while status.lock().unwrap().spawn_failures == 0 {
            assert!(t0.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let err = status.lock().unwrap().last_error.clone().unwrap();
        assert!(err.contains("missing"), "{err}");
        tx.send(Control::Stop).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn restart_replaces_a_running_child() {
        let p = Program::new("sleep", "/bin/sleep").arg("30");
        let status: Shared = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(supervise(p, status.clone(), rx));
        let pid = |s: &Shared| s.lock().unwrap().pid;
        let t0 = Instant::now();
        while pid(&status) == 0 {
            assert!(t0.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let first = pid(&status);
        tx.send(Control::Restart).unwrap();
        while pid(&status) == 0 || pid(&status) == first {
            assert!(t0.elapsed() < Duration::from_secs(10), "not restarted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(status.lock().unwrap().restarts, 1);
        tx.send(Control::Stop).unwrap();
        task.await.unwrap();
    }
}
