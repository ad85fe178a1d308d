//! `[tinc]`: the community VPN.

use serde::Deserialize;

use super::invalid::{invalid, Invalid};
use crate::names::{check_netname, parse_cidr};

/// Tinc's registered port, as the original Cloudy used.
pub const DEFAULT_TINC_PORT: u16 = 655;
pub const DEFAULT_NETNAME: &str = "cloudy";
pub const DEFAULT_VPN_SUBNET: &str = "10.99.0.0/16";

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TincMode {
    /// One virtual layer 2 for the whole community, so mDNS crosses the VPN.
    #[default]
    Switch,
    Router,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tinc {
    pub netname: Option<String>,
    pub port: Option<u16>,
    pub mode: Option<TincMode>,
    /// IPv4 range VPN addresses are chosen from, e.g. `10.99.0.0/16`.
    pub subnet: Option<String>,
}

impl Tinc {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(n) = &self.netname {
            check_netname(n).map_err(|p| {
                invalid("tinc.netname", p, "use 1-15 lowercase letters, digits, '_'")
            })?;
        }
        if self.port == Some(0) {
            return Err(invalid(
                "tinc.port",
                "0 is not a port".into(),
                "leave it out for 655",
            ));
        }
        if let Some(s) = &self.subnet {
            match parse_cidr(s) {
                Ok((std::net::IpAddr::V4(_), p)) if (8..=30).contains(&p) => {}
                Ok(_) => {
                    return Err(invalid(
                        "tinc.subnet",
                        format!("{s:?} is not an IPv4 range of /8 to /30"),
                        "e.g. \"10.99.0.0/16\"",
                    ))
                }
                Err(p) => return Err(invalid("tinc.subnet", p, "e.g. \"10.99.0.0/16\"")),
            }
        }
        Ok(())
    }
}
