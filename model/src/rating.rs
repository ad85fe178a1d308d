//! A user's rating of a provider: 1-5 stars and a short comment, made on one node (the rater)
//! about a service kind on another (the provider), signed by the rater's node key and fetched
//! by the other members over the exchange port. This module is the rating's form and its
//! limits; the agent signs, verifies and stores (`agent/src/probe/ratings.rs`).

use serde::{Deserialize, Serialize};

use crate::names::{is_kind, is_node_id};

/// A comment is read by people, next to a Join button: a sentence or two.
pub const MAX_COMMENT: usize = 280;
/// Ratings one node may hold as a rater (one per provider and kind): a list longer than this
/// is refused whole, so 1000 ratings from one node cost nothing but their bytes on the wire.
pub const MAX_PER_RATER: usize = 256;
/// The largest rating list a member may send: `MAX_PER_RATER` ratings with the longest
/// comment (4 bytes a character at worst, JSON escapes aside) and their fixed fields.
pub const MAX_LIST: usize = MAX_PER_RATER * (MAX_COMMENT * 6 + 512);

/// One rating, as it travels and as it is stored. `sig` is the rater's ed25519 signature (hex)
/// over `signed_bytes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rating {
    /// The rating node's id.
    pub rater: String,
    /// The rated node's id.
    pub provider: String,
    /// The service kind rated.
    pub kind: String,
    /// 1..=5.
    pub stars: u8,
    #[serde(default)]
    pub comment: String,
    /// The rater's counter (its clock in ms, never going back): a higher one replaces a lower.
    pub seq: u64,
    pub sig: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RatingError {
    #[error("stars must be 1 to 5, not {0}")]
    Stars(u8),
    #[error("the comment has {0} characters ({MAX_COMMENT} allowed)")]
    CommentTooLong(usize),
    #[error("the comment has a control character ({0:?})")]
    Control(char),
    #[error("{0:?} is not a service type")]
    Kind(String),
    #[error("{0:?} is not a node id")]
    NodeId(String),
    #[error("a node cannot rate itself")]
    Itself,
    #[error("the signature is not 128 hex digits")]
    Signature,
    #[error("more than {MAX_PER_RATER} ratings")]
    TooMany,
    #[error("rating list longer than {MAX_LIST} bytes")]
    TooLong,
    #[error("malformed rating list: {0}")]
    Malformed(String),
}

/// A comment a user may give: at most `MAX_COMMENT` characters, none of them a control
/// character (no newline to forge a second line in a log, no escape sequence for a terminal).
/// Markup is allowed here and escaped where shown.
pub fn check_comment(c: &str) -> Result<(), RatingError> {
    let n = c.chars().count();
    if n > MAX_COMMENT {
        return Err(RatingError::CommentTooLong(n));
    }
    // Bidirectional overrides and other format characters are kept out too: they make a
    // comment read differently from what it says.
    if let Some(ch) = c.chars().find(|ch| {
        ch.is_control()
            || ('\u{200b}'..='\u{200f}').contains(ch)
            || ('\u{202a}'..='\u{202e}').contains(ch)
            || ('\u{2066}'..='\u{2069}').contains(ch)
    }) {
        return Err(RatingError::Control(ch));
    }
    Ok(())
}

pub fn check_stars(stars: u8) -> Result<(), RatingError> {
    if (1..=5).contains(&stars) {
        Ok(())
    } else {
        Err(RatingError::Stars(stars))
    }
}

impl Rating {
    /// What the rater signs: every field but the signature, each in a fixed, unambiguous form
    /// (lengths before the free text, so no comment can shift a field).
    pub fn signed_bytes(&self) -> Vec<u8> {
        format!(
            "cloudy rating v1|{}|{}|{}|{}|{}|{}|{}",
            self.rater,
            self.provider,
            self.kind,
            self.stars,
            self.seq,
            self.comment.len(),
            self.comment
        )
        .into_bytes()
    }

    /// The form of every field (not the signature's validity: that needs the rater's key).
    pub fn check(&self) -> Result<(), RatingError> {
        for id in [&self.rater, &self.provider] {
            if !is_node_id(id) {
                return Err(RatingError::NodeId(id.clone()));
            }
        }
        if self.rater == self.provider {
            return Err(RatingError::Itself);
        }
        if !is_kind(&self.kind) {
            return Err(RatingError::Kind(self.kind.clone()));
        }
        check_stars(self.stars)?;
        check_comment(&self.comment)?;
        if self.sig.len() != 128
            || !self
                .sig
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(RatingError::Signature);
        }
        Ok(())
    }

    /// Stars mapped to 0..=100 (1 -> 0, 5 -> 100), the probe score's scale.
    pub fn as_score(stars: f64) -> f64 {
        (stars - 1.0) * 25.0
    }
}

