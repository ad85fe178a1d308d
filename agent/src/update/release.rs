//! What the image says about updates: the release it is (`/usr/lib/cloudy/release.json`, read
//! through `cloudy_model::info::Release`) and the community's update keys it trusts
//! (`/usr/lib/cloudy/update-keys.json`). Both are written by `cloudy-image` into the read-only
//! root slot, so an update brings its own next keys and nothing on the data partition can
//! change which signatures a node believes.

use serde::Deserialize;

use crate::os::system::System;
use cloudy_model::info::Release;
use cloudy_model::update::{Running, UpdateKeys};

pub const KEYS_FILE: &str = "/usr/lib/cloudy/update-keys.json";

/// `update-keys.json`: K and the N public keys (base64), as `cloudy-image keys new` prints them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    threshold: usize,
    keys: Vec<String>,
}

/// Why this node takes no updates, for status and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoUpdates {
    #[error("this image names no release ({0}): it takes no updates")]
    NoRelease(String),
    #[error("this image carries no update keys ({0}): it takes no updates; fix: build it with update keys in the recipe")]
    NoKeys(String),
    #[error("{path}: {problem}; fix: rebuild the image with `cloudy-image` (it writes {{\"threshold\": K, \"keys\": [...]}})")]
    BadKeys { path: String, problem: String },
}

/// The running release, from the image.
pub fn release(sys: &System) -> Result<Release, NoUpdates> {
    Release::load(sys.root()).map_err(NoUpdates::NoRelease)
}

/// The update keys the image trusts.
pub fn keys(sys: &System) -> Result<UpdateKeys, NoUpdates> {
    let path = sys.path(KEYS_FILE);
    let shown = path.display().to_string();
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(NoUpdates::NoKeys(format!("{shown} is missing")))
        }
        Err(e) => {
            return Err(NoUpdates::BadKeys {
                path: shown,
                problem: e.to_string(),
            })
        }
    };
    let bad = |problem: String| NoUpdates::BadKeys {
        path: shown.clone(),
        problem,
    };
    if text.len() > 64 * 1024 {
        return Err(bad("longer than 64 KiB".into()));
    }
    let f: KeysFile = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    UpdateKeys::new(f.threshold, &f.keys).map_err(|e| bad(e.to_string()))
}

/// What `offer` compares a manifest with.
pub fn running(release: &Release, channel: cloudy_model::update::Channel) -> Running {
    Running {
        board: release.board.clone(),
        // `Release::load` checked that it parses.
        version: release
            .version
            .parse()
            .unwrap_or_else(|_| "0".parse().expect("0 is a version")),
        channel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_bad_files_say_which_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        assert!(matches!(release(&sys), Err(NoUpdates::NoRelease(_))));
        let e = keys(&sys).unwrap_err();
        assert!(matches!(e, NoUpdates::NoKeys(_)), "{e}");
        assert!(e.to_string().contains("update-keys.json"), "{e}");
        sys.write_atomic(KEYS_FILE, br#"{"threshold": 2, "keys": []}"#, 0o644)
            .unwrap();
        let e = keys(&sys).unwrap_err().to_string();
        assert!(e.contains("threshold 2") && e.contains("fix:"), "{e}");
        sys.write_atomic(
            cloudy_model::info::RELEASE_FILE,
            br#"{"board": "pc-amd64", "version": "1.2"}"#,
            0o644,
        )
        .unwrap();
        let r = release(&sys).unwrap();
        assert_eq!(
            running(&r, Default::default()).version,
            "1.2".parse().unwrap()
        );
    }
}
