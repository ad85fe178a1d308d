//! Secrets the seed carries (community key, dashboard hash, Wi-Fi passphrase) move off the boot medium, which any
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
    #[error("{path} does not parse as TOML: its secrets cannot be removed")]
    Unparsable { path: String },
    #[error("{path} still holds {what} after it was rewritten")]
    StillThere { path: String, what: String },
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

/// The community key's generations (current and replaced ones, JSON, `mesh::rekey`), 0600
/// beside the key: what a rekey keeps for its overlap and for members that come back.
pub const KEY_HISTORY_FILE: &str = "/var/lib/cloudy/community-keys.json";

/// Replaces the stored community key after a rekey: the history (which still names the
/// replaced key) first, then the key, each written atomically, so a crash between the two
/// leaves a history that names both and the next start settles on its current one.
pub fn replace_community_key(sys: &System, key: &str, history: &[u8]) -> Result<(), SecretError> {
    let io = |path: &str| {
        let path = sys.path(path).display().to_string();
        move |source| SecretError::Io { path, source }
    };
    sys.write_atomic(KEY_HISTORY_FILE, history, 0o600)
        .map_err(io(KEY_HISTORY_FILE))?;
    sys.write_atomic(COMMUNITY_KEY_FILE, format!("{key}\n").as_bytes(), 0o600)
        .map_err(io(COMMUNITY_KEY_FILE))
}

/// The stored key history, None when there is none (no rekey yet).
pub fn key_history(sys: &System) -> Result<Option<Vec<u8>>, SecretError> {
    match std::fs::read(sys.path(KEY_HISTORY_FILE)) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SecretError::Io {
            path: sys.path(KEY_HISTORY_FILE).display().to_string(),
            source,
        }),
    }
}

/// Where a seed keeps its secrets: (table, key).
pub const SEED_SECRETS: &[(&str, &str)] = &[
    ("community", "key"),
    ("community", "invite"),
    ("dashboard", "password_hash"),
    ("wifi", "psk"),
    ("wifi", "psk_hash"),
];

/// Removes `key` from `[community]`, `password_hash` from `[dashboard]` and `psk`/`psk_hash`
/// from `[wifi]` in a seed file, once
/// their values are stored, however the file writes them (section, inline table, dotted or
/// quoted key, multi-line string). The document is edited with `toml_edit`, so the rest of the
/// file keeps the user's comments, order and layout; it is written atomically, then read back
/// and checked: an error says when the secret is still there. Comment lines right above a
/// removed entry, and its trailing comment, go with it. Returns whether the file changed.
pub fn scrub_seed(path: &Path) -> Result<bool, SecretError> {
    scrub_seed_with(path, crate::os::system::write_atomic)
}

/// `scrub_seed`, leaving alone the secrets of the seed's `skipped` sections: a section that
/// was refused (`Loaded::skipped`) never had its secret stored, and removing it would lose it.
pub fn scrub_seed_keeping(path: &Path, skipped: &[String]) -> Result<bool, SecretError> {
    scrub(path, crate::os::system::write_atomic, skipped)
}

/// `scrub_seed` with the write it uses (tests make it fail like a read-only medium).
pub fn scrub_seed_with(
    path: &Path,
    write: impl Fn(&Path, &[u8], u32) -> std::io::Result<()>,
) -> Result<bool, SecretError> {
    scrub(path, write, &[])
}

fn scrub(
    path: &Path,
    write: impl Fn(&Path, &[u8], u32) -> std::io::Result<()>,
    skipped: &[String],
) -> Result<bool, SecretError> {
    let kept = |table: &str| skipped.iter().any(|s| s == table);
    let io = |source| SecretError::Io {
        path: path.display().to_string(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io)?;
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|_| SecretError::Unparsable {
        path: path.display().to_string(),
    })?;
    let mut removed: Vec<String> = Vec::new();
    for (table, key) in SEED_SECRETS.iter().filter(|(t, _)| !kept(t)) {
        let Some(item) = doc.get_mut(table) else {
            continue;
        };
        if let Some(t) = item.as_inline_table_mut() {
            remove_inline(t, key, &mut removed);
        } else if let Some(t) = item.as_table_like_mut() {
            if let Some(item) = t.remove(key) {
                removed.push(match item.as_str() {
                    Some(s) => s.to_string(),
                    None => item.to_string().trim().to_string(),
                });
            }
        }
    }
    if removed.is_empty() {
        return Ok(false);
    }
    let scrubbed = doc.to_string();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o644);
    write(path, scrubbed.as_bytes(), mode).map_err(io)?;
    let after = std::fs::read_to_string(path).map_err(io)?;
    if let Some(what) = holds_secret_except(&after, &removed, skipped) {
        return Err(SecretError::StillThere {
            path: path.display().to_string(),
            what,
        });
    }
    Ok(true)
}

