//! Reading the TOML files a user writes (recipes, boards): strict, versioned, and with errors
//! that name the file, the key and the fix.

use serde::de::DeserializeOwned;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}\n  fix: {fix}")]
    Parse {
        file: String,
        message: String,
        fix: String,
    },
    #[error("{file}: key `{key}`: {problem}\n  fix: {fix}")]
    Invalid {
        file: String,
        key: String,
        problem: String,
        fix: String,
    },
    #[error("unknown board `{name}` (no {file})\n  fix: use one of: {known}")]
    UnknownBoard {
        name: String,
        file: String,
        known: String,
    },
}

impl ConfigError {
    pub fn invalid(
        file: &Path,
        key: &str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            file: file.display().to_string(),
            key: key.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// Parses a versioned TOML file: the `version` key is checked first, so a file written for
/// another format version is told so instead of getting a list of unknown keys.
pub fn load<T: DeserializeOwned>(
    path: &Path,
    version: u32,
    what: &str,
) -> Result<(T, String), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.display().to_string(),
        source,
    })?;
    let parsed = parse(path, &text, version, what)?;
    Ok((parsed, text))
}

pub fn parse<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    version: u32,
    what: &str,
) -> Result<T, ConfigError> {
    let file = path.display().to_string();
    let syntax_fix =
        format!("correct the TOML syntax at the position shown ({what} format: see README.md)");
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
        file: file.clone(),
        message: one_line(&e),
        fix: syntax_fix,
    })?;
    match table.get("version") {
        Some(toml::Value::Integer(v)) if *v == i64::from(version) => {}
        Some(v) => {
            return Err(ConfigError::invalid(
                path,
                "version",
                format!("unsupported {what} version {v}"),
                format!("this cloudy-image reads {what} version {version}"),
            ))
        }
        None => {
            return Err(ConfigError::invalid(
                path,
                "version",
                "missing",
                format!("add `version = {version}` at the top"),
            ))
        }
    }
    toml::from_str(text).map_err(|e| {
        let message = one_line(&e);
        let fix = if message.contains("unknown field") {
            format!("remove or rename the key; the {what} keys are listed in README.md")
        } else if message.contains("missing field") {
            "add the missing key".to_string()
        } else {
            format!("give the key a value of the right type ({what} format: see README.md)")
        };
        ConfigError::Parse { file, message, fix }
    })
}

/// toml's messages span several lines with a source excerpt; keep them but indent.
fn one_line(e: &toml::de::Error) -> String {
    e.to_string().trim_end().replace('\n', "\n    ")
}
