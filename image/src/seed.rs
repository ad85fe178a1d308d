//! The seed check: a seed is parsed with the parser the agent uses (cloudy-model) before it goes into an image.
//! The only place this crate uses the seed types; they come from the crate that owns them.

use cloudy_model::seed::Seed;

/// Parses `text` (read from `file`, which names it in errors) as a seed; the error is the
/// parser's message, which names the file, the key and the fix.
pub fn check(file: &str, text: &str) -> Result<(), String> {
    Seed::parse(file, text)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// What `cloudy-agent seed check` warns about in a valid seed (a `[community]` without a key
/// leaves a new node alone); empty for a seed that does not parse.
pub fn warnings(file: &str, text: &str) -> Vec<String> {
    Seed::parse(file, text)
        .map(|s| s.warnings())
        .unwrap_or_default()
}
