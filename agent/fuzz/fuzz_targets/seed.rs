//! A whole seed from bytes, as a node reads it from its boot medium: parsed and validated
//! (`Seed::parse`), and, when refused, the error as the console, the ready line, `status` and
//! the dashboard show it. That error must never quote a secret.
//!
//! The secret check is sound only where the fuzzer can tell what a secret is, so it watches a
//! canary, `CANARY` below, and asserts only when every occurrence of the canary in the text is
//! (part of) a secret value:
//! - text that parses as TOML: the canary appears in string values under secret-named keys
//!   (`cloudy_model::seed::is_secret_key`: `key`, `password_hash`, ...) as often as in the
//!   text, so it is nowhere else (not in a key, another value or a comment);
//! - text that does not parse (a syntax error: nothing is validated, and the TOML messages
//!   quote no source): every occurrence stands on its line after `<secret key> = "` with no
//!   other quote before it, and the line starts no multi-line string.
#![no_main]

use cloudy_model::seed::{is_secret_key, Seed};
use libfuzzer_sys::fuzz_target;

const CANARY: &str = "CANARY";

/// Occurrences of the canary in string values under secret-named keys.
fn in_secrets(v: &toml::Value, secret: bool) -> usize {
    match v {
        toml::Value::Table(t) => t
            .iter()
            .map(|(k, v)| in_secrets(v, secret || is_secret_key(k)))
            .sum(),
        toml::Value::Array(a) => a.iter().map(|v| in_secrets(v, secret)).sum(),
        toml::Value::String(s) if secret => s.matches(CANARY).count(),
        _ => 0,
    }
}

/// Every occurrence of the canary follows `<secret key> = "` on its own line.
fn only_after_secret_keys(text: &str) -> bool {
    text.lines().all(|line| {
        let Some(at) = line.find(CANARY) else {
            return true;
        };
        let before = &line[..at];
        let Some((key, value)) = before.split_once('=') else {
            return false;
        };
        let key = key.trim();
        let value = value.trim_start();
        is_secret_key(key)
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && value.starts_with('"')
            && !value.starts_with("\"\"\"")
            && !value[1..].contains(['"', '\''])
            && !line.contains("\"\"\"")
            && !line.contains("'''")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Seed::parse("seed.toml", text) {
        Ok(seed) => {
            seed.validate("seed.toml").expect("a parsed seed is valid");
        }
        Err(e) => {
            let shown = format!("{e}");
            let canaries = text.matches(CANARY).count();
            if canaries == 0 {
                return;
            }
            let sound = match toml::from_str::<toml::Table>(text) {
                Ok(t) => in_secrets(&toml::Value::Table(t), false) == canaries,
                Err(_) => only_after_secret_keys(text),
            };
            if sound {
                assert!(
                    !shown.contains(CANARY),
                    "the error quotes a secret: {shown}"
                );
            }
        }
    }
});
