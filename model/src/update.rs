//! Update manifests: what an update bundle is (board, version, hash, size, channel, the earliest
//! version it updates from), and the rule that decides whether a node may install it: signed by
//! at least K of the community's N update keys, for this board and channel, newer than what runs.
//!
//! Shared by `cloudy-image` (which makes keys, writes and signs manifests) and `cloudy-agent`
//! (which verifies them before a byte reaches a slot), so both read the same bytes the same way.
//! A manifest travels as JSON: `{"manifest": {...}, "signatures": [...]}`. A signature covers
//! [`Manifest::signed_bytes`]: a domain tag and the manifest's own JSON, re-encoded from the
//! parsed struct, so whitespace or field order in the file cannot make two readings differ.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Prefixed to what a key signs, so that an update signature is never valid as anything else
/// (a rating, an exchange message) made with the same key.
const DOMAIN: &[u8] = b"cloudy-update-manifest-v1\n";

/// The largest manifest file a node reads (a few hundred bytes plus N signatures).
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpdateError {
    #[error("the manifest is not valid JSON of the expected shape: {0}")]
    Malformed(String),
    #[error("only {valid} valid signature(s) by the community's update keys, {needed} needed{}", bad_list(.bad))]
    TooFewSignatures {
        valid: usize,
        needed: usize,
        /// Listed keys whose signature did not verify (short ids).
        bad: Vec<String>,
    },
    #[error("the bundle is for board {offered:?}, this node is {node:?}")]
    WrongBoard { offered: String, node: String },
    #[error("the bundle is on channel {offered}, this node follows {node}")]
    WrongChannel { offered: Channel, node: Channel },
    #[error("version {offered} is not newer than the running {running}: a downgrade is refused")]
    Downgrade { offered: Version, running: Version },
    #[error("version {offered} updates only from {min} or later; this node runs {running}")]
    TooOld {
        offered: Version,
        min: Version,
        running: Version,
    },
    #[error("the bundle does not match its manifest: {0}")]
    BundleMismatch(String),
    #[error("update keys: {0}")]
    Keys(String),
}

fn bad_list(bad: &[String]) -> String {
    if bad.is_empty() {
        String::new()
    } else {
        format!("; bad signature(s) from {}", bad.join(", "))
    }
}

/// A release version: one to four dot-separated numbers (`1.4.0`, `2026.11.29`), ordered
/// numerically part by part, missing parts counting as 0.
#[derive(Debug, Clone)]
pub struct Version(Vec<u32>);

// `1.2` and `1.2.0` are the same release, so equality follows the order.
impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Version {}

impl Version {
    fn key(&self) -> [u32; 4] {
        let mut k = [0; 4];
        for (i, p) in self.0.iter().enumerate() {
            k[i] = *p;
        }
        k
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl FromStr for Version {
    type Err = UpdateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            UpdateError::Malformed(format!(
                "version {:?}: expected 1 to 4 dot-separated numbers, e.g. \"1.4.0\"",
                s.chars().take(40).collect::<String>()
            ))
        };
        let parts: Vec<&str> = s.split('.').collect();
        if parts.is_empty() || parts.len() > 4 {
            return Err(bad());
        }
        let mut v = Vec::with_capacity(parts.len());
        for p in parts {
            if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            v.push(p.parse().map_err(|_| bad())?);
        }
        Ok(Version(v))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u32::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    #[default]
    Stable,
    Testing,
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Channel::Stable => "stable",
            Channel::Testing => "testing",
        })
    }
}

/// What one update bundle is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The board name (`hardware/<board>.toml`) the bundle is built for.
    pub board: String,
    pub version: Version,
    /// The bundle file's name, as served next to the manifest (no path).
    pub bundle: String,
    /// sha256 of the whole bundle file, lowercase hex.
    pub sha256: String,
    /// The bundle file's size in bytes.
    pub size: u64,
    pub channel: Channel,
    /// The earliest running version this bundle may update.
    pub min_version: Version,
}

impl Manifest {
    /// What a key signs: the domain tag, then the manifest's JSON.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut b = DOMAIN.to_vec();
        b.extend(serde_json::to_vec(self).expect("a manifest always encodes"));
        b
    }

    fn check_shape(&self) -> Result<(), UpdateError> {
        let name_ok = !self.bundle.is_empty()
            && self.bundle.len() <= 128
            && !self.bundle.starts_with('.')
            && self
                .bundle
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b));
        if !name_ok {
            return Err(UpdateError::Malformed(format!(
                "bundle name {:?} is not a plain file name",
                self.bundle.chars().take(40).collect::<String>()
            )));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(UpdateError::Malformed("sha256 is not 64 hex digits".into()));
        }
        if self.min_version > self.version {
            return Err(UpdateError::Malformed(format!(
                "min_version {} is above version {}",
                self.min_version, self.version
            )));
        }
        Ok(())
    }
}

