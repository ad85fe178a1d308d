//! Signed A/B updates on the node (issue 16): fetch a manifest from the seed's `[update] url`
//! and from members over the VPN, accept it only when `cloudy_model::update::offer` does (K of
//! N signatures, this board and channel, newer than what runs), stream its bundle through
//! `BundleCheck` into a partial file and rename it only when it matches, then hand it to
//! `rauc install` at this node's point in the rollout window and reboot at the quiet hour.
//! After a reboot the booted slot is marked good once the agent is ready and back in the
//! mesh; a boot that came up on the old version after an install is reported.
//!
//! - `release`: what the image is and which update keys it trusts
//! - `fetch`: sources (url, members), manifests, bundles with Range resume
//! - `serve`: the verified bundle served on to members (VPN only, members only, capped)
//! - `rauc`: the RAUC CLI
//! - `rollout`: the window, the quiet hour, what a boot after an install means
//! - `state`: what is kept across restarts (`/var/lib/cloudy/update/state.json`)

pub mod fetch;
pub mod rauc;
pub mod release;
pub mod rollout;
pub mod serve;
pub mod state;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::mesh::members::Members;
use crate::os::system::System;
use cloudy_model::info::Release;
use cloudy_model::seed::Update as Settings;
use cloudy_model::update::{offer, SignedManifest, Version};

use fetch::{Progress, Source};
use rollout::AfterBoot;
use serve::Held;
use state::{now_s, Outcome, UpdateState};

/// Verified bundles and their signed manifests (served on to members).
pub const BUNDLE_DIR: &str = "/var/lib/cloudy/update/bundles";
/// Transfers not finished yet: never served, never installed.
pub const PARTIAL_DIR: &str = "/var/lib/cloudy/update/partial";
/// How often a node looks for updates (and ±20 %); `CLOUDY_UPDATE_EVERY_S` sets another.
const CHECK_EVERY: Duration = Duration::from_secs(6 * 3600);
/// How often the rollout looks at the clock.
const TICK: Duration = Duration::from_secs(60);

/// What `cloudy-agent update status`, `check` and `now` and the dashboard show.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The running release (None: the image names none) or why updates are off.
    pub release: Option<Release>,
    /// None when the node takes updates; else why not.
    pub off: Option<String>,
    /// The node has A/B slots (a RAUC system.conf); a live node only reports.
    pub slots: bool,
    pub channel: String,
    pub url: Option<String>,
    pub auto: bool,
    pub window_days: u32,
    pub quiet_hour: u8,
    pub last: Option<Outcome>,
    /// The verified bundle held (and served to members): its version.
    pub held: Option<String>,
    pub rollout: Option<state::Rollout>,
    pub installed: Option<state::Installed>,
    pub marked_good: Option<String>,
    pub fallback: Option<String>,
    pub downloading: Option<Progress>,
    /// A check or an install is running now.
    pub working: bool,
    /// What the RAUC status said, one line (booted slot, primary).
    pub slot_status: Option<String>,
}

/// The update side of a running node (or of a one-off `cloudy-agent update` without one).
pub struct Updater {
    sys: System,
    settings: Settings,
    /// None for a one-off CLI run without the agent: only the url is asked.
    members: Option<Arc<Mutex<Members>>>,
    exchange_port: u16,
    held: Arc<Mutex<Option<Held>>>,
    state: Mutex<UpdateState>,
    downloading: Mutex<Option<Progress>>,
    /// One check or install at a time.
    working: tokio::sync::Mutex<()>,
    /// What a reboot must not cut short (a join); None: nothing known.
    busy: Box<dyn Fn() -> Option<String> + Send + Sync>,
}

impl Updater {
    pub fn new(
        sys: System,
        settings: Settings,
        members: Option<Arc<Mutex<Members>>>,
        exchange_port: u16,
        busy: Box<dyn Fn() -> Option<String> + Send + Sync>,
    ) -> Arc<Updater> {
        let state = UpdateState::load(&sys);
        let u = Arc::new(Updater {
            sys,
            settings,
            members,
            exchange_port,
            held: Arc::new(Mutex::new(None)),
            state: Mutex::new(state),
            downloading: Mutex::new(None),
            working: tokio::sync::Mutex::new(()),
            busy,
        });
        u.load_held();
        u
    }

    fn rauc(&self) -> Option<rauc::Rauc> {
        rauc::Rauc::find(&self.sys)
    }