/// Removes `key` from an inline table; when it was the last entry, the new last one takes its
/// trailing space so that `{ name = "x", key = "..." }` becomes `{ name = "x" }`.
fn remove_inline(t: &mut toml_edit::InlineTable, key: &str, removed: &mut Vec<String>) {
    let last = t.iter().last().map(|(k, _)| k.to_string());
    let Some(v) = t.remove(key) else {
        return;
    };
    removed.push(match v.as_str() {
        Some(s) => s.to_string(),
        None => v.to_string().trim().to_string(),
    });
    if last.as_deref() == Some(key) {
        let suffix = v.decor().suffix().cloned();
        if let (Some(suffix), Some((_, new_last))) = (suffix, t.iter_mut().last()) {
            new_last.decor_mut().set_suffix(suffix);
        }
    }
}

/// What of the seed's secrets a seed's text still holds: a secret key the TOML parser finds, or
/// one of `values` anywhere in the text (a comment included). None when clean.
pub fn holds_secret(text: &str, values: &[String]) -> Option<String> {
    holds_secret_except(text, values, &[])
}

/// `holds_secret`, not counting the secret keys of the `skipped` sections (see
/// [`scrub_seed_keeping`]).
pub fn holds_secret_except(text: &str, values: &[String], skipped: &[String]) -> Option<String> {
    match toml::from_str::<toml::Table>(text) {
        Ok(t) => {
            for (table, key) in SEED_SECRETS
                .iter()
                .filter(|(t, _)| !skipped.iter().any(|s| s == t))
            {
                let there = t
                    .get(*table)
                    .and_then(|v| v.as_table())
                    .is_some_and(|s| s.contains_key(*key));
                if there {
                    return Some(format!("[{table}] {key}"));
                }
            }
        }
        Err(_) => return Some("a file that does not parse as TOML".into()),
    }
    values
        .iter()
        .filter(|v| !v.is_empty())
        .any(|v| text.contains(v.as_str()))
        .then(|| "the value of a stored secret".into())
}

