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

/// The check for a seed served to a whole LAN (a PXE bundle's `cloudy.iso` goes out over
/// TFTP/HTTP to whoever asks): a valid seed that carries no secret another machine could use,
/// neither the community key nor an invitation several nodes may use.
pub fn check_for_lan(file: &str, text: &str) -> Result<(), String> {
    let seed = Seed::parse(file, text).map_err(|e| e.to_string())?;
    match seed.community.as_ref().and_then(|c| c.lan_secret()) {
        None => Ok(()),
        Some(what) => Err(format!(
            "{file}: a PXE bundle is served to anyone on the LAN, and this seed holds {what}, which anyone who fetches it could use to join\n  fix: leave the secret out and keep only `[community] name`: each node that boots from the bundle then waits as a pending node and shows its key's fingerprint on its console; compare it and approve the node from a member (`cloudy-agent approve FINGERPRINT...`, or the Pending tab of a member's dashboard). For one node, a single-use invitation also works (`cloudy-agent invite --uses 1 --seed` on a member; the first node to boot spends it, so whoever fetches the bundle later holds nothing)"
        )),
    }
}

/// What `cloudy-agent seed check` warns about in a valid seed (a `[community]` without a key
/// leaves a new node alone); empty for a seed that does not parse.
pub fn warnings(file: &str, text: &str) -> Vec<String> {
    Seed::parse(file, text)
        .map(|s| s.warnings())
        .unwrap_or_default()
}
