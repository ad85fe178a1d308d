//! `[node]`: the node itself.

use serde::Deserialize;

use super::invalid::{invalid, Invalid, NAME_FIX};
use crate::names::check_hostname;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Hostname of the node; also its name in the community.
    pub name: Option<String>,
}

impl Node {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(name) = &self.name {
            check_hostname(name).map_err(|p| invalid("node.name", p, NAME_FIX))?;
        }
        Ok(())
    }
}
