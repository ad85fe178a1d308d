//! Which services this node runs and uses: building them by name (the kinds table and each
//! kind's folder), the manager that runs them, the provider lookup, and the "use a service"
//! flow behind `cloudy-agent join`, the dashboard's Join and the control socket.

pub mod manager;
pub mod published;
pub mod use_service;

use std::sync::Arc;

use crate::os::system::System;
use crate::services::Service;

/// The service named `name` (from the seed's `enable` or a file in `JOINED_DIR`); None for a
/// name this agent does not know.
pub fn build(name: &str, sys: &System) -> Option<Arc<dyn Service>> {
    cloudy_model::kinds::find(name)?;
    crate::kinds::build(name, sys)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's `[services] enable` and `build` agree: every name a seed may enable (and
    /// every local side of a join) is a service of that name.
    #[test]
    fn every_service_a_seed_may_enable_is_built() {
        let d = tempfile::tempdir().unwrap();
        let seed = d.path().join("cloudy.toml");
        let known: Vec<&str> = cloudy_model::kinds::enableable().collect();
        let names: Vec<String> = known.iter().map(|n| format!("{n:?}")).collect();
        std::fs::write(
            &seed,
            format!("version = 1\n[services]\nenable = [{}]\n", names.join(", ")),
        )
        .unwrap();
        let enabled = cloudy_model::seed::read_file(&seed)
            .unwrap()
            .services
            .unwrap()
            .enable;
        assert_eq!(enabled.len(), known.len());
        let sys = System::new(d.path());
        for n in enabled
            .iter()
            .map(String::as_str)
            .chain(cloudy_model::kinds::joinable().map(|(_, j)| j.local))
        {
            let svc = build(n, &sys).unwrap_or_else(|| panic!("{n} is not built"));
            assert_eq!(svc.name(), n);
        }
        assert!(build("ftp", &sys).is_none());
    }
}