    fn save(&self) {
        if let Err(e) = self.state.lock().unwrap().save(&self.sys) {
            tracing::warn!("{}: {e}", state::STATE_FILE);
        }
    }

    fn set_last(&self, kind: &str, message: String) -> Outcome {
        match kind {
            "refused" | "error" => tracing::warn!("update: {message}"),
            _ => tracing::info!("update: {message}"),
        }
        let o = Outcome {
            at: now_s(),
            kind: kind.into(),
            message,
        };
        self.state.lock().unwrap().last = Some(o.clone());
        self.save();
        o
    }

    /// The bundle kept from an earlier run, if its manifest still verifies under the image's
    /// keys and the file still hashes to it (checked again: what is served must be verified).
    fn load_held(&self) {
        let Ok(keys) = release::keys(&self.sys) else {
            return;
        };
        let Ok(rel) = release::release(&self.sys) else {
            return;
        };
        let dir = self.sys.path(BUNDLE_DIR);
        let mpath = dir.join(fetch::manifest_name(&rel.board));
        let Ok(signed) = std::fs::read(&mpath) else {
            return;
        };
        let held = SignedManifest::parse(&signed)
            .map_err(|e| e.to_string())
            .and_then(|s| {
                let m = s.verify(&keys).map_err(|e| e.to_string())?.clone();
                if m.board != rel.board {
                    return Err(format!("for board {}", m.board));
                }
                let path = dir.join(&m.bundle);
                fetch::recheck(&path, &m)?;
                Ok(Held {
                    manifest: m,
                    signed: signed.clone(),
                    path,
                })
            });
        match held {
            Ok(h) => {
                tracing::info!(
                    "update: holding verified bundle {} ({})",
                    h.manifest.bundle,
                    h.manifest.version
                );
                *self.held.lock().unwrap() = Some(h);
            }
            Err(e) => {
                tracing::warn!(
                    "update: the kept bundle is set aside ({}: {e}); it is fetched again when offered",
                    mpath.display()
                );
                let _ = std::fs::remove_file(&mpath);
            }
        }
    }

    /// Where manifests and bundles may come from: the seed's url, then every member.
    fn sources(&self) -> Vec<Source> {
        let mut v: Vec<Source> = self
            .settings
            .url
            .as_deref()
            .and_then(Source::url)
            .into_iter()
            .collect();
        if let Some(ms) = &self.members {
            let ms = ms.lock().unwrap();
            v.extend(
                ms.others()
                    .map(|m| Source::member(&m.id, &m.name, m.vpn, serve::PORT)),
            );
        }
        v
    }

    /// Fetch and verify now: what is offered, or why nothing is taken.
    pub async fn check(&self) -> Outcome {
        let _one = self.working.lock().await;
        self.check_locked().await
    }

