//! Invitations: a member hands out a short token that lets one new node (or a few) fetch the
//! community's name and key over the exchange port, so no key is typed, carried on a medium or
//! served over PXE.
//!
//! A token is `cloudy1:SECRET@ADDR[,ADDR...]`: 16 random bytes (base64url, 22 characters) and
//! the inviter's exchange addresses (`host:port`). The inviter keeps only a hash of the secret
//! (`/var/lib/cloudy/invites.json`, 0600, written atomically) with what binds it: a node name,
//! an expiry and the uses left. The redeem handshake (`exchange::redeem`) keys its proof and
//! its seal on that hash, so both ends derive the same keys and the stored file never holds a
//! token that could be pasted. The file sits beside the community key itself (same owner, same
//! mode), so reading it gives nothing the key does not.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::os::identity::{hex, random_bytes};
use crate::os::system::write_atomic;

pub const INVITES_FILE: &str = "/var/lib/cloudy/invites.json";
pub use cloudy_model::seed::community::{
    INVITE_MANY_PREFIX as MANY_PREFIX, INVITE_PREFIX as PREFIX,
};
/// Outstanding tokens kept at once: bounds the file and the listing.
pub const MAX_INVITES: usize = 64;
/// Redeem attempts one address may make per `ATTEMPT_WINDOW`, whatever their outcome.
pub const MAX_ATTEMPTS: u32 = 5;
pub const ATTEMPT_WINDOW: Duration = Duration::from_secs(60);
/// Addresses in a token: enough for a node with a few interfaces, short enough to type.
const MAX_ADDRS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    #[error("not an invitation token: {0}")]
    Malformed(&'static str),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} invitations are outstanding: revoke some first")]
    Full(usize),
    #[error("{0}")]
    Invalid(String),
}

/// A token as the redeemer holds it. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq)]
pub struct Token {
    secret: [u8; 16],
    pub addrs: Vec<String>,
    /// Made for more than one node: its text says so (`MANY_PREFIX`), so `cloudy-image`
    /// keeps it off a PXE bundle.
    pub many: bool,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({}, {:?})", self.id(), self.addrs)
    }
}

impl Token {
    pub fn new(addrs: Vec<String>) -> Self {
        Token {
            secret: random_bytes::<16>(),
            addrs,
            many: false,
        }
    }

    /// Parses a token; the error never repeats the text, which is a secret.
    pub fn parse(s: &str) -> Result<Self, InviteError> {
        let s = s.trim();
        let (many, rest) = match (s.strip_prefix(PREFIX), s.strip_prefix(MANY_PREFIX)) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => return Err(InviteError::Malformed("it does not start with cloudy1:")),
        };
        let (secret, addrs) = rest
            .split_once('@')
            .ok_or(InviteError::Malformed("no @ before the addresses"))?;
        let secret: [u8; 16] = URL_SAFE_NO_PAD
            .decode(secret)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(InviteError::Malformed(
                "the secret is not 22 base64url characters",
            ))?;
        let addrs: Vec<String> = addrs.split(',').map(str::to_string).collect();
        if addrs.is_empty() || addrs.len() > MAX_ADDRS {
            return Err(InviteError::Malformed("it needs 1 to 4 addresses"));
        }
        if addrs
            .iter()
            .any(|a| cloudy_model::names::check_endpoint(a).is_err())
        {
            return Err(InviteError::Malformed("an address is not host:port"));
        }
        Ok(Token {
            secret,
            addrs,
            many,
        })
    }

    /// Public: names the token in listings and in the redeemer's hello; a hash, so it does not
    /// give the secret away.
    pub fn id(&self) -> String {
        id_of(&self.hash())
    }

    /// What the inviter stores, and what the redeem handshake keys on.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"cloudy invite v1|");
        h.update(self.secret);
        h.finalize().into()
    }

    /// The token as a seed snippet, for `customise` or a seed file by hand.
    pub fn seed_snippet(&self, community: &str) -> String {
        format!("[community]\nname = {community:?}\ninvite = \"{self}\"\n")
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{}@{}",
            if self.many { MANY_PREFIX } else { PREFIX },
            URL_SAFE_NO_PAD.encode(self.secret),
            self.addrs.join(",")
        )
    }
}

fn id_of(hash: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"cloudy invite id|");
    h.update(hash);
    hex(&h.finalize()[..8])
}

/// One outstanding invitation as the inviter keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Invitation {
    pub id: String,
    /// Hex SHA-256 of the secret (see `Token::hash`).
    pub hash: String,
    /// Only a node of this name may redeem it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Unix seconds.
    pub expires: u64,
    pub uses_left: u32,
}