/// A member's rating list, checked: bounded in bytes and count, each rating in its form.
/// Whose ratings they may be, and their signatures, the agent checks against its member list.
pub fn parse_list(bytes: &[u8]) -> Result<Vec<Rating>, RatingError> {
    if bytes.len() > MAX_LIST {
        return Err(RatingError::TooLong);
    }
    let v: Vec<Rating> =
        serde_json::from_slice(bytes).map_err(|e| RatingError::Malformed(e.to_string()))?;
    if v.len() > MAX_PER_RATER {
        return Err(RatingError::TooMany);
    }
    for r in &v {
        r.check()?;
    }
    Ok(v)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn rating(rater: char, provider: char, stars: u8, comment: &str) -> Rating {
        Rating {
            rater: rater.to_string().repeat(32),
            provider: provider.to_string().repeat(32),
            kind: "syncthing".into(),
            stars,
            comment: comment.into(),
            seq: 1,
            sig: "0".repeat(128),
        }
    }

    #[test]
    fn a_good_rating_passes() {
        assert_eq!(rating('a', 'b', 5, "fast and friendly").check(), Ok(()));
        // Markup is allowed in the form (and escaped where shown).
        assert_eq!(
            rating('a', 'b', 1, "<script>alert(1)</script>").check(),
            Ok(())
        );
    }

    #[test]
    fn a_10_kib_comment_is_refused() {
        let r = rating('a', 'b', 3, &"x".repeat(10 * 1024));
        assert_eq!(r.check(), Err(RatingError::CommentTooLong(10 * 1024)));
        assert_eq!(
            rating('a', 'b', 3, &"é".repeat(MAX_COMMENT)).check(),
            Ok(())
        );
    }

    #[test]
    fn control_characters_are_refused() {
        for c in [
            "line\nforged log line",
            "\u{1b}[31mred",
            "nul\0",
            "bidi \u{202e}txt",
            "\u{7f}",
        ] {
            assert!(
                matches!(rating('a', 'b', 3, c).check(), Err(RatingError::Control(_))),
                "{c:?}"
            );
        }
    }

    #[test]
    fn stars_kinds_ids_and_self_are_checked() {
        assert_eq!(rating('a', 'b', 0, "").check(), Err(RatingError::Stars(0)));
        assert_eq!(rating('a', 'b', 6, "").check(), Err(RatingError::Stars(6)));
        assert_eq!(rating('a', 'a', 5, "").check(), Err(RatingError::Itself));
        let mut r = rating('a', 'b', 5, "");
        r.kind = "../x".into();
        assert!(matches!(r.check(), Err(RatingError::Kind(_))));
        let mut r = rating('a', 'b', 5, "");
        r.provider = "B".repeat(32);
        assert!(matches!(r.check(), Err(RatingError::NodeId(_))));
        let mut r = rating('a', 'b', 5, "");
        r.sig = "zz".into();
        assert_eq!(r.check(), Err(RatingError::Signature));
    }

    #[test]
    fn lists_are_bounded_and_strict() {
        let many: Vec<Rating> = (0..1000).map(|_| rating('a', 'b', 4, "")).collect();
        let bytes = serde_json::to_vec(&many).unwrap();
        assert_eq!(parse_list(&bytes), Err(RatingError::TooMany));
        assert_eq!(
            parse_list(&vec![b' '; MAX_LIST + 1]),
            Err(RatingError::TooLong)
        );
        let unknown = br#"[{"rater":"x","extra":1}]"#;
        assert!(matches!(
            parse_list(unknown),
            Err(RatingError::Malformed(_))
        ));
        let one = serde_json::to_vec(&[rating('a', 'b', 4, "ok")]).unwrap();
        assert_eq!(parse_list(&one).unwrap().len(), 1);
    }

    #[test]
    fn the_signed_form_covers_every_field() {
        let a = rating('a', 'b', 4, "x");
        let mut b = a.clone();
        b.stars = 5;
        assert_ne!(a.signed_bytes(), b.signed_bytes());
        let mut c = a.clone();
        c.seq = 2;
        assert_ne!(a.signed_bytes(), c.signed_bytes());
        assert_eq!(Rating::as_score(1.0), 0.0);
        assert_eq!(Rating::as_score(5.0), 100.0);
    }
}
