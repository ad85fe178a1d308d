//! The node's front, what a person reaches it by: the dashboard's ports and certificate and
//! the login screen's lines. Started once, by setup mode or by the node in its community.

use cloudy_model::seed::Seed;

use crate::os::certificate::{self, Certificate, Origin};
use crate::os::identity;
use crate::os::system::System;

/// The login screen's line on the seed.
pub(super) fn seed_line(seed_errors: &[String]) -> String {
    match seed_errors.len() {
        0 => "seed: applied".to_string(),
        n => format!("seed: {n} problem(s), the rest applied: see cloudy-agent status"),
    }
}

/// The dashboard's ports, as the seed sets them.
pub(super) fn ports(seed: &Seed) -> crate::dashboard::Ports {
    crate::dashboard::Ports {
        http: seed.dashboard_port(),
        https: seed.dashboard_https_port(),
        ui: seed.dashboard_ui_port(),
    }
}

/// The dashboard's certificate, made on first boot for the names and addresses known now, and
/// its fingerprint shown on the console every boot (it is public; the operator compares it with
/// what the browser shows). A damaged one is an error for the console and the dashboard's HTTP
/// port, and is left for the operator: the rest of the node runs on.
pub(super) fn dashboard_certificate(
    sys: &System,
    names: &[String],
    https_port: u16,
) -> Result<Certificate, String> {
    let (certificate, shown) = match certificate::ensure(sys, names) {
        Ok((c, origin)) => {
            let made = match origin {
                Origin::Made => "made on this boot",
                Origin::Kept => "kept",
            };
            let line = format!(
                "cloudy: dashboard https://{}:{https_port}/ certificate SHA-256 {} ({made})",
                names[0], c.fingerprint
            );
            tracing::info!("{}", line.trim_start_matches("cloudy: "));
            (Ok(c), line)
        }
        Err(e) => {
            tracing::error!("dashboard certificate: {e}");
            let line = format!("cloudy: dashboard OFF: no usable HTTPS certificate: {e}");
            (Err(e.to_string()), line)
        }
    };
    // The console's operator must see it whatever the log level; stdout reaches the journal.
    if let Some(console) = identity::console_path(sys) {
        let _ = identity::show_on_console(&console, &format!("\n{shown}\n\n"));
    }
    println!("{shown}");
    certificate
}