/// One key's signature over a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSignature {
    /// The signer's public key, base64 (32 bytes).
    pub key: String,
    /// The ed25519 signature, base64 (64 bytes).
    pub signature: String,
}

/// A manifest and the signatures collected for it so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    pub manifest: Manifest,
    #[serde(default)]
    pub signatures: Vec<ManifestSignature>,
}

impl SignedManifest {
    pub fn parse(bytes: &[u8]) -> Result<Self, UpdateError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(UpdateError::Malformed(format!(
                "{} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have",
                bytes.len()
            )));
        }
        let m: SignedManifest =
            serde_json::from_slice(bytes).map_err(|e| UpdateError::Malformed(e.to_string()))?;
        m.manifest.check_shape()?;
        Ok(m)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest always encodes")
    }

    /// Adds (or replaces) `key`'s signature.
    pub fn sign(&mut self, key: &SigningKey) {
        let public = B64.encode(key.verifying_key().as_bytes());
        let signature = B64.encode(key.sign(&self.manifest.signed_bytes()).to_bytes());
        self.signatures.retain(|s| s.key != public);
        self.signatures.push(ManifestSignature {
            key: public,
            signature,
        });
    }

    /// The manifest, if at least `keys.threshold` distinct listed keys signed it. Signatures
    /// by keys that are not listed are ignored; a listed key's signature that does not verify
    /// is named in the error when the rest are too few.
    pub fn verify(&self, keys: &UpdateKeys) -> Result<&Manifest, UpdateError> {
        let msg = self.manifest.signed_bytes();
        let mut valid = BTreeSet::new();
        let mut bad = Vec::new();
        for s in &self.signatures {
            let Some(key) = keys.keys.iter().find(|k| B64.encode(k.as_bytes()) == s.key) else {
                continue;
            };
            let ok = B64
                .decode(&s.signature)
                .ok()
                .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok())
                .is_some_and(|sig| key.verify_strict(&msg, &sig).is_ok());
            if ok {
                valid.insert(key.to_bytes());
            } else {
                bad.push(key_id(key));
            }
        }
        if valid.len() < keys.threshold {
            return Err(UpdateError::TooFewSignatures {
                valid: valid.len(),
                needed: keys.threshold,
                bad,
            });
        }
        Ok(&self.manifest)
    }
}

/// The community's update keys and how many of them must sign (K of N).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateKeys {
    pub threshold: usize,
    pub keys: Vec<VerifyingKey>,
}

impl UpdateKeys {
    /// From base64 public keys (as `cloudy-image keys new` prints them) and K.
    pub fn new(threshold: usize, keys: &[String]) -> Result<Self, UpdateError> {
        let mut parsed = Vec::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            let bytes: [u8; 32] = B64
                .decode(k.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    UpdateError::Keys(format!("key {} is not a base64 32-byte public key", i + 1))
                })?;
            let key = VerifyingKey::from_bytes(&bytes).map_err(|_| {
                UpdateError::Keys(format!("key {} is not an ed25519 public key", i + 1))
            })?;
            if key.is_weak() {
                return Err(UpdateError::Keys(format!("key {} is a weak key", i + 1)));
            }
            if parsed.contains(&key) {
                return Err(UpdateError::Keys(format!(
                    "key {} is listed twice; each key counts once",
                    i + 1
                )));
            }
            parsed.push(key);
        }
        if threshold == 0 || threshold > parsed.len() {
            return Err(UpdateError::Keys(format!(
                "threshold {threshold} with {} key(s): it must be between 1 and the number of keys",
                parsed.len()
            )));
        }
        Ok(UpdateKeys {
            threshold,
            keys: parsed,
        })
    }
}

