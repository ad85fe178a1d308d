//! What setup mode chose (issue 15), kept in /var/lib/cloudy for later boots as a seed's
//! secrets are: the node's name, and the community it created or joined (its name and the
//! exchange addresses it first reached; the key itself is kept where a seed's is,
//! `secrets::COMMUNITY_KEY_FILE`). `load_seed` lays both under the seed: a seed that names the
//! node or a community wins.

use serde::{Deserialize, Serialize};

use crate::os::secrets::{self, SecretError};
use crate::os::system::System;
use cloudy_model::seed::{Community, Seed};

pub const NODE_NAME_FILE: &str = "/var/lib/cloudy/node-name";
pub const COMMUNITY_FILE: &str = "/var/lib/cloudy/community.json";

/// The community as setup mode stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    pub name: String,
    /// `host:port` of members' exchange services (an invitation's inviter): where a node that
    /// lost its member list starts again.
    #[serde(default)]
    pub peers: Vec<String>,
}

/// The seed this node boots with (`System::load_seed`), with what setup mode chose under it:
/// what boot, `status` and the "use a service" flow read.
pub fn load_seed(sys: &System) -> cloudy_model::seed::Loaded {
    let mut loaded = sys.load_seed();
    layer(sys, &mut loaded.seed, &mut loaded.errors);
    loaded
}

/// Lays the stored name and community under `seed` (only where the seed names none). A stored
/// file that does not parse is reported in `errors` (with its path and the fix) and ignored:
/// the node then boots into setup mode again, and the file is left for a look.
pub fn layer(sys: &System, seed: &mut Seed, errors: &mut Vec<String>) {
    if seed.node.name.is_none() {
        match node_name(sys) {
            Ok(n) => seed.node.name = n,
            Err(e) => errors.push(e),
        }
    }
    if seed.community.is_none() {
        match community(sys) {
            Ok(Some(c)) => {
                seed.community = Some(Community {
                    name: c.name,
                    peers: c.peers,
                    ..Default::default()
                })
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
}

/// The name setup mode gave this node, if any.
pub fn node_name(sys: &System) -> Result<Option<String>, String> {
    let path = sys.path(NODE_NAME_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let name = s.trim().to_string();
            cloudy_model::names::check_hostname(&name)
                .map(|()| Some(name))
                .map_err(|p| {
                    format!(
                        "{}: the node name is not a hostname ({p}); fix: remove the file and name the node again in setup mode, or set [node] name in the seed",
                        path.display()
                    )
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

pub fn set_node_name(sys: &System, name: &str) -> std::io::Result<()> {
    sys.write_atomic(NODE_NAME_FILE, format!("{name}\n").as_bytes(), 0o644)
}

/// The community setup mode created or joined, if any.
pub fn community(sys: &System) -> Result<Option<Stored>, String> {
    let path = sys.path(COMMUNITY_FILE);
    let bad = |why: String| {
        format!(
            "{}: {why}; fix: remove it (the node then starts in setup mode) or name the community in the seed's [community]",
            path.display()
        )
    };
    match std::fs::read(&path) {
        Ok(b) => {
            let c: Stored = serde_json::from_slice(&b).map_err(|e| bad(e.to_string()))?;
            cloudy_model::names::check_hostname(&c.name)
                .map_err(|p| bad(format!("field `name`: {p}")))?;
            if let Some(p) = c
                .peers
                .iter()
                .find(|p| cloudy_model::names::check_endpoint(p).is_err())
            {
                return Err(bad(format!("field `peers`: {p:?} is not host:port")));
            }
            Ok(Some(c))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Keeps a community and its key. The key goes first and the community file last, so a crash
/// between them leaves a node that boots into setup mode again, never a member without its
/// key. A different key already kept (an earlier seed's) is moved aside, not overwritten.
pub fn set_community(sys: &System, c: &Stored, key: &str) -> Result<(), SecretError> {
    let key_path = sys.path(secrets::COMMUNITY_KEY_FILE);
    if let Ok(old) = std::fs::read_to_string(&key_path) {
        if old.trim_end_matches('\n') != key {
            let aside = key_path.with_extension(format!(
                "key.replaced-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            ));
            std::fs::rename(&key_path, &aside).map_err(|source| SecretError::Io {
                path: key_path.display().to_string(),
                source,
            })?;
            tracing::warn!(
                "the community key kept before was moved to {}",
                aside.display()
            );
        }
    }
    secrets::community_key(sys, Some(key))?;
    let body = serde_json::to_vec_pretty(c).expect("serialises");
    sys.write_atomic(COMMUNITY_FILE, &body, 0o600)
        .map_err(|source| SecretError::Io {
            path: sys.path(COMMUNITY_FILE).display().to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_choices_lie_under_the_seed_and_a_seed_wins() {
        let d = tempfile::tempdir().unwrap();
        let sys = System::new(d.path());
        let mut seed = Seed::default();
        let mut errors = Vec::new();
        layer(&sys, &mut seed, &mut errors);
        assert!(seed.node.name.is_none() && seed.community.is_none());
        set_node_name(&sys, "kitchen").unwrap();
        let c = Stored {
            name: "lab".into(),
            peers: vec!["10.0.0.1:6655".into()],
        };
        set_community(&sys, &c, "a key of sixteen chars or more").unwrap();
        layer(&sys, &mut seed, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(seed.node.name.as_deref(), Some("kitchen"));
        let got = seed.community.clone().unwrap();
        assert_eq!((got.name.as_str(), got.peers), ("lab", c.peers.clone()));
        assert_eq!(
            secrets::community_key(&sys, None).unwrap().as_deref(),
            Some("a key of sixteen chars or more")
        );
        // The seed's own choices are kept.
        let mut seeded = Seed::default();
        seeded.node.name = Some("pantry".into());
        seeded.community = Some(Community {
            name: "other".into(),
            ..Default::default()
        });
        layer(&sys, &mut seeded, &mut errors);
        assert_eq!(seeded.node.name.as_deref(), Some("pantry"));
        assert_eq!(seeded.community.unwrap().name, "other");
    }

    /// Bad input loses nothing: a different key kept before is moved aside, and a damaged
    /// community file is an error naming the file and the fix, not a member of nothing.
    #[test]
    fn an_older_key_is_kept_aside_and_a_damaged_file_is_named() {
        let d = tempfile::tempdir().unwrap();
        let sys = System::new(d.path());
        secrets::community_key(&sys, Some("the key of an earlier seed")).unwrap();
        let c = Stored {
            name: "lab".into(),
            peers: vec![],
        };
        set_community(&sys, &c, "a brand new community key").unwrap();
        let kept: Vec<String> = std::fs::read_dir(sys.path("/var/lib/cloudy"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("replaced"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect();
        assert_eq!(kept, vec!["the key of an earlier seed\n".to_string()]);
        std::fs::write(sys.path(COMMUNITY_FILE), "{\"name\":\"lab\",\"extra\":1}").unwrap();
        let mut seed = Seed::default();
        let mut errors = Vec::new();
        layer(&sys, &mut seed, &mut errors);
        assert!(seed.community.is_none());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("community.json") && errors[0].contains("fix: remove it"),
            "{errors:?}"
        );
    }
}
