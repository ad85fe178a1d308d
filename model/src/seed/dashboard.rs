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
    /// HTTPS port of the local services' own web UIs (`/ui/<service>/`; default the port
    /// after `https_port`), same certificate and login: another origin than the dashboard, so
    /// a script in a proxied UI cannot read the dashboard's answers.
    pub ui_port: Option<u16>,
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
        if self.ui_port() == 0 {
            return Err(invalid(
                "dashboard.ui_port",
                "0 is not a port (nor is https_port 65535 + 1)".into(),
                "leave it out for https_port + 1, or name a port",
            ));
        }
        let ui = self.ui_port();
        if ui == http || ui == self.https_port() {
            return Err(invalid(
                "dashboard.ui_port",
                format!("{ui} is also the dashboard's plain-HTTP or HTTPS port"),
                "give [dashboard] ui_port a port of its own (the UIs need their own origin)",
            ));
        }
        Ok(())
    }

    pub fn https_port(&self) -> u16 {
        self.https_port.unwrap_or(DEFAULT_DASHBOARD_HTTPS_PORT)
    }

    /// `ui_port`, else the port after `https_port` (8444 by default; 0 for 65535, which
    /// validation refuses).
    pub fn ui_port(&self) -> u16 {
        self.ui_port
            .unwrap_or_else(|| self.https_port().wrapping_add(1))
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
            ui_port: None,
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

    #[test]
    fn ui_port_is_a_port_of_its_own() {
        let d = |port, https_port, ui_port| Dashboard {
            password_hash: None,
            port,
            https_port,
            ui_port,
        };
        assert_eq!(d(None, None, None).ui_port(), 8444);
        assert_eq!(d(None, Some(443), None).ui_port(), 444);
        assert!(d(None, None, Some(9443)).validate().is_ok());
        for (port, https, ui) in [
            (None, None, Some(0)),
            (None, None, Some(8443)),
            (None, None, Some(8080)),
            (None, Some(9000), Some(9000)),
            (None, Some(65535), None),
            (Some(8444), None, None),
        ] {
            assert_eq!(
                d(port, https, ui).validate().unwrap_err().key,
                "dashboard.ui_port",
                "{port:?} {https:?} {ui:?}"
            );
        }
    }
}
