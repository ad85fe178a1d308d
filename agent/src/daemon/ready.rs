//! The one JSON line the agent prints on the console when the node is up. The image builder's
//! verify stage and the tests wait for it, so its shape is a contract: add keys, never rename.

use serde::Serialize;

pub const READY_KEY: &str = "cloudy";

#[derive(Debug, Serialize)]
pub struct Ready {
    pub cloudy: &'static str,
    pub version: &'static str,
    pub node: String,
    pub hostname: String,
    /// `uname -r`: lets the builder check the board's kernel flavour booted.
    pub kernel: String,
    pub arch: &'static str,
    pub seed: Option<String>,
    pub seed_errors: Vec<String>,
    pub uptime_s: f64,
    pub node_id: String,
    /// Primary interface and the address others reach us on, when known.
    pub interface: Option<String>,
    pub address: Option<String>,
    pub community: Option<String>,
    pub vpn_address: Option<String>,
    pub tinc_name: Option<String>,
    /// Problems past the seed (network, mesh): the node is up but not all it should be.
    pub errors: Vec<String>,
    /// Services the seed enables: when there are any, a `{"cloudy":"services",...}` line
    /// follows once each is running or has failed (the image's verify stage waits for it).
    pub services: Vec<String>,
}

impl Ready {
    pub fn line(&self) -> String {
        serde_json::to_string(self).expect("ready line serialises")
    }
}

pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn uptime_s() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_is_one_json_object_starting_with_the_key() {
        let r = Ready {
            cloudy: "ready",
            version: "0.1.0",
            node: "n\"1".into(),
            hostname: "n1".into(),
            kernel: kernel_release(),
            arch: std::env::consts::ARCH,
            seed: None,
            seed_errors: vec!["a\nb".into()],
            uptime_s: 1.5,
            node_id: "0".repeat(32),
            interface: None,
            address: None,
            community: None,
            vpn_address: None,
            tinc_name: None,
            services: vec!["syncthing".into()],
            errors: vec![],
        };
        let line = r.line();
        assert!(line.starts_with("{\"cloudy\":\"ready\""), "{line}");
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["node"], "n\"1");
        assert!(!v["kernel"].as_str().unwrap().is_empty());
    }
}
