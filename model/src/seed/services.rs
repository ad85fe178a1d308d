//! `[services]`: the services this node runs (`enable`, kinds from the kinds table) and the
//! ones something else runs that it only announces (`[[services.publish]]`).

use serde::Deserialize;
use std::collections::BTreeMap;

use super::invalid::{invalid, Invalid};
use crate::kinds;
use crate::record::{check_service, MAX_PER_NODE};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Services {
    /// Kind names; any other name of a kind (`tahoe-lafs`) is read as the kind's own.
    #[serde(default, deserialize_with = "kind_names")]
    pub enable: Vec<String>,
    /// Services run by something else on this node that the agent only announces (until the
    /// agent runs them itself): published while something listens on the port.
    #[serde(default)]
    pub publish: Vec<Publish>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    #[serde(rename = "type")]
    pub kind: String,
    pub port: u16,
    #[serde(default)]
    pub description: String,
    /// Typed fields of the service kind (e.g. `device_id` for syncthing).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

/// The kind's own name for each name a user may give it; unknown names are kept for
/// `validate` to report.
fn kind_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    Ok(names
        .iter()
        .map(|n| kinds::canonical(n).to_string())
        .collect())
}

impl Services {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(x) = self
            .enable
            .iter()
            .find(|x| !kinds::find(x).is_some_and(|k| k.enable))
        {
            return Err(invalid(
                "services.enable",
                format!("unknown service {x:?}"),
                format!("choose from {}", kinds::enableable_list()),
            ));
        }
        if self.publish.len() > MAX_PER_NODE {
            return Err(invalid(
                "services.publish",
                format!("{} services", self.publish.len()),
                "publish at most 64",
            ));
        }
        for p in &self.publish {
            // The same checks a record from the network gets.
            if let Err(e) = check_service(&p.kind, &p.description, p.port, &p.fields) {
                return Err(invalid(
                    "services.publish",
                    format!("{} port {}: {e}", p.kind, p.port),
                    "use a type of [a-z0-9-], a port 1-65535, a description of at most 160 characters, and only the fields of that type",
                ));
            }
        }
        Ok(())
    }
}
