//! Runs this node's services while `cloudy-agent run` lives: every `TICK` it builds newly
//! enabled or joined services, configures each (restarting its program when the config
//! changed), starts programs under `os::supervisor`, checks health, writes `STATE_FILE` and, once,
//! prints the services line the image's verify stage waits for.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::published::Local;
use crate::catalog::{now_ms, Record};
use crate::os::supervisor::{self, Control, Shared, State, Status};
use crate::os::system::System;
use crate::services::{Configured, Env, Service, STATE_FILE};

pub const TICK: Duration = Duration::from_secs(1);
/// The services line is printed when every enabled service is healthy or failed, or after
/// this long (the rest then count as failed). A storage node starts only once the introducer
/// is published, and two Tahoe nodes starting on a Pi 2 (or under QEMU's TCG) take minutes.
pub const SETTLE_WITHIN: Duration = Duration::from_secs(300);
/// A program that exited this often without turning healthy counts as failed for the line
/// (it is still restarted).
const FAILED_AFTER: u32 = 3;
/// Services start once the VPN address is ours (they listen on it); wait at most this long.
const VPN_WAIT: Duration = Duration::from_secs(30);

/// `STATE_FILE`: what `cloudy-agent status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// Unix milliseconds.
    pub written: u64,
    pub services: BTreeMap<String, Status>,
}

/// The line on stdout once services settled.
#[derive(Debug, Serialize)]
pub struct ServicesLine {
    pub cloudy: &'static str,
    pub running: Vec<String>,
    pub failed: BTreeMap<String, String>,
    pub elapsed_s: f64,
}

struct Entry {
    svc: Arc<dyn Service>,
    status: Shared,
    ctl: Option<mpsc::UnboundedSender<Control>>,
    /// configure failed (the error is in `status`).
    config_error: bool,
}

pub struct Manager {
    pub sys: System,
    pub agent_exe: PathBuf,
    /// From the seed's `[services] enable`.
    pub enabled: Vec<String>,
    pub share: Arc<crate::catalog::publish::Sharing>,
    /// What we publish; a service is added as it is adopted.
    pub local: Arc<Local>,
    /// Children the daemon runs itself (tincd), shown in the state file beside services.
    pub extra: Vec<(String, Shared)>,
    entries: Mutex<BTreeMap<String, Entry>>,
}

impl Manager {
    pub fn new(
        sys: System,
        agent_exe: PathBuf,
        enabled: Vec<String>,
        share: Arc<crate::catalog::publish::Sharing>,
        local: Arc<Local>,
        extra: Vec<(String, Shared)>,
    ) -> Arc<Manager> {
        Arc::new(Manager {
            sys,
            agent_exe,
            enabled,
            share,
            local,
            extra,
            entries: Mutex::new(BTreeMap::new()),
        })
    }

    fn env(&self) -> Env {
        let ctx = self
            .share
            .members
            .lock()
            .unwrap()
            .origin(&self.share.community);
        let catalog: Vec<Record> = self
            .share
            .catalog
            .lock()
            .unwrap()
            .snapshot(now_ms())
            .entries
            .into_iter()
            .map(|e| e.record)
            .collect();
        Env {
            sys: self.sys.clone(),
            ctx,
            catalog,
            agent_exe: self.agent_exe.clone(),
        }
    }

    /// Services enabled in the seed or joined, built once each.
    fn adopt(&self) {
        let mut wanted = self.enabled.clone();
        wanted.extend(crate::services::joined(&self.sys));
        let mut es = self.entries.lock().unwrap();
        for name in wanted {
            if es.contains_key(&name) {
                continue;
            }
            let status: Shared = Arc::default();
            match super::build(&name, &self.sys) {
                Some(svc) => {
                    self.local.add(svc.clone(), Some(status.clone()));
                    es.insert(
                        name,
                        Entry {
                            svc,
                            status,
                            ctl: None,
                            config_error: false,
                        },
                    );
                }
                None => {
                    tracing::error!("service {name:?}: this agent cannot run it");
                    status.lock().unwrap().state = State::Failed;
                    status.lock().unwrap().last_error =
                        Some("not a service this agent can run".into());
                    es.insert(
                        name.clone(),
                        Entry {
                            svc: Arc::new(Unknown(name)),
                            status,
                            ctl: None,
                            config_error: true,
                        },
                    );
                }
            }
        }
    }

