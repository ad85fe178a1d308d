//! Secrets the seed carries (community key, dashboard hash) move off the boot medium, which any
//! card reader can open, into /var/lib/cloudy with mode 0600.

use std::path::Path;

use crate::os::system::System;

pub const COMMUNITY_KEY_FILE: &str = "/var/lib/cloudy/community.key";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is empty; put the community key back in the seed's [community] key")]
    EmptyKey { path: String },
}

/// The community key: the seed's if it has one (stored for later boots), else the stored one.
pub fn community_key(sys: &System, from_seed: Option<&str>) -> Result<Option<String>, SecretError> {
    let path = sys.path(COMMUNITY_KEY_FILE);
    let io = |source| SecretError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(key) = from_seed {
        let line = format!("{key}\n");
        if std::fs::read_to_string(&path).ok().as_deref() != Some(&line) {
            sys.write_atomic(COMMUNITY_KEY_FILE, line.as_bytes(), 0o600)
                .map_err(io)?;
        }
        return Ok(Some(key.to_string()));
    }
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim_end_matches('\n').is_empty() => Err(SecretError::EmptyKey {
            path: path.display().to_string(),
        }),
        Ok(s) => Ok(Some(s.trim_end_matches('\n').to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(e)),
    }
}

/// Removes `key` from `[community]` and `password_hash` from `[dashboard]` in a seed file, once
/// their values are stored. Line-based so the user's comments survive; the result must still
/// parse or the file is left alone. Returns whether the file changed.
pub fn scrub_seed(path: &Path) -> Result<bool, SecretError> {
    let io = |source| SecretError::Io {
        path: path.display().to_string(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io)?;
    let scrubbed = scrub_text(&text);
    if scrubbed == text || cloudy_model::seed::Seed::parse("scrubbed", &scrubbed).is_err() {
        return Ok(false);
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o644);
    crate::os::system::write_atomic(path, scrubbed.as_bytes(), mode).map_err(io)?;
    Ok(true)
}

fn scrub_text(text: &str) -> String {
    let mut section = String::new();
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
        let key = t.split('=').next().unwrap_or("").trim();
        let secret = (section == "community" && key == "key")
            || (section == "dashboard" && key == "password_hash");
        if secret && t.contains('=') {
            out.push_str(&format!(
                "# {key} moved into /var/lib/cloudy by cloudy-agent\n"
            ));
        } else {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_stored_private_and_kept_when_seed_drops_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        assert_eq!(community_key(&sys, None).unwrap(), None);
        assert_eq!(
            community_key(&sys, Some("0123456789abcdef"))
                .unwrap()
                .as_deref(),
            Some("0123456789abcdef")
        );
        let mode = std::fs::metadata(sys.path(COMMUNITY_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            community_key(&sys, None).unwrap().as_deref(),
            Some("0123456789abcdef")
        );
    }

    #[test]
    fn scrub_removes_only_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cloudy.toml");
        let text = "version = 1\n# my cloud\n[community]\nname = \"sants\"\nkey = \"0123456789abcdef0\"\n[dashboard]\npassword_hash = \"$y$j9T$abcdefghijklmnopqrstu\"\n[node]\nname = \"key\"\n";
        std::fs::write(&p, text).unwrap();
        assert!(scrub_seed(&p).unwrap());
        let after = std::fs::read_to_string(&p).unwrap();
        assert!(
            !after.contains("0123456789abcdef0") && !after.contains("$y$"),
            "{after}"
        );
        assert!(after.contains("# my cloud") && after.contains("name = \"key\""));
        let seed = cloudy_model::seed::Seed::parse("x", &after).unwrap();
        assert_eq!(seed.community.unwrap().key, None);
        assert!(!scrub_seed(&p).unwrap(), "second scrub changes nothing");
    }
}
