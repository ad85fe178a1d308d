//! The service kinds this agent runs, a folder each. A kind implements `services::Service`,
//! knows nothing of the other kinds, and has a row in the kinds table
//! (`cloudy_model::kinds::KINDS`) that says how seeds, records, `join` and the probe treat it.

use std::sync::Arc;

use crate::os::system::System;
use crate::services::Service;

/// Builds the kind's service of that name, or None: a kind's `build` answers for its own names.
type Builder = fn(&str, &System) -> Option<Arc<dyn Service>>;

pub mod streaming;
pub mod syncthing;
pub mod tahoe;

/// Each kind's `build`, beside its folder's `mod` line above.
const BUILDERS: &[Builder] = &[streaming::build, syncthing::build, tahoe::build];

/// The service named `name`, from whichever kind builds it.
pub fn build(name: &str, sys: &System) -> Option<Arc<dyn Service>> {
    BUILDERS.iter().find_map(|b| b(name, sys))
}
