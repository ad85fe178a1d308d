//! What the node remembers about updates across restarts and reboots, in
//! `/var/lib/cloudy/update/state.json` (on the data partition, so it survives a slot switch):
//! the last check's outcome, the point in the rollout window chosen for an offered version, an
//! install waiting for its reboot, and a fallback to report.

use serde::{Deserialize, Serialize};

use crate::os::system::System;

pub const STATE_FILE: &str = "/var/lib/cloudy/update/state.json";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateState {
    /// The last check: when (unix s), what came of it.
    #[serde(default)]
    pub last: Option<Outcome>,
    /// The verified bundle this node holds (and serves), by version.
    #[serde(default)]
    pub held: Option<String>,
    /// When this node installs `held`: chosen once per version in the rollout window.
    #[serde(default)]
    pub rollout: Option<Rollout>,
    /// An install done, waiting for (or just past) its reboot: the version installed and the
    /// one it replaced.
    #[serde(default)]
    pub installed: Option<Installed>,
    /// The booted slot was marked good for this release version.
    #[serde(default)]
    pub marked_good: Option<String>,
    /// Set when a boot after an install came up on the old version: the message, kept until a
    /// newer release runs.
    #[serde(default)]
    pub fallback: Option<String>,
    /// Versions that were installed and did not come up: never installed again.
    #[serde(default)]
    pub failed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub at: u64,
    /// `none` (nothing offered), `refused`, `offered`, `held`, `installed`, `error`, `no-updates`.
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub version: String,
    /// Unix s: the install is due then.
    pub at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Installed {
    pub version: String,
    pub from: String,
    pub at: u64,
    /// The kernel's boot id when it was installed: another one means the node has rebooted
    /// since (RAUC made the new slot primary, so any reboot, asked for or a power cut, tries it).
    pub boot_id: String,
    /// The reboot was asked for (a live node), at this time.
    #[serde(default)]
    pub rebooted: Option<u64>,
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): the kernel's, also under a test's root.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl UpdateState {
    /// The stored state; a missing or damaged file is a fresh start (logged): losing it costs a
    /// new roll of the window and nothing else.
    pub fn load(sys: &System) -> UpdateState {
        match std::fs::read(sys.path(STATE_FILE)) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!("{STATE_FILE}: {e}; starting the update state afresh");
                UpdateState::default()
            }),
            Err(_) => UpdateState::default(),
        }
    }

    pub fn save(&self, sys: &System) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("state serialises");
        sys.write_atomic(STATE_FILE, &json, 0o600)
    }
}

pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
