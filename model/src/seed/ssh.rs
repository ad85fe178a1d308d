//! `[ssh]`: keys that may log in as root.

use serde::Deserialize;

use super::invalid::{invalid, Invalid};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    #[serde(default)]
    pub authorized_keys: Vec<String>,
}

impl Ssh {
    pub fn validate(&self) -> Result<(), Invalid> {
        for k in &self.authorized_keys {
            let kind = k.split_whitespace().next().unwrap_or("");
            let ok =
                (kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
                    && k.split_whitespace().count() >= 2
                    && !k.contains('\n');
            if !ok {
                return Err(invalid(
                    "ssh.authorized_keys",
                    format!(
                        "{:?} is not a public key line",
                        k.chars().take(24).collect::<String>()
                    ),
                    "paste one line of ~/.ssh/id_ed25519.pub per key",
                ));
            }
        }
        Ok(())
    }
}
