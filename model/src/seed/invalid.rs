//! What a section says of a key that is wrong.

/// A section's verdict on one of its keys: what is wrong and how to fix it. `Seed::validate`
/// adds the file's name.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub key: &'static str,
    pub problem: String,
    pub fix: String,
}

pub(crate) fn invalid(key: &'static str, problem: String, fix: impl Into<String>) -> Invalid {
    Invalid {
        key,
        problem,
        fix: fix.into(),
    }
}

pub(crate) const NAME_FIX: &str =
    "use 1-63 lowercase letters, digits and '-', not starting or ending with '-'";
