//! The seed's `[wifi]` made real: wpa_supplicant@IFACE (Debian's unit) joins the network with a
//! config the agent renders at every boot, and systemd-networkd asks for an address by DHCP on
//! every `wl*` link (the image's 80-cloudy-wireless.network). The passphrase is a secret like
//! the community key: stored 0600 under /var/lib/cloudy so it may leave the boot medium, never
//! in an error or a log line.
//!
//! A real radio cannot be tested on the build machine: the tests stop at the rendered file.

use serde::Serialize;
use std::fmt::Write as _;

use crate::os::files::{self, FileError};
use crate::os::system::System;
use cloudy_model::seed::Wifi;

/// The seed's `[wifi]` as last given with its passphrase, for the boots after the scrub.
pub const STORED: &str = "/var/lib/cloudy/wifi.json";

const TEMPLATE: &str = include_str!("templates/wpa_supplicant.conf");

#[derive(Debug, thiserror::Error)]
pub enum WifiError {
    // Never the value: a problem names the key (see `Wifi::validate`).
    #[error("key `{key}`: {problem}; fix: {fix}")]
    Invalid {
        key: String,
        problem: String,
        fix: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Render(#[from] FileError),
    #[error("starting {unit}: {problem}")]
    Start { unit: String, problem: String },
}

/// wpa_supplicant's config file for `iface` (what `wpa_supplicant@IFACE.service` reads).
pub fn conf_path(iface: &str) -> String {
    format!("/etc/wpa_supplicant/wpa_supplicant-{iface}.conf")
}

pub fn unit(iface: &str) -> String {
    format!("wpa_supplicant@{iface}.service")
}

#[derive(Serialize)]
struct Ctx {
    country: String,
    ssid_hex: String,
    scan_ssid: u8,
    key: String,
}

/// The config for `w`. Every value is checked again here (a stored copy is read back too), and
/// the SSID is written as hex, wpa_supplicant's unquoted form: whatever bytes a network's name
/// holds, they cannot close a string or start a directive. The passphrase is 8-63 printable
/// ASCII characters (no newline): wpa_supplicant takes it up to the line's last `"`.
pub fn render(w: &Wifi) -> Result<String, WifiError> {
    w.validate().map_err(|i| WifiError::Invalid {
        key: i.key.into(),
        problem: i.problem,
        fix: i.fix,
    })?;
    let mut ssid_hex = String::new();
    for b in w.ssid.bytes() {
        let _ = write!(ssid_hex, "{b:02x}");
    }
    let key = match (&w.psk, &w.psk_hash) {
        (Some(p), _) => format!("key_mgmt=WPA-PSK\n\tpsk=\"{p}\""),
        (None, Some(h)) => format!("key_mgmt=WPA-PSK\n\tpsk={}", h.to_ascii_lowercase()),
        (None, None) => "key_mgmt=NONE".into(),
    };
    let ctx = Ctx {
        country: w.country.clone(),
        ssid_hex,
        scan_ssid: u8::from(w.hidden),
        key,
    };
    Ok(files::render("wpa_supplicant.conf", TEMPLATE, &ctx)?)
}

/// The Wi-Fi to join: the seed's, with its passphrase stored for later boots; once the scrub
/// took the passphrase off the medium, the seed's `[wifi]` with the stored one (same SSID only).
pub fn settle(sys: &System, from_seed: Option<&Wifi>) -> Result<Option<Wifi>, WifiError> {
    let Some(seed) = from_seed else {
        return Ok(None);
    };
    let path = sys.path(STORED);
    let io = |source| WifiError::Io {
        path: path.display().to_string(),
        source,
    };
    if seed.psk.is_some() || seed.psk_hash.is_some() {
        let json = serde_json::to_vec(seed).expect("a Wifi serialises");
        if std::fs::read(&path).ok().as_deref() != Some(json.as_slice()) {
            sys.write_atomic(STORED, &json, 0o600).map_err(io)?;
        }
        return Ok(Some(seed.clone()));
    }
    let stored = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice::<Wifi>(&b).ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    Ok(Some(match stored {
        Some(s) if s.ssid == seed.ssid => Wifi {
            psk: s.psk,
            psk_hash: s.psk_hash,
            ..seed.clone()
        },
        // A seed without a passphrase for a network never stored: an open network.
        _ => seed.clone(),
    }))
}

/// The stored passphrase or hashed key, for the boot medium's check (`secrets`).
pub fn stored_secrets(sys: &System) -> Vec<String> {
    std::fs::read(sys.path(STORED))
        .ok()
        .and_then(|b| serde_json::from_slice::<Wifi>(&b).ok())
        .map(|w| w.psk.into_iter().chain(w.psk_hash).collect())
        .unwrap_or_default()
}

/// [`settle`] then [`configure`]: the seed's `[wifi]` applied. Returns the interface, or None
/// without `[wifi]`.
pub fn apply(sys: &System, from_seed: Option<&Wifi>) -> Result<Option<String>, WifiError> {
    match settle(sys, from_seed)? {
        Some(w) => configure(sys, &w).map(Some),
        None => Ok(None),
    }
}

/// Renders and writes the config (0600, root's), and on a live node (re)starts
/// wpa_supplicant@IFACE so it reads it. Returns the interface.
pub fn configure(sys: &System, w: &Wifi) -> Result<String, WifiError> {
    let iface = w.interface().to_string();
    let conf = conf_path(&iface);
    let text = render(w)?;
    let path = sys.path(&conf);
    let changed = std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str());
    if changed {
        sys.write_atomic(&conf, text.as_bytes(), 0o600)
            .map_err(|source| WifiError::Io {
                path: path.display().to_string(),
                source,
            })?;
    }
    if sys.is_live() {
        // --no-block: the unit waits for the link's device, which must not hold up the boot.
        let verb = if changed { "restart" } else { "start" };
        let unit = unit(&iface);
        let out = std::process::Command::new("systemctl")
            .args(["--no-block", verb, &unit])
            .output()
            .map_err(|e| WifiError::Start {
                unit: unit.clone(),
                problem: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(WifiError::Start {
                unit,
                problem: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
    }
    tracing::info!("wifi: {conf} configured for {iface}");
    Ok(iface)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: &str = "correct horse battery";

    fn wifi() -> Wifi {
        Wifi {
            ssid: "Casa".into(),
            psk: Some(PASS.into()),
            psk_hash: None,
            country: "ES".into(),
            hidden: false,
            interface: None,
        }
    }

    #[test]
    fn renders_a_network_block() {
        let t = render(&Wifi {
            hidden: true,
            ..wifi()
        })
        .unwrap();
        assert!(t.contains("\ncountry=ES\n"), "{t}");
        assert!(t.contains("\n\tssid=43617361\n"), "{t}");
        assert!(t.contains("\n\tscan_ssid=1\n"), "{t}");
        assert!(t.contains("\n\tpsk=\"correct horse battery\"\n"), "{t}");
        assert!(t.contains("network={\n") && t.ends_with("}\n"), "{t}");
        let h = "AB".repeat(32);
        let t = render(&Wifi {
            psk: None,
            psk_hash: Some(h.clone()),
            ..wifi()
        })
        .unwrap();
        assert!(
            t.contains(&format!("\n\tpsk={}\n", h.to_lowercase())),
            "{t}"
        );
        let t = render(&Wifi {
            psk: None,
            ..wifi()
        })
        .unwrap();
        assert!(t.contains("key_mgmt=NONE") && !t.contains("psk"), "{t}");
    }

    /// Issue 18: a network's name is the user's (or a neighbour's) text. Quotes, `}` and `#`
    /// are written as hex and cannot start a directive; a newline is refused.
    #[test]
    fn a_hostile_ssid_cannot_inject_a_directive() {
        let hostile = "x\"\nkey_mgmt=NONE\n}";
        let e = render(&Wifi {
            ssid: hostile.into(),
            ..wifi()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("wifi.ssid") && e.contains("control character"),
            "{e}"
        );
        let quoted = "a\" } network={ ssid=\"evil # x";
        let t = render(&Wifi {
            ssid: quoted.into(),
            ..wifi()
        })
        .unwrap();
        assert!(!t.contains("evil"), "{t}");
        assert_eq!(t.matches("network=").count(), 1, "{t}");
        assert_eq!(t.matches("ssid=").count(), 2, "ssid= and scan_ssid=: {t}");
        let hex: String = quoted.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(t.contains(&format!("\tssid={hex}\n")), "{t}");
        // Nor through the passphrase or the country.
        for bad in [
            Wifi {
                psk: Some("pass\"\nkey_mgmt=NONE".into()),
                ..wifi()
            },
            Wifi {
                country: "E\n".into(),
                ..wifi()
            },
        ] {
            let e = render(&bad).unwrap_err().to_string();
            assert!(!e.contains("key_mgmt=NONE") && !e.contains("pass\""), "{e}");
        }
    }

    #[test]
    fn written_private_and_the_passphrase_kept_for_the_scrubbed_seed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        assert_eq!(apply(&sys, None).unwrap(), None);
        assert_eq!(
            apply(&sys, Some(&wifi())).unwrap().as_deref(),
            Some("wlan0")
        );
        let conf = sys.path("/etc/wpa_supplicant/wpa_supplicant-wlan0.conf");
        for p in [conf.clone(), sys.path(STORED)] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        assert_eq!(stored_secrets(&sys), [PASS]);
        // The next boot's seed, scrubbed: the same network, no passphrase.
        let scrubbed = Wifi {
            psk: None,
            ..wifi()
        };
        let w = settle(&sys, Some(&scrubbed)).unwrap().unwrap();
        assert_eq!(w.psk.as_deref(), Some(PASS));
        let before = std::fs::read_to_string(&conf).unwrap();
        apply(&sys, Some(&scrubbed)).unwrap();
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), before);
        // Another network without a passphrase is an open one, never given this one's.
        let other = Wifi {
            ssid: "Cafe".into(),
            psk: None,
            ..wifi()
        };
        assert_eq!(settle(&sys, Some(&other)).unwrap().unwrap().psk, None);
    }
}
