//! `[community]`: the microcloud this node belongs to. Without it the node stays alone (no
//! VPN, no peers).

use serde::Deserialize;

use super::invalid::{invalid, Invalid, NAME_FIX};
use crate::names::{check_endpoint, check_hostname};

/// Port of the exchange service (member lists, records, scores and service requests, each
/// under the community key).
pub const DEFAULT_EXCHANGE_PORT: u16 = 6655;
/// Shorter keys are guessable by anyone who sees a boot partition over a shoulder.
pub const MIN_COMMUNITY_KEY: usize = 16;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Community {
    pub name: String,
    /// Shared secret of the community. Moved into /var/lib/cloudy on first boot and removed
    /// from the boot medium; a later seed may omit it.
    pub key: Option<String>,
    /// `host:port` of the exchange services of existing members, for members not on the same
    /// LAN.
    #[serde(default)]
    pub peers: Vec<String>,
    /// Port this node's exchange service listens on.
    pub port: Option<u16>,
}

impl Community {
    /// What is valid but probably not what the user meant: a `[community]` without a key
    /// joins nothing (the node stays alone) unless an earlier seed's key is already kept on
    /// the node. `seed check` and `customise` print these; the seed is still accepted.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.key.is_none() {
            w.push(format!(
                "key `community.key`: [community] {:?} has no key, so a new node stays alone (no VPN, no peers); only a node that kept the key of an earlier seed joins; fix: add key = \"...\" with the community's shared key (at least {MIN_COMMUNITY_KEY} characters; a new community: `openssl rand -base64 24`)",
                self.name
            ));
        }
        w
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        check_hostname(&self.name).map_err(|p| invalid("community.name", p, NAME_FIX))?;
        if let Some(key) = &self.key {
            if key.chars().count() < MIN_COMMUNITY_KEY {
                return Err(invalid(
                    "community.key",
                    format!("{} characters is too short", key.chars().count()),
                    "use at least 16 random characters, e.g. from `openssl rand -base64 24`",
                ));
            }
        }
        for p in &self.peers {
            check_endpoint(p).map_err(|e| {
                invalid(
                    "community.peers",
                    format!("{p:?}: {e}"),
                    "write each peer as \"host:port\", e.g. \"10.1.2.3:6655\"",
                )
            })?;
        }
        if self.port == Some(0) {
            return Err(invalid(
                "community.port",
                "0 is not a port".into(),
                "leave it out for 6655",
            ));
        }
        Ok(())
    }
}