/// A short, stable name for a key in messages: its first 8 bytes in hex.
pub fn key_id(key: &VerifyingKey) -> String {
    key.as_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the node is, for [`offer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub board: String,
    pub version: Version,
    pub channel: Channel,
}

/// Whether this node may install what the signed manifest offers: signatures first (an
/// unsigned manifest says nothing worth reporting), then board, channel and versions.
pub fn offer<'a>(
    signed: &'a SignedManifest,
    keys: &UpdateKeys,
    node: &Running,
) -> Result<&'a Manifest, UpdateError> {
    let m = signed.verify(keys)?;
    if m.board != node.board {
        return Err(UpdateError::WrongBoard {
            offered: m.board.clone(),
            node: node.board.clone(),
        });
    }
    // A node on testing takes stable releases too; a stable node never takes testing.
    if m.channel == Channel::Testing && node.channel == Channel::Stable {
        return Err(UpdateError::WrongChannel {
            offered: m.channel,
            node: node.channel,
        });
    }
    if m.version <= node.version {
        return Err(UpdateError::Downgrade {
            offered: m.version.clone(),
            running: node.version.clone(),
        });
    }
    if node.version < m.min_version {
        return Err(UpdateError::TooOld {
            offered: m.version.clone(),
            min: m.min_version.clone(),
            running: node.version.clone(),
        });
    }
    Ok(m)
}

/// Hashes a bundle as it is read and checks it against its manifest at the end; a caller
/// feeds it every byte it writes to a temporary file, and installs nothing unless `finish` is
/// `Ok`.
pub struct BundleCheck {
    hasher: Sha256,
    seen: u64,
    want_size: u64,
    want_sha256: String,
}

impl BundleCheck {
    pub fn new(m: &Manifest) -> Self {
        BundleCheck {
            hasher: Sha256::new(),
            seen: 0,
            want_size: m.size,
            want_sha256: m.sha256.to_ascii_lowercase(),
        }
    }

    /// Feeds the next bytes; refuses as soon as there are more than the manifest says.
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), UpdateError> {
        self.seen += bytes.len() as u64;
        if self.seen > self.want_size {
            return Err(UpdateError::BundleMismatch(format!(
                "more than the {} bytes the manifest gives",
                self.want_size
            )));
        }
        self.hasher.update(bytes);
        Ok(())
    }

    pub fn finish(self) -> Result<(), UpdateError> {
        if self.seen != self.want_size {
            return Err(UpdateError::BundleMismatch(format!(
                "{} bytes, the manifest gives {}",
                self.seen, self.want_size
            )));
        }
        let got: String = self
            .hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if got != self.want_sha256 {
            return Err(UpdateError::BundleMismatch(format!(
                "sha256 {got}, the manifest gives {}",
                self.want_sha256
            )));
        }
        Ok(())
    }
}

/// sha256 of `bytes`, lowercase hex (for writing manifests).
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new update key from the OS's random source: (secret seed as base64, public key as base64).
pub fn encode_signing_key(key: &SigningKey) -> (String, String) {
    (
        B64.encode(key.to_bytes()),
        B64.encode(key.verifying_key().as_bytes()),
    )
}

/// Reads a secret key written by [`encode_signing_key`].
pub fn decode_signing_key(text: &str) -> Result<SigningKey, UpdateError> {
    let bytes: [u8; 32] = B64
        .decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| UpdateError::Keys("not a base64 32-byte secret key".into()))?;
    Ok(SigningKey::from_bytes(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn keys(k: usize, n: u8) -> UpdateKeys {
        let public: Vec<String> = (1..=n)
            .map(|i| encode_signing_key(&key(i)).1)
            .collect::<Vec<_>>();
        UpdateKeys::new(k, &public).unwrap()
    }

    fn manifest(version: &str) -> Manifest {
        Manifest {
            board: "pc-686-pae".into(),
            version: version.parse().unwrap(),
            bundle: format!("cloudy-pc-686-pae-{version}.raucb"),
            sha256: sha256_hex(b"bundle"),
            size: 6,
            channel: Channel::Stable,
            min_version: "1.0".parse().unwrap(),
        }
    }

    fn running(v: &str) -> Running {
        Running {
            board: "pc-686-pae".into(),
            version: v.parse().unwrap(),
            channel: Channel::Stable,
        }
    }

    fn signed(version: &str, by: &[u8]) -> SignedManifest {
        let mut s = SignedManifest {
            manifest: manifest(version),
            signatures: vec![],
        };
        for i in by {
            s.sign(&key(*i));
        }
        s
    }

    #[test]
    fn versions_order_numerically() {
        let v = |s: &str| s.parse::<Version>().unwrap();
        assert!(v("1.10") > v("1.9"));
        assert_eq!(v("1.2"), v("1.2.0"));
        assert!(v("2026.11.29") > v("2026.2.1"));
        for bad in ["", "1..2", "a.b", "1.2.3.4.5", "-1", "1.2 ", "9999999999"] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn k_of_n_distinct_signatures_are_needed() {
        let k = keys(2, 3);
        assert!(offer(&signed("1.1", &[1, 3]), &k, &running("1.0")).is_ok());
        // One key signing twice still counts once.
        let mut twice = signed("1.1", &[1]);
        twice.signatures.push(twice.signatures[0].clone());
        assert_eq!(
            offer(&twice, &k, &running("1.0")),
            Err(UpdateError::TooFewSignatures {
                valid: 1,
                needed: 2,
                bad: vec![]
            })
        );
        // A key the community does not list adds nothing.
        assert!(matches!(
            offer(&signed("1.1", &[1, 9]), &k, &running("1.0")),
            Err(UpdateError::TooFewSignatures { valid: 1, .. })
        ));
    }

    #[test]
    fn a_signature_over_other_bytes_is_bad_and_named() {
        let k = keys(2, 3);
        let mut s = signed("1.1", &[1, 2]);
        // Changed after signing: the signatures no longer cover it.
        s.manifest.sha256 = sha256_hex(b"evil");
        let err = offer(&s, &k, &running("1.0")).unwrap_err();
        assert_eq!(
            err,
            UpdateError::TooFewSignatures {
                valid: 0,
                needed: 2,
                bad: vec![
                    key_id(&key(1).verifying_key()),
                    key_id(&key(2).verifying_key())
                ]
            }
        );
        assert!(err.to_string().contains("bad signature(s) from"));
    }

    #[test]
    fn board_channel_and_versions_are_checked_after_signatures() {
        let k = keys(1, 1);
        let mut other = signed("1.1", &[]);
        other.manifest.board = "rpi3".into();
        other.sign(&key(1));
        assert!(matches!(
            offer(&other, &k, &running("1.0")),
            Err(UpdateError::WrongBoard { .. })
        ));
        assert!(matches!(
            offer(&signed("1.0", &[1]), &k, &running("1.0")),
            Err(UpdateError::Downgrade { .. })
        ));
        assert!(matches!(
            offer(&signed("0.9", &[1]), &k, &running("1.0")),
            Err(UpdateError::Downgrade { .. })
        ));
        let mut testing = signed("1.1", &[]);
        testing.manifest.channel = Channel::Testing;
        testing.sign(&key(1));
        assert!(matches!(
            offer(&testing, &k, &running("1.0")),
            Err(UpdateError::WrongChannel { .. })
        ));
        let mut node = running("1.0");
        node.channel = Channel::Testing;
        assert!(offer(&testing, &k, &node).is_ok());
        assert!(matches!(
            offer(&signed("1.1", &[1]), &k, &running("0.5")),
            Err(UpdateError::TooOld { .. })
        ));
    }

    #[test]
    fn the_json_form_round_trips_and_refuses_odd_input() {
        let s = signed("1.1", &[1]);
        let back = SignedManifest::parse(s.to_json().as_bytes()).unwrap();
        assert_eq!(back, s);
        assert!(back.verify(&keys(1, 1)).is_ok());
        let extra = s
            .to_json()
            .replacen("\"board\"", "\"extra\": 1, \"board\"", 1);
        assert!(SignedManifest::parse(extra.as_bytes()).is_err());
        let mut bad_name = s.clone();
        bad_name.manifest.bundle = "../etc/passwd".into();
        assert!(SignedManifest::parse(bad_name.to_json().as_bytes()).is_err());
        assert!(SignedManifest::parse(&vec![b' '; MAX_MANIFEST_BYTES + 1]).is_err());
    }

    #[test]
    fn the_bundle_must_match_hash_and_size() {
        let m = manifest("1.1");
        let mut c = BundleCheck::new(&m);
        c.update(b"bun").unwrap();
        c.update(b"dle").unwrap();
        c.finish().unwrap();
        let mut c = BundleCheck::new(&m);
        c.update(b"bundlX").unwrap();
        assert!(c.finish().is_err());
        let mut c = BundleCheck::new(&m);
        assert!(c.update(b"bundle!").is_err());
        let mut c = BundleCheck::new(&m);
        c.update(b"bund").unwrap();
        assert!(c.finish().is_err());
    }

    #[test]
    fn keys_must_be_sane() {
        let one = encode_signing_key(&key(1)).1;
        assert!(UpdateKeys::new(0, std::slice::from_ref(&one)).is_err());
        assert!(UpdateKeys::new(2, std::slice::from_ref(&one)).is_err());
        assert!(UpdateKeys::new(1, &[one.clone(), one.clone()]).is_err());
        assert!(UpdateKeys::new(1, &["AAAA".into()]).is_err());
        let (secret, public) = encode_signing_key(&key(7));
        assert_eq!(
            encode_signing_key(&decode_signing_key(&secret).unwrap()).1,
            public
        );
    }
}
