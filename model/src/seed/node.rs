//! `[node]`: the node itself.

use serde::Deserialize;

use super::invalid::{invalid, Invalid, NAME_FIX};
use crate::info::{check_text, coordinates};
use crate::names::check_hostname;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Hostname of the node; also its name in the community.
    pub name: Option<String>,
    /// Where the node is, for the Community map: "LAT,LON" in degrees (placed on the map) or
    /// free text (shown on its page).
    pub location: Option<String>,
    /// Who looks after the node (a name, an address), shown to members.
    pub contact: Option<String>,
}

impl Node {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(name) = &self.name {
            check_hostname(name).map_err(|p| invalid("node.name", p, NAME_FIX))?;
        }
        for (key, v) in [
            ("node.location", &self.location),
            ("node.contact", &self.contact),
        ] {
            if let Some(v) = v {
                check_text(v).map_err(|p| invalid(key, p, TEXT_FIX))?;
            }
        }
        if let Some(l) = &self.location {
            let numbers = l.split_once(',').is_some_and(|(a, b)| {
                a.trim().parse::<f64>().is_ok() && b.trim().parse::<f64>().is_ok()
            });
            if numbers && coordinates(l).is_none() {
                return Err(invalid(
                    "node.location",
                    format!("{l:?} is not a place on earth"),
                    "write \"LAT,LON\" in degrees, latitude -90..90 and longitude -180..180, e.g. \"52.52,13.40\"",
                ));
            }
        }
        Ok(())
    }
}

const TEXT_FIX: &str = "use at most 128 characters on one line, without control characters";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_and_contact_are_checked() {
        let ok = Node {
            name: None,
            location: Some("52.52,13.40".into()),
            contact: Some("Ana <ana@example.org>".into()),
        };
        assert_eq!(ok.validate(), Ok(()));
        let text = Node {
            location: Some("Kitchen, 2nd floor".into()),
            ..ok.clone()
        };
        assert_eq!(text.validate(), Ok(()));
        for (bad, key) in [
            (
                Node {
                    location: Some("95,13".into()),
                    ..ok.clone()
                },
                "node.location",
            ),
            (
                Node {
                    contact: Some("a\u{1b}[2J".into()),
                    ..ok.clone()
                },
                "node.contact",
            ),
            (
                Node {
                    contact: Some("x".repeat(129)),
                    ..ok.clone()
                },
                "node.contact",
            ),
        ] {
            let e = bad.validate().unwrap_err();
            assert_eq!(e.key, key);
            assert!(!e.fix.is_empty());
        }
    }
}
