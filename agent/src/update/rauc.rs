//! RAUC on the node: `rauc install`, `rauc status mark-good`, `rauc status --output-format=json`.
//! Its config (`/etc/rauc/system.conf`, the slots and the bootloader backend) comes with the
//! image; a node without one (a live ISO) has no slots and only reports that a newer image is
//! out. The `rauc` CLI asks RAUC's D-Bus service, which systemd starts on demand.

use std::path::PathBuf;

use serde::Deserialize;

use crate::os::system::System;

pub const SYSTEM_CONF: &str = "/etc/rauc/system.conf";

#[derive(Debug, Clone)]
pub struct Rauc {
    exe: PathBuf,
    conf: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RaucError {
    #[error("running {exe}: {source}; fix: install RAUC (apt-get install rauc)")]
    Spawn { exe: String, source: std::io::Error },
    #[error("`rauc {what}` failed: {message}")]
    Failed { what: String, message: String },
    #[error("`rauc status` answered what this agent cannot read: {0}")]
    Status(String),
}

/// `rauc status --output-format=json`, the parts the agent uses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Status {
    /// The booted slot's bootname (`A`, `B`).
    pub booted: Option<String>,
    /// The slot the bootloader starts next (`rootfs.0`), when the backend says.
    pub boot_primary: Option<String>,
}

impl Rauc {
    /// RAUC for this node, when its image has slots (a system.conf); `CLOUDY_RAUC` names
    /// another `rauc` binary.
    pub fn find(sys: &System) -> Option<Rauc> {
        let conf = sys.path(SYSTEM_CONF);
        conf.exists().then(|| Rauc {
            exe: crate::os::files::exe("CLOUDY_RAUC", "rauc"),
            conf,
        })
    }

    async fn run(&self, what: &str, args: &[&str]) -> Result<String, RaucError> {
        let out = tokio::process::Command::new(&self.exe)
            .arg(format!("--conf={}", self.conf.display()))
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| RaucError::Spawn {
                exe: self.exe.display().to_string(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // `rauc install` may print "failed" and still exit 0 (RAUC 1.8 over D-Bus): both count.
        let failed = !out.status.success()
            || stdout.contains("` failed")
            || stderr.contains("` failed")
            || stdout.lines().any(|l| l.starts_with("LastError:"));
        if failed {
            let message: Vec<&str> = stdout
                .lines()
                .chain(stderr.lines())
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("rauc-Message"))
                .collect();
            let n = message.len();
            return Err(RaucError::Failed {
                what: what.into(),
                message: message[n.saturating_sub(4)..].join(" / "),
            });
        }
        Ok(stdout)
    }

    /// Installs a bundle into the other slot and makes it the bootloader's next choice.
    pub async fn install(&self, bundle: &std::path::Path) -> Result<(), RaucError> {
        let b = bundle.to_string_lossy();
        self.run("install", &["install", &b]).await.map(|_| ())
    }

    pub async fn mark_good(&self) -> Result<(), RaucError> {
        self.run("status mark-good", &["status", "mark-good", "booted"])
            .await
            .map(|_| ())
    }

    pub async fn status(&self) -> Result<Status, RaucError> {
        let out = self
            .run("status", &["status", "--output-format=json"])
            .await?;
        // RAUC prints its warnings on stderr; stdout is the JSON line.
        let line = out.lines().find(|l| l.starts_with('{')).unwrap_or("");
        serde_json::from_str(line).map_err(|e| RaucError::Status(e.to_string()))
    }
}
