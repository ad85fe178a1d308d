//! `[dashboard]`: the node's web UI.

use serde::Deserialize;

use super::invalid::{invalid, Invalid};
use crate::names::is_password_hash;

/// The dashboard's plain-HTTP port when the seed names none: it only redirects to HTTPS.
pub const DEFAULT_DASHBOARD_PORT: u16 = 8080;
/// The dashboard's HTTPS port when the seed names none.
pub const DEFAULT_DASHBOARD_HTTPS_PORT: u16 = 8443;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Dashboard {
    /// Argon2 PHC string (`cloudy-agent seed hash-password`, or Debian's `argon2` tool with
    /// `-id -e`); moved into /var/lib/cloudy like the key. Without it a password is generated
    /// on first boot and shown once on the console.
    pub password_hash: Option<String>,
    /// Plain-HTTP port on the node's addresses (default 8080): it answers only with a redirect
    /// to the HTTPS port, so nothing secret is ever sent on it.
    pub port: Option<u16>,
    /// HTTPS port of the dashboard on the node's addresses (default 8443), with the node's own
    /// certificate (pinned by its fingerprint, which the console and `status` show).
    pub https_port: Option<u16>,
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
        if self.https_port == Some(0) {
            return Err(invalid(
                "dashboard.https_port",
                "0 is not a port".into(),
                "leave it out for 8443",
            ));
        }
        let http = self.port.unwrap_or(DEFAULT_DASHBOARD_PORT);
        if self.https_port.unwrap_or(DEFAULT_DASHBOARD_HTTPS_PORT) == http {
            return Err(invalid(
                "dashboard.https_port",
                format!("{http} is also the plain-HTTP port"),
                "give [dashboard] port and https_port different values",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_port_is_a_port_of_its_own() {
        let d = |port, https_port| Dashboard {
            password_hash: None,
            port,
            https_port,
        };
        assert!(d(None, None).validate().is_ok());
        assert!(d(Some(80), Some(443)).validate().is_ok());
        assert_eq!(
            d(None, Some(0)).validate().unwrap_err().key,
            "dashboard.https_port"
        );
        for (port, https) in [(Some(8443), None), (None, Some(8080)), (Some(9), Some(9))] {
            assert_eq!(
                d(port, https).validate().unwrap_err().key,
                "dashboard.https_port",
                "{port:?} {https:?}: one port cannot be both"
            );
        }
    }
}
