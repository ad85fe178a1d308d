//! `[dashboard]`: the node's web UI.

use serde::Deserialize;

use super::invalid::{invalid, Invalid};
use crate::names::is_password_hash;

/// The dashboard's port when the seed names none.
pub const DEFAULT_DASHBOARD_PORT: u16 = 8080;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Dashboard {
    /// Argon2 PHC string (`cloudy-agent seed hash-password`, or Debian's `argon2` tool with
    /// `-id -e`); moved into /var/lib/cloudy like the key. Without it a password is generated
    /// on first boot and shown once on the console.
    pub password_hash: Option<String>,
    /// TCP port of the dashboard on the node's addresses (default 8080).
    pub port: Option<u16>,
}

impl Dashboard {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(h) = &self.password_hash {
            if !is_password_hash(h) {
                return Err(invalid(
                    "dashboard.password_hash",
                    "not an Argon2 PHC hash (a plain password is never accepted)".into(),
                    "paste the output of `cloudy-agent seed hash-password` (or `argon2 SALT -id -e`)",
                ));
            }
        }
        if self.port == Some(0) {
            return Err(invalid(
                "dashboard.port",
                "0 is not a port".into(),
                "leave it out for 8080",
            ));
        }
        Ok(())
    }
}
