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
    /// An invitation token (`cloudy-agent invite`) in place of the key: at boot the node
    /// redeems it at the inviting member for the community key, keeps the key like a seed's,
    /// and the token is removed from the medium. A secret: never echoed in an error.
    pub invite: Option<String>,
}

/// What a single-use invitation token starts with (`cloudy1:SECRET@HOST:PORT,...`).
pub const INVITE_PREFIX: &str = "cloudy1:";
/// What a token several nodes may use starts with: it says so, so a tool can refuse to put it
/// where a whole LAN reads it (the inviter enforces the count either way).
pub const INVITE_MANY_PREFIX: &str = "cloudy1m:";

impl Community {
    /// What a medium served to a whole LAN (a PXE bundle) must not carry: the key, or an
    /// invitation more than one node may use. A single-use invitation is spent by the first
    /// node that boots, so whoever else fetches it holds nothing. None, or why not.
    pub fn lan_secret(&self) -> Option<&'static str> {
        if self.key.is_some() {
            Some("the community key (`[community] key`)")
        } else if self
            .invite
            .as_deref()
            .is_some_and(|t| !t.starts_with(INVITE_PREFIX))
        {
            Some("an invitation several nodes may use (`[community] invite`, made with --uses above 1)")
        } else {
            None
        }
    }
}

impl Community {
    /// What is valid but maybe not what the user meant: a `[community]` without a key or an
    /// invitation joins only once a member approves the node (it waits as pending), unless an
    /// earlier seed's key is already kept on the node. `seed check` and `customise` print these; the seed is still accepted.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.key.is_none() && self.invite.is_none() {
            w.push(format!(
                "key `community.key`: [community] {:?} has no key, so a new node does not join by itself: it waits as a pending node, showing its key's fingerprint on its console, until a member approves it (`cloudy-agent approve FINGERPRINT`); only a node that kept the key of an earlier seed joins at once; fix: to join without an approval add key = \"...\" with the community's shared key (at least {MIN_COMMUNITY_KEY} characters; a new community: `openssl rand -base64 24`) or an invitation (invite = \"...\")",
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
        if let Some(t) = &self.invite {
            // The token's shape only; its text is never repeated (it is a secret).
            let shape = t
                .strip_prefix(INVITE_PREFIX)
                .or_else(|| t.strip_prefix(INVITE_MANY_PREFIX))
                .and_then(|r| r.split_once('@'));
            let ok = shape.is_some_and(|(secret, addrs)| {
                secret.len() == 22
                    && secret
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    && addrs.split(',').all(|a| check_endpoint(a).is_ok())
            });
            if !ok {
                return Err(invalid(
                    "community.invite",
                    "not an invitation token".into(),
                    "paste the whole token `cloudy-agent invite` printed on a member: cloudy1:...@host:port",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_invite(t: &str) -> Community {
        Community {
            name: "lab".into(),
            invite: Some(t.into()),
            ..Default::default()
        }
    }

    #[test]
    fn an_invitation_is_checked_without_being_echoed() {
        let good = "cloudy1:AAAAAAAAAAAAAAAAAAAAAA@10.0.0.1:6655";
        assert!(with_invite(good).validate().is_ok());
        assert!(with_invite(good).warnings().is_empty());
        assert_eq!(with_invite(good).lan_secret(), None);
        let many = "cloudy1m:AAAAAAAAAAAAAAAAAAAAAA@10.0.0.1:6655";
        assert!(with_invite(many).validate().is_ok());
        assert!(with_invite(many).lan_secret().is_some());
        let bad = "cloudy1:SECRETSECRETSECRET@nowhere";
        let e = format!("{:?}", with_invite(bad).validate().unwrap_err());
        assert!(!e.contains("SECRETSECRET"), "{e}");
        let keyed = Community {
            name: "lab".into(),
            key: Some("0123456789abcdef".into()),
            ..Default::default()
        };
        assert!(keyed.lan_secret().unwrap().contains("key"));
    }
}