/// Loud words for a boot medium that still holds a secret: on the console at boot, in
/// `cloudy-agent status` and on the dashboard's node page. Empty when the medium is clean (or
/// there is none). Checks the file itself, so it stays true whatever happened at boot. A seed
/// that was refused never had its secrets stored (its error says so): it is only checked for
/// the values stored from an earlier seed.
pub fn medium_warnings(sys: &System, loaded: &cloudy_model::seed::Loaded) -> Vec<String> {
    let Some(path) = cloudy_model::seed::SEED_PATHS
        .iter()
        .map(|p| sys.path(p))
        .find(|p| p.exists())
    else {
        return Vec::new();
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    let stored: Vec<String> = [COMMUNITY_KEY_FILE, crate::os::identity::DASHBOARD_HASH_FILE]
        .iter()
        .filter_map(|f| std::fs::read_to_string(sys.path(f)).ok())
        .map(|s| s.trim().to_string())
        .chain(crate::os::wifi::stored_secrets(sys))
        .filter(|s| !s.is_empty())
        .collect();
    let found = if loaded.source.as_deref() == Some(path.as_path()) {
        holds_secret_except(&text, &stored, &loaded.skipped)
    } else {
        stored
            .iter()
            .any(|v| text.contains(v.as_str()))
            .then(|| "the value of a stored secret".to_string())
    };
    match found {
        None => Vec::new(),
        Some(what) => vec![medium_warning(&path, &what)],
    }
}

pub fn medium_warning(path: &Path, what: &str) -> String {
    format!(
        "WARNING: the boot medium {} still holds {what}: anyone who can read the card or image can read it; \
         the agent keeps its copy in /var/lib/cloudy (0600) but could not remove it from the medium \
         (read-only?): delete it from the file by hand",
        path.display()
    )
}

#[cfg(test)]
mod rekey_tests {
    use super::*;

    #[test]
    fn a_replaced_key_is_stored_0600_with_its_history() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        community_key(&sys, Some("the first key of enough length")).unwrap();
        assert_eq!(key_history(&sys).unwrap(), None);
        replace_community_key(&sys, "the second key of enough length", b"{\"h\":1}").unwrap();
        assert_eq!(
            community_key(&sys, None).unwrap().as_deref(),
            Some("the second key of enough length")
        );
        assert_eq!(key_history(&sys).unwrap().unwrap(), b"{\"h\":1}");
        for f in [COMMUNITY_KEY_FILE, KEY_HISTORY_FILE] {
            let mode = std::fs::metadata(sys.path(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
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

    /// An invitation token is a secret like the key: gone from the medium once redeemed, and
    /// kept while it is not (boot passes `community` to keep). The old code scrubbed only
    /// `key`, so a redeemed token stayed on the card for anyone to read.
    #[test]
    fn scrub_removes_an_invitation_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cloudy.toml");
        let token = "cloudy1:AAAAAAAAAAAAAAAAAAAAAA@10.0.0.1:6655";
        let text = format!("[community]\nname = \"sants\"\ninvite = \"{token}\"\n[dashboard]\npassword_hash = \"$y$j9T$abc\"\n");
        std::fs::write(&p, &text).unwrap();
        assert!(scrub_seed_keeping(&p, &["community".into()]).unwrap());
        let after = std::fs::read_to_string(&p).unwrap();
        assert!(after.contains(token) && !after.contains("$y$"), "{after}");
        std::fs::write(&p, &text).unwrap();
        assert!(scrub_seed(&p).unwrap());
        let after = std::fs::read_to_string(&p).unwrap();
        assert!(
            !after.contains("cloudy1:") && after.contains("sants"),
            "{after}"
        );
        assert_eq!(
            holds_secret(&text, &[]).as_deref(),
            Some("[community] invite")
        );
    }

    const KEY: &str = "K3Y-DO-NOT-LEAVE-0123456789";
    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$NwZ4byZvLV+H8Rqc8Q0s8w$8dRbbGgPfDasaEPgPJZsneNCEuYXxPOlNn9Qkm2lYnQ";

    /// Each way TOML lets a seed write its secrets: the file after the scrub is the file before
    /// without the secret entries, byte for byte, and holds neither value.
    #[test]
    fn scrub_removes_secrets_however_written() {
        let k = KEY;
        let h = HASH;
        let cases: Vec<(&str, String, String)> = vec![
            (
                "plain",
                format!("version = 1\n# my cloud\n[community]\nname = \"sants\"\nkey = \"{k}\"\nport = 6655\n\n[dashboard]\npassword_hash = \"{h}\"\nport = 8080\n"),
                "version = 1\n# my cloud\n[community]\nname = \"sants\"\nport = 6655\n\n[dashboard]\nport = 8080\n".into(),
            ),
            (
                "header with a comment",
                format!("version = 1\n[community] # note\nname = \"sants\"\nkey = \"{k}\"\n[dashboard]   # web UI\npassword_hash = \"{h}\"\n"),
                "version = 1\n[community] # note\nname = \"sants\"\n[dashboard]   # web UI\n".into(),
            ),
            (
                "inline tables",
                format!("version = 1\ncommunity = {{ name = \"sants\", key = \"{k}\" }}\ndashboard = {{ password_hash = \"{h}\", port = 8080 }}\n"),
                "version = 1\ncommunity = { name = \"sants\" }\ndashboard = { port = 8080 }\n".into(),
            ),
            (
                "quoted keys",
                format!("version = 1\n[community]\nname = \"sants\"\n\"key\" = \"{k}\"\n[dashboard]\n'password_hash' = '{h}'\nport = 8080\n"),
                "version = 1\n[community]\nname = \"sants\"\n[dashboard]\nport = 8080\n".into(),
            ),
            (
                "multi-line strings",
                format!("version = 1\n[community]\nname = \"sants\"\nkey = \"\"\"\n{k}\"\"\"\n[dashboard]\npassword_hash = '''\n{h}'''\n\n# the node\n[node]\nname = \"pi\"\n"),
                "version = 1\n[community]\nname = \"sants\"\n[dashboard]\n\n# the node\n[node]\nname = \"pi\"\n".into(),
            ),
            (
                "dotted keys",
                format!("version = 1\ncommunity.name = \"sants\"\ncommunity.key = \"{k}\"\ndashboard.password_hash = \"{h}\"\n[node]\nname = \"pi\"\n"),
                "version = 1\ncommunity.name = \"sants\"\n[node]\nname = \"pi\"\n".into(),
            ),
            (
                "trailing comments and spacing",
                format!("version = 1\n[community]\n  name = \"sants\"   # who\n  key   =   \"{k}\"   # secret!\n  peers = [\"10.1.2.3:6655\"]\n"),
                "version = 1\n[community]\n  name = \"sants\"   # who\n  peers = [\"10.1.2.3:6655\"]\n".into(),
            ),
        ];
        let mut failures = Vec::new();
        for (case, before, after) in cases {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("cloudy.toml");
            std::fs::write(&p, &before).unwrap();
            cloudy_model::seed::Seed::parse("before", &before)
                .unwrap_or_else(|e| panic!("{case}: the test's seed is wrong: {e}"));
            let changed = scrub_seed(&p);
            let text = std::fs::read_to_string(&p).unwrap();
            if text.contains(KEY) || text.contains("NwZ4byZvLV") {
                failures.push(format!(
                    "{case}: a secret is left on the medium ({changed:?})"
                ));
                continue;
            }
            if text != after {
                failures.push(format!("{case}: the rest of the file changed: {text:?}"));
                continue;
            }
            assert!(changed.unwrap(), "{case}");
            let seed = cloudy_model::seed::Seed::parse("after", &text).unwrap();
            assert_eq!(seed.community.and_then(|c| c.key), None, "{case}");
            assert_eq!(seed.dashboard.and_then(|d| d.password_hash), None, "{case}");
            assert!(
                !scrub_seed(&p).unwrap(),
                "{case}: second scrub changes nothing"
            );
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Issue 18: at 2293e0e `[wifi]` was no section at all (the seed was refused) and nothing
    /// took a Wi-Fi passphrase off the card; now `psk` and `psk_hash` go like the community key,
    /// the rest of `[wifi]` stays so the next boot joins with the stored passphrase.
    #[test]
    fn scrub_removes_the_wifi_passphrase() {
        let pass = "WIFI-PASS-DO-NOT-LEAVE";
        let hash = "9f".repeat(32);
        for (before, after) in [
            (
                format!("version = 1\n[wifi]\nssid = \"Casa\"\npsk = \"{pass}\"  # from the router\ncountry = \"ES\"\n"),
                "version = 1\n[wifi]\nssid = \"Casa\"\ncountry = \"ES\"\n".to_string(),
            ),
            (
                format!("version = 1\nwifi = {{ ssid = \"Casa\", country = \"ES\", psk_hash = \"{hash}\" }}\n"),
                "version = 1\nwifi = { ssid = \"Casa\", country = \"ES\" }\n".to_string(),
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("cloudy.toml");
            std::fs::write(&p, &before).unwrap();
            cloudy_model::seed::Seed::parse("before", &before).unwrap();
            assert!(scrub_seed(&p).unwrap(), "{before}");
            let text = std::fs::read_to_string(&p).unwrap();
            assert_eq!(text, after);
            assert!(!text.contains(pass) && !text.contains(&hash));
            let seed = cloudy_model::seed::Seed::parse("after", &text).unwrap();
            let w = seed.wifi.unwrap();
            assert_eq!((w.psk, w.psk_hash), (None, None));
            let held = holds_secret(&before, &[]).unwrap();
            assert!(held.starts_with("[wifi] psk"), "{held}");
        }
    }

    /// A medium the agent cannot write (a read-only FAT or ISO) keeps its secrets: the scrub
    /// fails and says so, and the medium's check names it for the console, status and the
    /// dashboard.
    #[test]
    fn read_only_medium_yields_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        let text = format!(
            "version = 1\n[community]\nname = \"sants\"\nkey = \"{KEY}\"\n[dashboard]\npassword_hash = \"{HASH}\"\n"
        );
        let p = sys.path(cloudy_model::seed::SEED_PATHS[0]);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &text).unwrap();
        let read_only = |_: &Path, _: &[u8], _: u32| -> std::io::Result<()> {
            Err(std::io::Error::from_raw_os_error(nix::libc::EROFS))
        };
        let err = scrub_seed_with(&p, read_only).unwrap_err().to_string();
        assert!(
            err.contains("cloudy.toml") && err.contains("ead-only"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text, "left as it was");
        // A write that "succeeds" but leaves the secret (a medium that ignores writes).
        let ignored = |_: &Path, _: &[u8], _: u32| Ok(());
        let err = scrub_seed_with(&p, ignored).unwrap_err().to_string();
        assert!(err.contains("still holds [community] key"), "{err}");

        community_key(&sys, Some(KEY)).unwrap();
        let loaded = sys.load_seed();
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let w = medium_warnings(&sys, &loaded);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("WARNING") && w[0].contains("boot/firmware/cloudy.toml"),
            "{w:?}"
        );
        assert!(!w[0].contains(KEY), "the warning never quotes the secret");

        // Scrubbed: no warning.
        assert!(scrub_seed(&p).unwrap());
        assert!(medium_warnings(&sys, &sys.load_seed()).is_empty());
        // A copy of the stored key left in a comment is still on the medium.
        std::fs::write(&p, format!("version = 1\n# old: {KEY}\n")).unwrap();
        assert_eq!(medium_warnings(&sys, &sys.load_seed()).len(), 1);
    }
}
