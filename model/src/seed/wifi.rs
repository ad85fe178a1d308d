//! `[wifi]`: the wireless network a node without Ethernet (a Pi 3 A+) or away from a cable joins, through
//! wpa_supplicant under systemd-networkd. The passphrase is a secret like the community key:
//! never quoted in an error, moved off the boot medium once stored.

use serde::{Deserialize, Serialize};

use super::invalid::{invalid, Invalid};
use crate::names::check_ifname;

/// The interface wpa_supplicant@ drives unless the seed names another.
pub const DEFAULT_WIFI_INTERFACE: &str = "wlan0";

#[derive(Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Wifi {
    /// The network's name, 1 to 32 bytes.
    pub ssid: String,
    /// The WPA passphrase (8 to 63 printable ASCII characters).
    pub psk: Option<String>,
    /// Or the 64-hex-digit key `wpa_passphrase SSID PASSPHRASE` prints (`psk=` line), so the
    /// passphrase itself never sits on the card.
    pub psk_hash: Option<String>,
    /// ISO 3166 alpha-2 country (e.g. `ES`): the regulatory domain, which channels and power
    /// the radio may use. Without it many drivers keep the radio off.
    pub country: String,
    /// The network does not broadcast its name: probe for it.
    #[serde(default)]
    pub hidden: bool,
    /// The wireless interface, `wlan0` unless the board names it otherwise.
    pub interface: Option<String>,
}

/// Without the passphrase: a `{:?}` in a log line must not carry it.
impl std::fmt::Debug for Wifi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |s: &Option<String>| s.as_ref().map(|_| "(secret)");
        f.debug_struct("Wifi")
            .field("ssid", &self.ssid)
            .field("psk", &hidden(&self.psk))
            .field("psk_hash", &hidden(&self.psk_hash))
            .field("country", &self.country)
            .field("hidden", &self.hidden)
            .field("interface", &self.interface)
            .finish()
    }
}

impl Wifi {
    pub fn interface(&self) -> &str {
        self.interface.as_deref().unwrap_or(DEFAULT_WIFI_INTERFACE)
    }

    /// Problems never quote `psk` or `psk_hash`: errors reach the console, the journal, the
    /// ready line, `status` and the dashboard.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.ssid.is_empty() || self.ssid.len() > 32 {
            return Err(invalid(
                "wifi.ssid",
                format!("is {} bytes long", self.ssid.len()),
                "write the network's name, 1 to 32 bytes",
            ));
        }
        // Control characters (a newline above all) have no place in a network's name a person
        // types, and would be one step from a directive in a config file.
        if self.ssid.chars().any(char::is_control) {
            return Err(invalid(
                "wifi.ssid",
                "holds a control character (a newline, tab, ...)".into(),
                "write the network's name as it shows on a phone",
            ));
        }
        match (&self.psk, &self.psk_hash) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "wifi.psk",
                    "set together with wifi.psk_hash".into(),
                    "keep one: psk (the passphrase) or psk_hash (what wpa_passphrase prints)",
                ))
            }
            (Some(p), None) => {
                let printable = p.bytes().all(|b| (0x20..=0x7e).contains(&b));
                if !(8..=63).contains(&p.len()) || !printable {
                    return Err(invalid(
                        "wifi.psk",
                        "is not a WPA passphrase (value not shown: it is a secret)".into(),
                        "write 8 to 63 printable ASCII characters, or set psk_hash to the 64 hex digits `wpa_passphrase` prints",
                    ));
                }
            }
            (None, Some(h)) => {
                if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid(
                        "wifi.psk_hash",
                        "is not 64 hex digits (value not shown: it is a secret)".into(),
                        "run `wpa_passphrase SSID` and copy the psk= line's 64 hex digits (not the #psk= one)",
                    ));
                }
            }
            (None, None) => {}
        }
        let c = self.country.as_bytes();
        if c.len() != 2 || !c.iter().all(u8::is_ascii_uppercase) {
            return Err(invalid(
                "wifi.country",
                format!("{:?} is not an ISO 3166 alpha-2 code", self.country),
                "write the two capital letters of the country the node is in, e.g. \"ES\", \"DE\", \"US\"",
            ));
        }
        if let Some(i) = &self.interface {
            check_ifname(i).map_err(|p| {
                invalid("wifi.interface", p, "name a wireless interface like wlan0")
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Wifi {
        Wifi {
            ssid: "Casa Nostra".into(),
            psk: Some("correct horse battery".into()),
            psk_hash: None,
            country: "ES".into(),
            hidden: false,
            interface: None,
        }
    }

    #[test]
    fn a_valid_wifi_passes() {
        ok().validate().unwrap();
        let hashed = Wifi {
            psk: None,
            psk_hash: Some("a".repeat(64)),
            hidden: true,
            ..ok()
        };
        hashed.validate().unwrap();
        let open = Wifi { psk: None, ..ok() };
        open.validate().unwrap();
        assert_eq!(ok().interface(), "wlan0");
        let debug = format!("{:?}", ok());
        assert!(
            !debug.contains("horse") && debug.contains("(secret)"),
            "{debug}"
        );
    }

    #[test]
    fn each_bad_field_is_named_with_a_fix_and_no_secret() {
        let cases = [
            (
                Wifi {
                    ssid: "".into(),
                    ..ok()
                },
                "wifi.ssid",
            ),
            (
                Wifi {
                    ssid: "x".repeat(33),
                    ..ok()
                },
                "wifi.ssid",
            ),
            (
                Wifi {
                    ssid: "home\nnetwork={".into(),
                    ..ok()
                },
                "wifi.ssid",
            ),
            (
                Wifi {
                    psk: Some("short77".into()),
                    ..ok()
                },
                "wifi.psk",
            ),
            (
                Wifi {
                    psk: Some("tab\tinside the passphrase".into()),
                    ..ok()
                },
                "wifi.psk",
            ),
            (
                Wifi {
                    psk_hash: Some("b".repeat(64)),
                    ..ok()
                },
                "wifi.psk",
            ),
            (
                Wifi {
                    psk: None,
                    psk_hash: Some("secret-not-hex".into()),
                    ..ok()
                },
                "wifi.psk_hash",
            ),
            (
                Wifi {
                    country: "Spain".into(),
                    ..ok()
                },
                "wifi.country",
            ),
            (
                Wifi {
                    country: "es".into(),
                    ..ok()
                },
                "wifi.country",
            ),
            (
                Wifi {
                    interface: Some("wlan0; rm".into()),
                    ..ok()
                },
                "wifi.interface",
            ),
        ];
        for (w, key) in cases {
            let e = w.validate().expect_err(key);
            assert_eq!(e.key, key, "{e:?}");
            assert!(!e.fix.is_empty());
            let shown = format!("{} {}", e.problem, e.fix);
            for secret in [w.psk.as_deref(), w.psk_hash.as_deref()]
                .into_iter()
                .flatten()
            {
                assert!(!shown.contains(secret), "{key}: {shown}");
            }
        }
    }
}