    async fn check_locked(&self) -> Outcome {
        let (rel, keys) =
            match release::release(&self.sys).and_then(|r| Ok((r, release::keys(&self.sys)?))) {
                Ok(x) => x,
                Err(e) => return self.set_last("no-updates", e.to_string()),
            };
        let node = release::running(&rel, self.settings.channel());
        let sources = self.sources();
        if sources.is_empty() {
            let why = if self.members.is_none() {
                "the agent is not running and the seed has no [update] url: nothing to ask; fix: start the agent (it asks the members) or add a url"
            } else {
                "no update url in the seed and no members to ask yet"
            };
            return self.set_last("none", why.into());
        }
        let failed = self.state.lock().unwrap().failed.clone();
        let mut refusals = Vec::new();
        let mut errors = Vec::new();
        // The newest acceptable manifest, and every source that offered exactly it.
        let mut best: Option<(SignedManifest, Vec<u8>, Vec<Source>)> = None;
        for src in &sources {
            let bytes = match fetch::manifest(src, &rel.board).await {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(e) => {
                    errors.push(e.to_string());
                    continue;
                }
            };
            let signed = match SignedManifest::parse(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    refusals.push(format!("{}: {e}", src.label));
                    continue;
                }
            };
            let m = match offer(&signed, &keys, &node) {
                Ok(m) => m.clone(),
                Err(e) => {
                    // The release we run, offered again (by the url, by members that updated
                    // with us), is no news; an older one is a refused downgrade.
                    if !matches!(e, cloudy_model::update::UpdateError::Downgrade { ref offered, .. } if *offered == node.version)
                    {
                        refusals.push(format!("{}: refused: {e}", src.label));
                    }
                    continue;
                }
            };
            if failed.contains(&m.version.to_string()) {
                refusals.push(format!(
                    "{}: version {} did not come up on this node before; it is not installed again",
                    src.label, m.version
                ));
                continue;
            }
            match &mut best {
                Some((b, _, from)) if b.manifest == m => from.push(src.clone()),
                Some((b, _, _)) if b.manifest.version >= m.version => {}
                _ => best = Some((signed.clone(), bytes, vec![src.clone()])),
            }
        }
        let Some((signed, bytes, from)) = best else {
            if !refusals.is_empty() {
                return self.set_last("refused", refusals.join("; "));
            }
            let mut msg = format!(
                "nothing newer than {} offered ({} source(s) asked)",
                rel.version,
                sources.len()
            );
            if !errors.is_empty() {
                msg.push_str(&format!("; unreachable: {}", errors.join("; ")));
            }
            return self.set_last("none", msg);
        };
        let m = signed.manifest.clone();
        let already = self
            .held
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|h| h.manifest == m);
        if !already {
            if self.rauc().is_none() {
                return self.set_last(
                    "offered",
                    format!(
                        "version {} is out ({}); this node has no update slots (a live image): write the new image {} to its medium",
                        m.version, from[0].label, m.bundle
                    ),
                );
            }
            if let Err(why) = self.download(&m, &bytes, &from).await {
                return self.set_last(why.0, why.1);
            }
        }
        let due = {
            let mut st = self.state.lock().unwrap();
            st.held = Some(m.version.to_string());
            let mut random = [0u8; 8];
            let _ = getrandom::fill(&mut random);
            let r = rollout::keep_or_pick(
                st.rollout.as_ref(),
                &m.version.to_string(),
                now_s(),
                self.settings.window_days(),
                u64::from_le_bytes(random),
            );
            let at = r.at;
            st.rollout = Some(r);
            at
        };
        let when = if due <= now_s() {
            "due now".to_string()
        } else {
            format!("installs in {} h", (due - now_s()).div_ceil(3600))
        };
        self.set_last(
            "held",
            format!(
                "version {} verified ({} bytes, {} signature(s) of {} needed) from {}; {when}",
                m.version,
                m.size,
                signed.signatures.len(),
                keys.threshold,
                from.iter()
                    .map(|s| s.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    }

    /// The bundle from the first source that delivers it whole and matching; kept as held.
    async fn download(
        &self,
        m: &cloudy_model::update::Manifest,
        signed: &[u8],
        from: &[Source],
    ) -> Result<(), (&'static str, String)> {
        let dir = self.sys.path(BUNDLE_DIR);
        let partial = self.sys.path(PARTIAL_DIR);
        let mut problems = Vec::new();
        let mut mismatch = false;
        for src in from {
            tracing::info!(
                "update: fetching {} ({} bytes) from {}",
                m.bundle,
                m.size,
                src.label
            );
            let r = fetch::bundle(src, m, &partial, &dir, |p| {
                *self.downloading.lock().unwrap() = Some(p);
                tracing::info!(
                    "update: {} of {} bytes of {} (resumed from {})",
                    p.done,
                    p.total,
                    m.bundle,
                    p.resumed_from
                );
            })
            .await;
            *self.downloading.lock().unwrap() = None;
            match r {
                Ok(path) => {
                    let mpath = dir.join(fetch::manifest_name(&m.board));
                    if let Err(e) = crate::os::system::write_atomic(&mpath, signed, 0o644) {
                        let _ = std::fs::remove_file(&path);
                        return Err(("error", format!("{}: {e}", mpath.display())));
                    }
                    // Older bundles go: one is held (and served) at a time.
                    if let Ok(rd) = std::fs::read_dir(&dir) {
                        for e in rd.flatten() {
                            let p = e.path();
                            if p != path && p != mpath {
                                let _ = std::fs::remove_file(p);
                            }
                        }
                    }
                    *self.held.lock().unwrap() = Some(Held {
                        manifest: m.clone(),
                        signed: signed.to_vec(),
                        path,
                    });
                    return Ok(());
                }
                Err(e) => {
                    mismatch |= e.problem.contains("does not match");
                    problems.push(e.to_string());
                }
            }
        }
        let kind = if mismatch { "refused" } else { "error" };
        Err((
            kind,
            format!(
                "version {}: the bundle was not taken: {}",
                m.version,
                problems.join("; ")
            ),
        ))
    }

    /// Installs the held bundle now (after hashing it once more), whatever the window says.
    async fn install_locked(&self) -> Outcome {
        let Some(rauc) = self.rauc() else {
            return self.set_last(
                "offered",
                "this node has no update slots (a live image): nothing to install into".into(),
            );
        };
        let Some(h) = self.held.lock().unwrap().clone() else {
            return self.set_last("none", "no verified update held".into());
        };
        let rel = match release::release(&self.sys) {
            Ok(r) => r,
            Err(e) => return self.set_last("no-updates", e.to_string()),
        };
        let running: Version = rel.version.parse().unwrap_or_else(|_| "0".parse().unwrap());
        if h.manifest.version <= running {
            return self.set_last("none", format!("version {} already runs", rel.version));
        }
        let (path, m) = (h.path.clone(), h.manifest.clone());
        // The file sat on disk since it was checked: hash it again right before RAUC reads it.
        let checked = tokio::task::spawn_blocking(move || fetch::recheck(&path, &m))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = checked {
            *self.held.lock().unwrap() = None;
            let _ = std::fs::remove_file(&h.path);
            return self.set_last(
                "refused",
                format!("the held bundle {} no longer matches its manifest ({e}); removed, fetched again at the next check", h.manifest.bundle),
            );
        }
        tracing::info!("update: installing {} with rauc", h.manifest.bundle);
        match rauc.install(&h.path).await {
            Ok(()) => {
                {
                    let mut st = self.state.lock().unwrap();
                    st.installed = Some(state::Installed {
                        version: h.manifest.version.to_string(),
                        from: rel.version.clone(),
                        at: now_s(),
                        boot_id: state::boot_id(),
                        rebooted: None,
                    });
                }
                self.set_last(
                    "installed",
                    format!(
                        "version {} installed into the other slot; the node reboots into it at {:02}:00",
                        h.manifest.version,
                        self.settings.quiet_hour()
                    ),
                )
            }
            Err(e) => self.set_last("error", format!("installing {}: {e}", h.manifest.bundle)),
        }
    }

    /// `cloudy-agent update now`: check, install what is held at once, and reboot at once if
    /// nothing that a reboot would break runs.
    pub async fn now(&self) -> Outcome {
        let _one = self.working.lock().await;
        let o = self.check_locked().await;
        if self.held.lock().unwrap().is_none() {
            return o;
        }
        let o = self.install_locked().await;
        if o.kind == "installed" {
            match self.busy_now().await {
                Some(b) => {
                    return self.set_last(
                        "installed",
                        format!("{}; not rebooting now: {b}", o.message),
                    )
                }
                None => {
                    self.reboot();
                    return self.set_last(
                        "installed",
                        format!(
                            "{}; rebooting into it now",
                            o.message.split("; the node reboots").next().unwrap_or("")
                        ),
                    );
                }
            }
        }
        o
    }

    /// Reboots a live node (never one under a test's root, which shares the machine).
    fn reboot(&self) {
        {
            let mut st = self.state.lock().unwrap();
            if let Some(i) = st.installed.as_mut() {
                i.rebooted = Some(now_s());
            }
        }
        self.save();
        if !self.sys.is_live() {
            tracing::info!("update: would reboot now (not a live root)");
            return;
        }
        tracing::info!("update: rebooting into the new slot");
        let _ = std::process::Command::new("systemctl")
            .arg("reboot")
            .status();
    }

    /// What a reboot must not cut short: a join (any process), a Tahoe upload on this node.
    async fn busy_now(&self) -> Option<String> {
        if let Some(b) = (self.busy)() {
            return Some(b);
        }
        tahoe_uploading().await
    }

    /// Status for the CLI and the dashboard.
    pub async fn report(&self) -> Report {
        let off = release::release(&self.sys)
            .and_then(|_| release::keys(&self.sys).map(|_| ()))
            .err()
            .map(|e| e.to_string());
        let rauc = self.rauc();
        let slot_status = match &rauc {
            Some(r) => Some(match r.status().await {
                Ok(s) => format!(
                    "booted slot {}, next boot {}",
                    s.booted.as_deref().unwrap_or("?"),
                    s.boot_primary.as_deref().unwrap_or("?")
                ),
                Err(e) => e.to_string(),
            }),
            None => None,
        };
        let st = self.state.lock().unwrap().clone();
        Report {
            release: release::release(&self.sys).ok(),
            off,
            slots: rauc.is_some(),
            channel: self.settings.channel().to_string(),
            url: self.settings.url.clone(),
            auto: self.settings.auto(),
            window_days: self.settings.window_days(),
            quiet_hour: self.settings.quiet_hour(),
            last: st.last,
            held: self
                .held
                .lock()
                .unwrap()
                .as_ref()
                .map(|h| h.manifest.version.to_string()),
            rollout: st.rollout,
            installed: st.installed,
            marked_good: st.marked_good,
            fallback: st.fallback,
            downloading: *self.downloading.lock().unwrap(),
            working: self.working.try_lock().is_err(),
            slot_status,
        }
    }

    /// After a boot: whether an install came up, and the fallback if it did not.
    fn after_boot(&self) {
        let Ok(rel) = release::release(&self.sys) else {
            return;
        };
        let Ok(running) = rel.version.parse::<Version>() else {
            return;
        };
        let mut st = self.state.lock().unwrap();
        match rollout::settle_boot(&mut st, &running, &state::boot_id()) {
            AfterBoot::Nothing | AfterBoot::Waiting => return,
            AfterBoot::Updated { to } => tracing::info!("update: now running {to}"),
            AfterBoot::FellBack { wanted, running } => {
                tracing::error!("update: {}", rollout::fallback_message(&wanted, &running));
                // Not served on either: it failed here, on this same board.
                let mut held = self.held.lock().unwrap();
                if let Some(h) = held
                    .as_ref()
                    .filter(|h| h.manifest.version.to_string() == wanted)
                {
                    let _ = std::fs::remove_file(&h.path);
                    let _ = std::fs::remove_file(
                        self.sys
                            .path(BUNDLE_DIR)
                            .join(fetch::manifest_name(&h.manifest.board)),
                    );
                    *held = None;
                }
            }
        }
        drop(st);
        self.save();
    }

    /// Marks the booted slot good once the mesh has us back: a member's exchange port answers
    /// over the VPN, or we are alone in the community. Until then RAUC's bootloader counts the
    /// boot as a try, and returns to the other slot if this system never gets this far. A
    /// release already confirmed here (an ordinary reboot) is marked at once: a community that
    /// is down must not send a working node back to its old slot.
    async fn mark_good_when_back(&self) {
        let Some(rauc) = self.rauc() else { return };
        let Ok(rel) = release::release(&self.sys) else {
            return;
        };
        let confirmed =
            self.state.lock().unwrap().marked_good.as_deref() == Some(rel.version.as_str());
        let mut waited = 0u32;
        while !confirmed && !self.back_in_mesh().await {
            waited += 1;
            if waited == 1 || waited % 60 == 0 {
                tracing::info!(
                    "update: the slot is marked good once a member answers over the VPN"
                );
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        match rauc.mark_good().await {
            Ok(()) => {
                tracing::info!("update: booted slot marked good ({})", rel.version);
                self.state.lock().unwrap().marked_good = Some(rel.version.clone());
                self.save();
            }
            Err(e) => tracing::error!("update: marking the booted slot good: {e}"),
        }
    }

    async fn back_in_mesh(&self) -> bool {
        let Some(ms) = &self.members else { return true };
        let addrs: Vec<std::net::SocketAddr> = {
            let ms = ms.lock().unwrap();
            ms.others()
                .map(|m| (m.vpn, self.exchange_port).into())
                .collect()
        };
        if addrs.is_empty() {
            return true;
        }
        for a in addrs {
            let c = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(a));
            if matches!(c.await, Ok(Ok(_))) {
                return true;
            }
        }
        false
    }

    /// One rollout step: install when this node's point in the window has come (auto only),
    /// reboot into an install at the quiet hour when nothing a reboot breaks runs.
    async fn tick(&self) {
        let _one = self.working.lock().await;
        let (due, installed) = {
            let st = self.state.lock().unwrap();
            (
                st.rollout.as_ref().map(|r| (r.version.clone(), r.at)),
                st.installed.clone(),
            )
        };
        match installed {
            None => {
                let held = self
                    .held
                    .lock()
                    .unwrap()
                    .as_ref()
                    .map(|h| h.manifest.version.to_string());
                if let (Some((v, at)), Some(h)) = (due, held) {
                    if v == h && at <= now_s() && self.settings.auto() {
                        self.install_locked().await;
                    }
                }
            }
            Some(i) if i.rebooted.is_none() && i.boot_id == state::boot_id() => {
                let busy = self.busy_now().await;
                match rollout::may_reboot(
                    now_s(),
                    self.settings.quiet_hour(),
                    utc_offset(),
                    busy.as_deref(),
                ) {
                    Ok(()) => self.reboot(),
                    Err(why) => tracing::debug!("update: not rebooting yet: {why}"),
                }
            }
            Some(_) => {}
        }
    }

    /// For a node in no community: the fallback check and the booted slot marked good (it is
    /// ready and alone), within 30 s so that a stuck RAUC never holds up setup mode.
    pub async fn boot_alone(&self) {
        self.after_boot();
        if tokio::time::timeout(Duration::from_secs(30), self.mark_good_when_back())
            .await
            .is_err()
        {
            tracing::error!("update: marking the booted slot good took over 30 s; given up");
        }
    }

    /// The node's update task: after a boot, the fallback check and marking the slot good;
    /// then checks every few hours and the rollout every minute.
    pub async fn run(self: Arc<Self>) {
        self.after_boot();
        let me = self.clone();
        tokio::spawn(async move { me.mark_good_when_back().await });
        if let Some(ms) = &self.members {
            tokio::spawn(serve::serve(serve::Shared {
                held: self.held.clone(),
                members: ms.clone(),
                cap: Arc::new(serve::Cap::new(self.settings.max_rate_kib())),
            }));
        }
        let every = std::env::var("CLOUDY_UPDATE_EVERY_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(CHECK_EVERY);
        // The first check a little after start: the mesh is still forming.
        let mut next_check =
            tokio::time::Instant::now() + jitter(every.min(Duration::from_secs(120)));
        loop {
            if tokio::time::Instant::now() >= next_check {
                self.check().await;
                next_check = tokio::time::Instant::now() + jitter(every);
            }
            self.tick().await;
            tokio::time::sleep(TICK.min(every)).await;
        }
    }
}

impl Report {
    /// The report as lines for a shell (`cloudy-agent update status`, `status`).
    pub fn lines(&self) -> Vec<String> {
        let mut v = Vec::new();
        match (&self.release, &self.off) {
            (Some(r), None) => v.push(format!("release:  {} on {}", r.version, r.board)),
            (Some(r), Some(off)) => {
                v.push(format!("release:  {} on {} ({off})", r.version, r.board))
            }
            (None, Some(off)) => v.push(format!("release:  {off}")),
            (None, None) => v.push("release:  unknown".into()),
        }
        v.push(format!(
            "follows:  {} channel from {}; {}, window {} day(s), reboots at {:02}:00",
            self.channel,
            self.url.as_deref().unwrap_or("members only"),
            if self.auto {
                "installs by itself"
            } else {
                "installs only on `update now`"
            },
            self.window_days,
            self.quiet_hour
        ));
        if !self.slots {
            v.push("slots:    none (a live image): a newer release is only reported".into());
        } else if let Some(s) = &self.slot_status {
            v.push(format!("slots:    {s}"));
        }
        if let Some(f) = &self.fallback {
            v.push(format!("FALLBACK: {f}"));
        }
        if let Some(p) = &self.downloading {
            v.push(format!(
                "fetching: {} of {} bytes ({}%){}",
                p.done,
                p.total,
                p.done * 100 / p.total.max(1),
                if p.resumed_from > 0 {
                    format!(", resumed at {}", p.resumed_from)
                } else {
                    String::new()
                }
            ));
        }
        if let Some(h) = &self.held {
            v.push(format!("held:     {h} (verified; served to members)"));
        }
        if let Some(r) = &self.rollout {
            let now = now_s();
            v.push(if r.at <= now {
                format!("rollout:  {} due now", r.version)
            } else {
                format!(
                    "rollout:  {} in {} h (this node's point in the window)",
                    r.version,
                    (r.at - now).div_ceil(3600)
                )
            });
        }
        if let Some(i) = &self.installed {
            v.push(format!(
                "installed: {} (from {}), waiting for its reboot",
                i.version, i.from
            ));
        }
        if let Some(g) = &self.marked_good {
            v.push(format!("good:     slot marked good on {g}"));
        }
        match &self.last {
            Some(o) => v.push(format!(
                "last:     {}: {} ({} s ago)",
                o.kind,
                o.message,
                now_s().saturating_sub(o.at)
            )),
            None => v.push("last:     no check yet".into()),
        }
        if self.working {
            v.push("working:  a check or install is running".into());
        }
        v
    }
}

/// The report from the files alone (no agent running, or not yet answering): release, state,
/// held version. An install that this boot already decided (it runs, or the bootloader fell
/// back) is shown as the agent's after-boot check will record it, not as still waiting for its
/// reboot: `update status` in the first minute of a boot says what happened.
pub fn offline_report(sys: &System) -> Report {
    let seed = sys.load_seed().seed;
    let settings = seed.update.clone().unwrap_or_default();
    let mut st = UpdateState::load(sys);
    let rel = release::release(sys);
    if let Some(running) = rel
        .as_ref()
        .ok()
        .and_then(|r| r.version.parse::<Version>().ok())
    {
        rollout::settle_boot(&mut st, &running, &state::boot_id());
    }
    let off = match &rel {
        Ok(_) => release::keys(sys).err().map(|e| e.to_string()),
        Err(e) => Some(e.to_string()),
    };
    Report {
        release: rel.ok(),
        off,
        slots: rauc::Rauc::find(sys).is_some(),
        channel: settings.channel().to_string(),
        url: settings.url.clone(),
        auto: settings.auto(),
        window_days: settings.window_days(),
        quiet_hour: settings.quiet_hour(),
        last: st.last,
        held: st.held,
        rollout: st.rollout,
        installed: st.installed,
        marked_good: st.marked_good,
        fallback: st.fallback,
        downloading: None,
        working: false,
        slot_status: None,
    }
}

/// A Tahoe upload running on this node: its web API's `/status?t=json` lists active operations
/// (`{"active": [{"type": "upload", ...}], "recent": [...]}`), asked on the client's and the
/// storage node's local web ports. One local HTTP request each, only when a reboot is due.
async fn tahoe_uploading() -> Option<String> {
    use crate::kinds::tahoe::{CLIENT_WEB_PORT, STORAGE_WEB_PORT};
    for port in [CLIENT_WEB_PORT, STORAGE_WEB_PORT] {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            crate::os::http::get(addr, "/status?t=json", 1 << 20, None),
        )
        .await;
        if let Ok(Ok(g)) = got {
            if g.status == 200 && active_upload(&g.body) {
                return Some(format!("a Tahoe upload is running (web port {port})"));
            }
        }
    }
    None
}

/// Whether Tahoe's status JSON lists an active upload (immutable `upload` or mutable
/// `publish`).
fn active_upload(json: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Op {
        #[serde(rename = "type")]
        kind: String,
    }
    #[derive(Deserialize)]
    struct St {
        #[serde(default)]
        active: Vec<Op>,
    }
    serde_json::from_slice::<St>(json)
        .map(|s| {
            s.active
                .iter()
                .any(|o| o.kind == "upload" || o.kind == "publish")
        })
        .unwrap_or(false)
}

/// `d` ±20 %, so a community's nodes do not all ask at once.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let f = 0.8 + 0.4 * f64::from(u16::from_le_bytes(b)) / 65535.0;
    d.mul_f64(f)
}

/// The local time's offset from UTC, in seconds (the node's `/etc/localtime`).
// `tm_gmtoff` is a C long: 32 bits on i686 and armhf, where the conversion is not useless.
#[allow(clippy::useless_conversion)]
fn utc_offset() -> i64 {
    let now = now_s() as nix::libc::time_t;
    let mut tm: nix::libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r writes only into `tm`, which lives here.
    let ok = unsafe { !nix::libc::localtime_r(&now, &mut tm).is_null() };
    if ok {
        i64::from(tm.tm_gmtoff)
    } else {
        0
    }
}

/// Where a one-off CLI run keeps its paths: the same as the agent's.
pub fn bundle_dir(sys: &System) -> PathBuf {
    sys.path(BUNDLE_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Before the agent has run its after-boot check (or with no agent), `update status` reads
    /// the files: an install from an earlier boot on a node still at the old version is shown
    /// as the fallback it is, not as "waiting for its reboot"; one that runs is no longer shown.
    #[test]
    fn the_offline_report_shows_a_fallback_before_the_agent_records_it() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        let installed = |version: &str| UpdateState {
            installed: Some(state::Installed {
                version: version.into(),
                from: "1.0".into(),
                at: 1,
                boot_id: "a boot before this one".into(),
                rebooted: Some(2),
            }),
            ..Default::default()
        };
        let release = |v: &str| {
            sys.write_atomic(
                cloudy_model::info::RELEASE_FILE,
                format!(r#"{{"board": "pc-amd64", "version": "{v}"}}"#).as_bytes(),
                0o644,
            )
            .unwrap()
        };
        release("1.0");
        installed("1.1").save(&sys).unwrap();
        let r = offline_report(&sys);
        assert_eq!(
            r.fallback.as_deref(),
            Some("the update to 1.1 did not come up; back on 1.0")
        );
        assert!(r.installed.is_none());
        assert!(r.lines().iter().any(|l| l.starts_with("FALLBACK: ")));
        assert!(!r
            .lines()
            .iter()
            .any(|l| l.contains("waiting for its reboot")));
        // The files are only read: the agent records it when it runs.
        assert!(UpdateState::load(&sys).fallback.is_none());
        // The new version runs: nothing is waiting, nothing fell back.
        release("1.1");
        let r = offline_report(&sys);
        assert!(r.installed.is_none() && r.fallback.is_none(), "{r:?}");
        // In the boot of the install itself it still waits for its reboot.
        release("1.0");
        let mut st = installed("1.1");
        st.installed.as_mut().unwrap().boot_id = state::boot_id();
        st.save(&sys).unwrap();
        assert!(offline_report(&sys).installed.is_some());
    }

    /// A boot on the old version after an install: the fallback is reported (status, the
    /// dashboard's report) and that version is refused from then on, with the reason, while the
    /// same manifest signed and served is otherwise fine.
    #[tokio::test(flavor = "current_thread")]
    async fn a_fallback_is_reported_and_that_version_is_not_taken_again() {
        use cloudy_model::update::{encode_signing_key, sha256_hex, Channel, Manifest};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        sys.write_atomic(
            cloudy_model::info::RELEASE_FILE,
            br#"{"board": "pc-amd64", "version": "1.0"}"#,
            0o644,
        )
        .unwrap();
        let keys = serde_json::json!({"threshold": 1, "keys": [encode_signing_key(&key).1]});
        sys.write_atomic(release::KEYS_FILE, keys.to_string().as_bytes(), 0o644)
            .unwrap();
        // What the node kept before its reboot: 1.1 installed in another boot.
        let st = UpdateState {
            installed: Some(state::Installed {
                version: "1.1".into(),
                from: "1.0".into(),
                at: 1,
                boot_id: "a boot before this one".into(),
                rebooted: Some(2),
            }),
            ..Default::default()
        };
        st.save(&sys).unwrap();
        // The url still offers 1.1, properly signed.
        let mut signed = SignedManifest {
            manifest: Manifest {
                board: "pc-amd64".into(),
                version: "1.1".parse().unwrap(),
                bundle: "b.raucb".into(),
                sha256: sha256_hex(b"bundle"),
                size: 6,
                channel: Channel::Stable,
                min_version: "1.0".parse().unwrap(),
            },
            signatures: vec![],
        };
        signed.sign(&key);
        let body = signed.to_json();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let settings = Settings {
            url: Some(format!("http://127.0.0.1:{port}/")),
            ..Default::default()
        };
        // The node also holds (and served) the 1.1 bundle it installed.
        let bdir = sys.path(BUNDLE_DIR);
        std::fs::create_dir_all(&bdir).unwrap();
        std::fs::write(bdir.join("b.raucb"), b"bundle").unwrap();
        std::fs::write(bdir.join("pc-amd64.manifest.json"), signed.to_json()).unwrap();
        let u = Updater::new(sys.clone(), settings, None, 0, Box::new(|| None));
        assert_eq!(u.report().await.held.as_deref(), Some("1.1"));
        u.after_boot();
        let r = u.report().await;
        assert_eq!(r.held, None, "a version that failed here is not served on");
        assert!(!bdir.join("b.raucb").exists());
        assert_eq!(
            r.fallback.as_deref(),
            Some("the update to 1.1 did not come up; back on 1.0")
        );
        assert!(r
            .lines()
            .iter()
            .any(|l| l.starts_with("FALLBACK: the update to 1.1")));
        assert!(r.installed.is_none());
        // Kept across a restart of the agent.
        let again = Updater::new(sys.clone(), Settings::default(), None, 0, Box::new(|| None));
        assert!(again.report().await.fallback.is_some());
        let o = u.check().await;
        assert_eq!(o.kind, "refused", "{o:?}");
        assert!(
            o.message
                .contains("1.1 did not come up on this node before"),
            "{o:?}"
        );
    }

    #[test]
    fn tahoe_status_says_when_an_upload_runs() {
        assert!(active_upload(br#"{"active": [{"type": "download"}, {"type": "upload", "total-size": 5}], "recent": []}"#));
        assert!(!active_upload(
            br#"{"active": [{"type": "download"}], "recent": [{"type": "upload"}]}"#
        ));
        assert!(!active_upload(b"<html>"));
    }
}
