//! How `cloudy-agent run` was asked to run.

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Options {
    /// Change links and addresses (the real node, or a test's network namespace).
    pub manage_network: bool,
    pub tincd: PathBuf,
    pub agent_exe: PathBuf,
    /// Apply (keys and tinc config included) and print ready, but start no tincd and do not
    /// stay to run the mesh.
    pub once: bool,
    /// Debian's serf agent, for community-wide discovery; none: mDNS only.
    pub serf: Option<PathBuf>,
}
