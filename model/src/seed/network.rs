//! `[network]`: how the node reaches its LAN when the default route's interface and DHCP are
//! not what the user wants.

use serde::Deserialize;

use super::invalid::{invalid, Invalid};
use crate::names::{check_ifname, parse_cidr};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Force the primary interface (e.g. `wlan0`) instead of the default route's.
    pub interface: Option<String>,
    /// Static IPv4 or IPv6 address with prefix, e.g. `192.168.1.20/24`.
    pub address: Option<String>,
    /// Default gateway for the static address.
    pub gateway: Option<String>,
}

impl Network {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(i) = &self.interface {
            check_ifname(i).map_err(|p| {
                invalid(
                    "network.interface",
                    p,
                    "name an interface like eth0 or wlan0",
                )
            })?;
        }
        if let Some(a) = &self.address {
            parse_cidr(a).map_err(|p| {
                invalid(
                    "network.address",
                    p,
                    "write address/prefix, e.g. \"192.168.1.20/24\"",
                )
            })?;
        }
        if let Some(g) = &self.gateway {
            g.parse::<std::net::IpAddr>().map_err(|e| {
                invalid(
                    "network.gateway",
                    format!("{g:?}: {e}"),
                    "write an IP address",
                )
            })?;
            if self.address.is_none() {
                return Err(invalid(
                    "network.gateway",
                    "set without network.address".into(),
                    "add network.address or remove the gateway",
                ));
            }
        }
        Ok(())
    }
}