/// What a redeemer is told when it is turned away: short, for its console or dashboard.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("this invitation is unknown here (wrong token, or revoked)")]
    Unknown,
    #[error("wrong invitation token")]
    Wrong,
    #[error("this invitation has expired")]
    Expired,
    #[error("this invitation was already used")]
    Used,
    #[error("this invitation is for node {0:?}")]
    OtherName(String),
    #[error("too many attempts from your address: wait a minute")]
    TooMany,
}

/// The inviter's side: the stored invitations, the community they open and the per-address
/// attempt counts.
pub struct Invites {
    path: PathBuf,
    pub community: String,
    key: String,
    list: Mutex<Vec<Invitation>>,
    attempts: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl std::fmt::Debug for Invites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Invites({})", self.path.display())
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Invites {
    /// The invitations kept at `path` (none if the file is missing) for `community`, whose key
    /// a redeemer receives.
    pub fn load(path: PathBuf, community: &str, key: &str) -> Result<Self, InviteError> {
        let list = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| InviteError::Invalid(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(InviteError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        Ok(Invites {
            path,
            community: community.to_string(),
            key: key.to_string(),
            list: Mutex::new(list),
            attempts: Mutex::new(HashMap::new()),
        })
    }

    fn save(&self, list: &[Invitation]) -> Result<(), InviteError> {
        let body = serde_json::to_vec_pretty(list).expect("invitations serialise");
        write_atomic(&self.path, &body, 0o600).map_err(|source| InviteError::Io {
            path: self.path.display().to_string(),
            source,
        })
    }

    /// A new token for `addrs`, valid for `valid` and `uses` redeems, bound to `name` if given.
    pub fn create(
        &self,
        addrs: Vec<String>,
        name: Option<String>,
        valid: Duration,
        uses: u32,
    ) -> Result<Token, InviteError> {
        if uses == 0 {
            return Err(InviteError::Invalid("uses must be at least 1".into()));
        }
        if addrs.is_empty() {
            return Err(InviteError::Invalid(
                "this node has no address to put in the token".into(),
            ));
        }
        if let Some(n) = &name {
            cloudy_model::names::check_hostname(n)
                .map_err(|p| InviteError::Invalid(format!("name {n:?}: {p}")))?;
        }
        let mut token = Token::new(addrs.into_iter().take(MAX_ADDRS).collect());
        token.many = uses > 1;
        let mut list = self.list.lock().unwrap();
        let t = now();
        list.retain(|i| i.expires > t && i.uses_left > 0);
        if list.len() >= MAX_INVITES {
            return Err(InviteError::Full(list.len()));
        }
        let mut next = list.clone();
        next.push(Invitation {
            id: token.id(),
            hash: hex(&token.hash()),
            name,
            expires: t.saturating_add(valid.as_secs()),
            uses_left: uses,
        });
        self.save(&next)?;
        *list = next;
        Ok(token)
    }

    pub fn list(&self) -> Vec<Invitation> {
        self.list.lock().unwrap().clone()
    }

    /// Removes the invitation `id`; whether there was one.
    pub fn revoke(&self, id: &str) -> Result<bool, InviteError> {
        let mut list = self.list.lock().unwrap();
        let next: Vec<Invitation> = list.iter().filter(|i| i.id != id).cloned().collect();
        if next.len() == list.len() {
            return Ok(false);
        }
        self.save(&next)?;
        *list = next;
        Ok(true)
    }

    /// Counts an attempt from `ip`; false once it made `MAX_ATTEMPTS` in the window.
    pub fn attempt(&self, ip: IpAddr) -> bool {
        let mut a = self.attempts.lock().unwrap();
        let t = Instant::now();
        // Bounded: stale entries go whenever the table grows.
        if a.len() > 1024 {
            a.retain(|_, (start, _)| t.duration_since(*start) < ATTEMPT_WINDOW);
        }
        let e = a.entry(ip).or_insert((t, 0));
        if t.duration_since(e.0) >= ATTEMPT_WINDOW {
            *e = (t, 0);
        }
        e.1 += 1;
        e.1 <= MAX_ATTEMPTS
    }

    /// The stored hash of invitation `id`, if there is one (used up or not: the redeemer
    /// proves the token before it is told why it is refused).
    pub fn hash_of(&self, id: &str) -> Option<[u8; 32]> {
        let list = self.list.lock().unwrap();
        let i = list.iter().find(|i| i.id == id)?;
        crate::os::identity::unhex(&i.hash)?.try_into().ok()
    }

    /// Uses invitation `id` for a node named `name` (its holder proved the token): the
    /// community name and key, or why not.
    pub fn take(&self, id: &str, name: &str) -> Result<(String, String), Refusal> {
        let mut list = self.list.lock().unwrap();
        let Some(pos) = list.iter().position(|i| i.id == id) else {
            return Err(Refusal::Unknown);
        };
        let i = &list[pos];
        if i.uses_left == 0 {
            return Err(Refusal::Used);
        }
        if i.expires <= now() {
            return Err(Refusal::Expired);
        }
        if let Some(n) = &i.name {
            if n != name {
                return Err(Refusal::OtherName(n.clone()));
            }
        }
        let mut next = list.clone();
        next[pos].uses_left -= 1;
        // A used-up token stays listed (so a second redeem hears "already used") until the
        // next `create` sweeps it.
        if let Err(e) = self.save(&next) {
            tracing::error!("invitation {id} cannot be marked used: {e}");
            return Err(Refusal::Unknown);
        }
        *list = next;
        // The stored key beside our file is the current one after a rekey; the one we were
        // loaded with, before any.
        let stored = std::fs::read_to_string(self.path.with_file_name("community.key"))
            .ok()
            .map(|k| k.trim_end_matches('\n').to_string())
            .filter(|k| !k.is_empty());
        Ok((
            self.community.clone(),
            stored.unwrap_or_else(|| self.key.clone()),
        ))
    }
}

/// `24h`, `30m`, `7d`, `90s` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: not a duration like 24h"))?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    n.checked_mul(mul)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?}: too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_hides_its_secret() {
        let t = Token::new(vec!["10.0.0.1:6655".into(), "[fd00::1]:6655".into()]);
        let s = t.to_string();
        assert!(s.starts_with(PREFIX), "{s}");
        assert_eq!(Token::parse(&s).unwrap(), t);
        let secret = s[PREFIX.len()..].split('@').next().unwrap().to_string();
        assert_eq!(secret.len(), 22);
        assert!(!format!("{t:?}").contains(&secret));
        let mut many = t.clone();
        many.many = true;
        assert!(many.to_string().starts_with(MANY_PREFIX));
        assert_eq!(Token::parse(&many.to_string()).unwrap(), many);
        let bad = s.replace('@', "#");
        let e = Token::parse(&bad).unwrap_err().to_string();
        assert!(!e.contains(&secret), "the error echoes the secret: {e}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("3w").is_err());
    }

    #[test]
    fn invitations_are_stored_hashed_used_once_and_revocable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invites.json");
        let inv = Invites::load(path.clone(), "lab", "0123456789abcdef").unwrap();
        let t = inv
            .create(
                vec!["10.0.0.1:6655".into()],
                None,
                Duration::from_secs(60),
                1,
            )
            .unwrap();
        let stored = std::fs::read_to_string(&path).unwrap();
        let secret = t.to_string()[PREFIX.len()..]
            .split('@')
            .next()
            .unwrap()
            .to_string();
        assert!(!stored.contains(&secret), "the token itself is stored");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(inv.take(&t.id(), "b").unwrap().0, "lab");
        assert_eq!(inv.take(&t.id(), "b"), Err(Refusal::Used));
        // The count survives a restart.
        let again = Invites::load(path.clone(), "lab", "0123456789abcdef").unwrap();
        assert_eq!(again.take(&t.id(), "b"), Err(Refusal::Used));
        let bound = inv
            .create(
                vec!["10.0.0.1:6655".into()],
                Some("c".into()),
                Duration::from_secs(60),
                2,
            )
            .unwrap();
        assert_eq!(
            inv.take(&bound.id(), "d"),
            Err(Refusal::OtherName("c".into()))
        );
        assert!(inv.revoke(&bound.id()).unwrap());
        assert_eq!(inv.take(&bound.id(), "c"), Err(Refusal::Unknown));
        let old = inv
            .create(
                vec!["10.0.0.1:6655".into()],
                None,
                Duration::from_secs(0),
                1,
            )
            .unwrap();
        assert_eq!(inv.take(&old.id(), "e"), Err(Refusal::Expired));
    }

    #[test]
    fn attempts_are_limited_per_address() {
        let dir = tempfile::tempdir().unwrap();
        let inv = Invites::load(dir.path().join("i.json"), "lab", "0123456789abcdef").unwrap();
        let a: IpAddr = "10.0.0.9".parse().unwrap();
        for _ in 0..MAX_ATTEMPTS {
            assert!(inv.attempt(a));
        }
        assert!(!inv.attempt(a));
        assert!(inv.attempt("10.0.0.8".parse().unwrap()));
    }
}
