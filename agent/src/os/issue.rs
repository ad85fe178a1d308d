//! The login screen: what a person at the node's screen needs to reach it (its name, addresses,
//! the dashboard's URL and certificate fingerprint, the seed's state), kept in
//! `/etc/issue.d/cloudy.issue`, which agetty shows above every login prompt.
//!
//! The agent rewrites the file whenever an address changes, because agetty reads it again for
//! each prompt but knows nothing of the dashboard. agetty's `\4` and `\6` escapes are not enough
//! alone: they show one address of one interface, not which port or certificate to expect.

use std::net::IpAddr;
use std::time::Duration;

use crate::os::network::Net;
use crate::os::system::System;

pub const ISSUE_FILE: &str = "/etc/issue.d/cloudy.issue";

/// What the screen shows besides the addresses, fixed for the agent's lifetime.
#[derive(Debug, Clone, PartialEq)]
pub struct Screen {
    pub name: String,
    pub https_port: u16,
    /// The dashboard certificate's SHA-256, or why the dashboard is off.
    pub certificate: Result<String, String>,
    /// One line on the seed: where it came from and how many of its sections were refused.
    pub seed: String,
    /// The node is in no community yet: its dashboard offers to create or join one.
    pub setup: bool,
}

/// What a node in setup mode says on its screen and in `cloudy-agent status`.
pub fn setup_line(name: &str, https_port: u16) -> String {
    format!(
        "setup mode: open https://{}.local:{https_port}/ to create or join a community",
        plain(name)
    )
}

/// agetty treats a backslash as the start of an escape: text from the seed must not carry one.
fn plain(s: &str) -> String {
    s.replace('\\', "/")
}

pub fn render(screen: &Screen, addresses: &[IpAddr]) -> String {
    render_with_state(screen, addresses, None)
}

/// The screen with the line on where state is kept (`os::storage`), which the agent records
/// at boot: on a live node without a data disk it warns that every boot is a new node.
pub fn render_with_state(screen: &Screen, addresses: &[IpAddr], state: Option<&str>) -> String {
    let mut out = format!("Cloudy node {}\n", plain(&screen.name));
    if addresses.is_empty() {
        out.push_str("  addresses: none yet (waiting for DHCP or the seed's [network])\n");
    } else {
        let list: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
        out.push_str(&format!("  addresses: {}\n", list.join(", ")));
    }
    match &screen.certificate {
        Ok(f) => {
            out.push_str(&format!(
                "  dashboard: https://{}.local:{}/\n",
                plain(&screen.name),
                screen.https_port
            ));
            if let Some(a) = addresses.iter().find(|a| a.is_ipv4()) {
                out.push_str(&format!(
                    "             https://{a}:{}/  (when .local names do not resolve)\n",
                    screen.https_port
                ));
            }
            out.push_str(&format!("  certificate SHA-256: {f}\n"));
        }
        // No URL for a dashboard that is not there.
        Err(e) => out.push_str(&format!("  dashboard OFF: {}\n", plain(e))),
    }
    if screen.setup && screen.certificate.is_ok() {
        out.push_str(&format!(
            "  {}\n",
            setup_line(&screen.name, screen.https_port)
        ));
    }
    out.push_str(&format!("  {}\n", plain(&screen.seed)));
    if let Some(st) = state {
        out.push_str(&format!("  {}\n", plain(st)));
    }
    out.push_str("  more: cloudy-agent status\n\n");
    out
}

/// Writes the screen when its text changed; true when it did.
pub fn write(sys: &System, screen: &Screen, addresses: &[IpAddr]) -> std::io::Result<bool> {
    let state = crate::os::storage::line(sys);
    let text = render_with_state(screen, addresses, Some(&state));
    if std::fs::read_to_string(sys.path(ISSUE_FILE))
        .ok()
        .as_deref()
        == Some(text.as_str())
    {
        return Ok(false);
    }
    sys.write_atomic(ISSUE_FILE, text.as_bytes(), 0o644)?;
    Ok(true)
}