    /// The request of a member to use our service of record type `kind`.
    pub fn accept(
        &self,
        kind: &str,
        req: &crate::services::UseRequest,
    ) -> Result<BTreeMap<String, String>, crate::services::ServiceError> {
        let svc = self
            .entries
            .lock()
            .unwrap()
            .values()
            .find(|e| e.svc.name() == kind && !e.config_error)
            .map(|e| e.svc.clone())
            .ok_or_else(|| {
                crate::services::ServiceError::Failed(format!("no {kind} service here"))
            })?;
        svc.accept(req)
    }

    /// Stops every program (agent shutdown).
    pub async fn stop(&self) {
        let ctls: Vec<_> = self
            .entries
            .lock()
            .unwrap()
            .values()
            .filter_map(|e| e.ctl.clone())
            .collect();
        for c in &ctls {
            let _ = c.send(Control::Stop);
        }
        // Each supervisor gives its child 3 s after SIGTERM.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(4)
            && self
                .entries
                .lock()
                .unwrap()
                .values()
                .any(|e| e.ctl.is_some() && e.status.lock().unwrap().pid != 0)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn run(self: Arc<Self>) {
        let t0 = Instant::now();
        self.wait_for_vpn().await;
        let mut announced = false;
        loop {
            self.adopt();
            let env = self.env();
            let list: Vec<(String, Arc<dyn Service>)> = self
                .entries
                .lock()
                .unwrap()
                .iter()
                .map(|(n, e)| (n.clone(), e.svc.clone()))
                .collect();
            let e2 = env.clone();
            let results = tokio::task::spawn_blocking(move || {
                list.into_iter()
                    .map(|(n, s)| {
                        let c = s.configure(&e2);
                        let program = match &c {
                            Ok(Configured::Changed | Configured::Unchanged) => s.program(&e2),
                            _ => None,
                        };
                        let healthy = s.healthy();
                        (n, c, program, healthy)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            {
                let mut es = self.entries.lock().unwrap();
                for (name, configured, mut program, healthy) in results {
                    let Some(e) = es.get_mut(&name) else { continue };
                    if let Some(p) = program.as_mut() {
                        p.on_exit = Some(self.share.recheck.clone());
                    }
                    let was = e.status.lock().unwrap().state;
                    apply(&name, e, configured, program, healthy);
                    if was != e.status.lock().unwrap().state {
                        // Publish (or withdraw) now, not at the next health check.
                        self.share.recheck.notify_one();
                    }
                }
            }
            self.write_state();
            if !announced {
                if let Some(line) = self.settled(t0.elapsed()) {
                    println!(
                        "{}",
                        serde_json::to_string(&line).expect("the services line serialises")
                    );
                    announced = true;
                }
            }
            tokio::time::sleep(TICK).await;
        }
    }

    async fn wait_for_vpn(&self) {
        let t0 = Instant::now();
        loop {
            let vpn = self.share.members.lock().unwrap().me().vpn;
            if std::net::TcpListener::bind((vpn, 0)).is_ok() {
                return;
            }
            if t0.elapsed() > VPN_WAIT {
                tracing::warn!("services: VPN address {vpn} still not up; starting them anyway");
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn write_state(&self) {
        let mut services: BTreeMap<String, Status> = self
            .entries
            .lock()
            .unwrap()
            .iter()
            .map(|(n, e)| (n.clone(), e.status.lock().unwrap().clone()))
            .collect();
        for (n, s) in &self.extra {
            services.insert(n.clone(), s.lock().unwrap().clone());
        }
        let f = StateFile {
            written: now_ms(),
            services,
        };
        let text = serde_json::to_vec_pretty(&f).expect("state serialises");
        // On tmpfs and rewritten every second: no fsync needed, but never half a file.
        let path = self.sys.path(STATE_FILE);
        let write = || -> std::io::Result<()> {
            let dir = path.parent().expect("has a dir");
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join(format!(".services.json.tmp-{}", std::process::id()));
            std::fs::write(&tmp, &text)?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            tracing::warn!("{}: {e}", path.display());
        }
    }

    /// The services line, once every enabled service is running or failed (or time is up).
    fn settled(&self, elapsed: Duration) -> Option<ServicesLine> {
        let es = self.entries.lock().unwrap();
        let mut running = Vec::new();
        let mut failed = BTreeMap::new();
        let mut pending = false;
        for name in &self.enabled {
            let Some(e) = es.get(name) else {
                pending = true;
                continue;
            };
            let s = e.status.lock().unwrap();
            let err = || s.last_error.clone().unwrap_or_else(|| "failed".into());
            if s.state == State::Running {
                running.push(name.clone());
            } else if e.config_error
                || (s.state == State::Failed
                    && (s.restarts >= FAILED_AFTER || s.spawn_failures >= FAILED_AFTER))
            {
                failed.insert(name.clone(), err());
            } else if elapsed >= SETTLE_WITHIN {
                failed.insert(
                    name.clone(),
                    format!(
                        "not healthy within {} s: {}",
                        SETTLE_WITHIN.as_secs(),
                        s.last_error
                            .clone()
                            .unwrap_or_else(|| format!("{:?}", s.state).to_lowercase())
                    ),
                );
            } else {
                pending = true;
            }
        }
        (!pending).then(|| ServicesLine {
            cloudy: "services",
            running,
            failed,
            elapsed_s: (elapsed.as_millis() as f64 / 100.0).round() / 10.0,
        })
    }
}

/// Folds one tick's configure and health results into a service's entry.
fn apply(
    name: &str,
    e: &mut Entry,
    configured: Result<Configured, crate::services::ServiceError>,
    program: Option<supervisor::Program>,
    healthy: bool,
) {
    match configured {
        Err(err) => {
            let mut s = e.status.lock().unwrap();
            if s.last_error.as_deref() != Some(&err.to_string()) {
                tracing::error!("{name}: {err}");
            }
            s.last_error = Some(err.to_string());
            if e.ctl.is_none() {
                s.state = State::Failed;
                e.config_error = true;
            }
            return;
        }
        Ok(Configured::Waiting(why)) => {
            if e.ctl.is_none() {
                let mut s = e.status.lock().unwrap();
                s.state = State::Starting;
                s.last_error = Some(why);
            }
            e.config_error = false;
            return;
        }
        Ok(Configured::Changed) if e.ctl.is_some() => {
            tracing::info!("{name}: configuration changed; restarting it");
            let _ = e.ctl.as_ref().expect("checked").send(Control::Restart);
        }
        Ok(_) => {}
    }
    e.config_error = false;
    if e.ctl.is_none() {
        match program {
            Some(p) => {
                let (tx, rx) = mpsc::unbounded_channel();
                {
                    let mut s = e.status.lock().unwrap();
                    s.state = State::Starting;
                    s.last_error = None;
                }
                tokio::spawn(supervisor::supervise(p, e.status.clone(), rx));
                e.ctl = Some(tx);
                return;
            }
            None => {
                // Nothing to run: its state is its health.
                e.status.lock().unwrap().state = if healthy {
                    State::Running
                } else {
                    State::Starting
                };
                return;
            }
        }
    }
    let mut s = e.status.lock().unwrap();
    if s.pid != 0 {
        if healthy && s.state != State::Running {
            tracing::info!("{name}: healthy (pid {})", s.pid);
            s.state = State::Running;
        } else if !healthy && s.state == State::Running {
            s.state = State::Starting;
        }
    }
}

/// A name in the seed or joined dir this agent has no service for.
struct Unknown(String);

impl Service for Unknown {
    fn name(&self) -> &str {
        &self.0
    }
    fn configure(&self, _env: &Env) -> Result<Configured, crate::services::ServiceError> {
        Err(crate::services::ServiceError::Failed(format!(
            "{}: not a service this agent can run",
            self.0
        )))
    }
    fn healthy(&self) -> bool {
        false
    }
    fn record(&self, _ctx: &crate::services::Context) -> Option<Record> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: State, restarts: u32, config_error: bool) -> Entry {
        Entry {
            svc: Arc::new(Unknown("x".into())),
            status: Arc::new(Mutex::new(Status {
                state,
                pid: 0,
                restarts,
                spawn_failures: 0,
                last_error: Some("boom".into()),
                confinement: None,
            })),
            ctl: None,
            config_error,
        }
    }

    #[test]
    fn a_waiting_service_is_starting_with_its_reason() {
        let mut e = entry(State::Stopped, 0, false);
        apply(
            "x",
            &mut e,
            Ok(Configured::Waiting("no introducer".into())),
            None,
            false,
        );
        let s = e.status.lock().unwrap();
        assert_eq!(s.state, State::Starting);
        assert_eq!(s.last_error.as_deref(), Some("no introducer"));
    }

    #[test]
    fn a_config_error_fails_a_service_not_yet_started() {
        let mut e = entry(State::Stopped, 0, false);
        apply(
            "x",
            &mut e,
            Err(crate::services::ServiceError::Failed("bad".into())),
            None,
            false,
        );
        assert!(e.config_error);
        assert_eq!(e.status.lock().unwrap().state, State::Failed);
    }
}
