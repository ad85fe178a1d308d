//! `[update]`: how this node takes signed updates (A/B slots through RAUC): where it looks for
//! them besides its members, which channel it follows, the window of days over which the
//! community's nodes spread their installs, the hour a node may reboot, and the bandwidth it
//! gives members that fetch an update from it. Every key is optional; without the section a
//! node still takes updates its members serve (when the image carries update keys).

use serde::Deserialize;

use super::invalid::{invalid, Invalid};
use crate::update::Channel;

pub const DEFAULT_WINDOW_DAYS: u32 = 3;
pub const DEFAULT_QUIET_HOUR: u8 = 4;
/// 1 MiB/s: a bundle of a few hundred MB reaches a member in minutes without filling a
/// community link.
pub const DEFAULT_MAX_RATE_KIB: u32 = 1024;
const MAX_WINDOW_DAYS: u32 = 60;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Update {
    /// An HTTP directory holding `<board>.manifest.json` and the bundles it names.
    pub url: Option<String>,
    /// `stable` (default) or `testing` (takes stable releases too).
    pub channel: Option<Channel>,
    /// Days over which the community's nodes spread an update, each at its own random point.
    pub window_days: Option<u32>,
    /// The local hour (0-23) at which a node reboots into an installed update.
    pub quiet_hour: Option<u8>,
    /// false: the node fetches and reports updates but installs only on `cloudy-agent update now`.
    pub auto: Option<bool>,
    /// KiB/s the node gives all members fetching a bundle from it together.
    pub max_rate_kib: Option<u32>,
}

impl Update {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(u) = &self.url {
            if let Err(p) = check_url(u) {
                return Err(invalid(
                    "update.url",
                    p,
                    "write an http:// directory, e.g. \"http://updates.example.org/cloudy/\"",
                ));
            }
        }
        if self.window_days.is_some_and(|d| d > MAX_WINDOW_DAYS) {
            return Err(invalid(
                "update.window_days",
                format!("more than {MAX_WINDOW_DAYS} days"),
                format!("use 0 (at once) to {MAX_WINDOW_DAYS}; default {DEFAULT_WINDOW_DAYS}"),
            ));
        }
        if self.quiet_hour.is_some_and(|h| h > 23) {
            return Err(invalid(
                "update.quiet_hour",
                "not an hour of the day".into(),
                format!("use 0 to 23 (local time); default {DEFAULT_QUIET_HOUR}"),
            ));
        }
        if self
            .max_rate_kib
            .is_some_and(|r| !(8..=1 << 20).contains(&r))
        {
            return Err(invalid(
                "update.max_rate_kib",
                "outside 8 KiB/s to 1 GiB/s".into(),
                format!("use 8 to 1048576; default {DEFAULT_MAX_RATE_KIB}"),
            ));
        }
        Ok(())
    }

    pub fn channel(&self) -> Channel {
        self.channel.unwrap_or_default()
    }

    pub fn window_days(&self) -> u32 {
        self.window_days.unwrap_or(DEFAULT_WINDOW_DAYS)
    }

    pub fn quiet_hour(&self) -> u8 {
        self.quiet_hour.unwrap_or(DEFAULT_QUIET_HOUR)
    }

    pub fn auto(&self) -> bool {
        self.auto.unwrap_or(true)
    }

    pub fn max_rate_kib(&self) -> u32 {
        self.max_rate_kib.unwrap_or(DEFAULT_MAX_RATE_KIB)
    }
}

/// A plain `http://host[:port][/path]` URL: the manifests are signed, so the transport needs no
/// TLS, and the agent's one HTTP client speaks plain HTTP.
fn check_url(u: &str) -> Result<(), String> {
    let shown = u.chars().take(60).collect::<String>();
    let Some(rest) = u.strip_prefix("http://") else {
        return Err(format!("{shown:?} does not start with http://"));
    };
    if u.len() > 512 || u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{shown:?} is too long or has spaces"));
    }
    let host = rest.split('/').next().unwrap_or("");
    let name = match host.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || host.starts_with('[') => {
            if p.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(format!("{shown:?}: port {p:?} is not 1-65535"));
            }
            h
        }
        _ => host,
    };
    if name.is_empty() || name.contains(['@', '?', '#']) {
        return Err(format!("{shown:?} names no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::seed::Seed;
    use crate::update::Channel;

    fn parse(text: &str) -> Result<Seed, String> {
        Seed::parse("cloudy.toml", &format!("version = 1\n{text}")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_a_full_section() {
        let u = parse("[update]\n").unwrap().update.unwrap();
        assert_eq!(u.channel(), Channel::Stable);
        assert_eq!((u.window_days(), u.quiet_hour(), u.auto()), (3, 4, true));
        assert_eq!(u.max_rate_kib(), 1024);
        let u = parse(
            "[update]\nurl = \"http://10.0.0.1:8000/cloudy/\"\nchannel = \"testing\"\nwindow_days = 0\nquiet_hour = 23\nauto = false\nmax_rate_kib = 64\n",
        )
        .unwrap()
        .update
        .unwrap();
        assert_eq!(u.channel(), Channel::Testing);
        assert_eq!((u.window_days(), u.quiet_hour(), u.auto()), (0, 23, false));
        assert_eq!(u.max_rate_kib(), 64);
    }

    #[test]
    fn bad_values_name_the_key_and_the_fix() {
        for (text, key) in [
            ("url = \"ftp://x/\"", "update.url"),
            ("url = \"https://x/\"", "update.url"),
            ("url = \"http:///x\"", "update.url"),
            ("url = \"http://x:0/\"", "update.url"),
            ("url = \"http://a b/\"", "update.url"),
            ("window_days = 61", "update.window_days"),
            ("quiet_hour = 24", "update.quiet_hour"),
            ("max_rate_kib = 1", "update.max_rate_kib"),
        ] {
            let e = parse(&format!("[update]\n{text}\n")).unwrap_err();
            assert!(e.contains(key) && e.contains("fix:"), "{text}: {e}");
        }
        for text in ["channel = \"nightly\"", "mirror = \"x\""] {
            assert!(parse(&format!("[update]\n{text}\n")).is_err(), "{text}");
        }
    }
}