/// Every address a person could reach the node on: loopback and IPv6 link-local ones (which need
/// a zone a browser will not take) are left out.
pub async fn addresses(net: &Net) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for (index, _) in net.links("").await.unwrap_or_default() {
        for (a, _) in net.addresses(index).await.unwrap_or_default() {
            let link_local = matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
            if !a.is_loopback() && !link_local && !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

/// Keeps the screen current while the agent runs. Polling every 2 s is as quick as a person
/// reading the screen needs, and costs one netlink dump.
pub async fn keep(sys: System, screen: Screen) {
    let net = match Net::connect() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("login screen: no netlink: {e}");
            return;
        }
    };
    loop {
        let addrs = addresses(&net).await;
        match write(&sys, &screen, &addrs) {
            Ok(true) => tracing::info!("login screen: addresses {addrs:?}"),
            Ok(false) => {}
            Err(e) => tracing::warn!("login screen: {ISSUE_FILE}: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn screen() -> Screen {
        Screen {
            name: "kitchen".into(),
            https_port: 8443,
            certificate: Ok("AB:CD".into()),
            seed: "seed: /run/live/medium/cloudy/cloudy.toml (applied)".into(),
            setup: false,
        }
    }

    /// Issue 15: a node in no community says on its screen where to set it up.
    #[test]
    fn a_node_in_setup_mode_says_where_to_set_it_up() {
        let mut s = screen();
        assert!(!render(&s, &[]).contains("setup mode"));
        s.setup = true;
        let text = render(&s, &["10.0.0.5".parse().unwrap()]);
        assert!(
            text.contains(
                "setup mode: open https://kitchen.local:8443/ to create or join a community"
            ),
            "{text}"
        );
    }

    /// Issue 18, defect 3: the old code wrote no login screen at all, so a person at the node
    /// saw neither its address nor the dashboard's URL. The file follows the addresses.
    #[test]
    fn the_screen_is_rewritten_when_the_address_changes() {
        let d = tempfile::tempdir().unwrap();
        let sys = System::new(d.path());
        let first: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap()];
        assert!(write(&sys, &screen(), &first).unwrap());
        let text = std::fs::read_to_string(sys.path(ISSUE_FILE)).unwrap();
        assert!(text.contains("Cloudy node kitchen"), "{text}");
        assert!(text.contains("addresses: 10.0.0.5"), "{text}");
        assert!(text.contains("https://kitchen.local:8443/"), "{text}");
        assert!(text.contains("https://10.0.0.5:8443/"), "{text}");
        assert!(text.contains("certificate SHA-256: AB:CD"), "{text}");
        assert!(text.contains("(applied)"), "{text}");
        // The same addresses again: nothing to rewrite.
        assert!(!write(&sys, &screen(), &first).unwrap());
        let second: Vec<IpAddr> = vec!["192.168.1.9".parse().unwrap(), "fd00::9".parse().unwrap()];
        assert!(write(&sys, &screen(), &second).unwrap());
        let text = std::fs::read_to_string(sys.path(ISSUE_FILE)).unwrap();
        assert!(text.contains("addresses: 192.168.1.9, fd00::9"), "{text}");
        assert!(!text.contains("10.0.0.5"), "{text}");
    }

    /// Issue 14: a live node without a data disk said nothing of losing its identity at the
    /// next boot; the screen says so, and where state is kept when it is.
    #[test]
    fn the_screen_says_whether_state_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let sys = System::new(d.path());
        let gone = crate::os::storage::State {
            kept: false,
            place: "RAM".into(),
            device: None,
            problem: None,
        };
        sys.write_atomic(
            crate::os::storage::STATE_FILE,
            &serde_json::to_vec(&gone).unwrap(),
            0o644,
        )
        .unwrap();
        write(&sys, &screen(), &[]).unwrap();
        let text = std::fs::read_to_string(sys.path(ISSUE_FILE)).unwrap();
        assert!(
            text.contains("state is not kept: every boot is a new node"),
            "{text}"
        );
        let kept = crate::os::storage::State {
            kept: true,
            place: "data disk /dev/vdb (label cloudy-data)".into(),
            device: Some("/dev/vdb".into()),
            problem: None,
        };
        sys.write_atomic(
            crate::os::storage::STATE_FILE,
            &serde_json::to_vec(&kept).unwrap(),
            0o644,
        )
        .unwrap();
        assert!(write(&sys, &screen(), &[]).unwrap());
        let text = std::fs::read_to_string(sys.path(ISSUE_FILE)).unwrap();
        assert!(
            text.contains("state is kept on data disk /dev/vdb"),
            "{text}"
        );
    }

    #[test]
    fn no_address_yet_and_no_escapes_from_the_seed() {
        let mut s = screen();
        s.name = "a\\4b".into();
        s.certificate = Err("damaged \\e".into());
        let text = render(&s, &[]);
        assert!(text.contains("none yet"), "{text}");
        assert!(!text.contains('\\'), "{text}");
        assert!(text.contains("dashboard OFF"), "{text}");
        assert!(
            !text.contains("https://"),
            "no URL for a dashboard that is off: {text}"
        );
    }
}
