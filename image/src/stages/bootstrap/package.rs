//! A Debian package or Python distribution as the manifest lists it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// Python distributions only: where the installed files came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Origin>,
    /// Python distributions only: the version another `[[pip]]` entry of the same venv pins
    /// on other arches, when this one differs (e.g. Debian's cryptography 38 here, PyPI's 50
    /// on amd64), as "<version> on <arches>".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elsewhere: Option<String>,
}

/// Where a Python distribution of a `[[pip]]` venv came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Origin {
    /// A wheel downloaded from PyPI.
    PypiWheel { file: String, sha256: String },
    /// A wheel built on the host from the PyPI source release (see wheel.rs).
    Built {
        file: String,
        sha256: String,
        inputs: super::wheel::Inputs,
    },
    /// A Debian package (the venv sees the system's site-packages).
    Debian { package: String, version: String },
    /// Put there by `python3 -m venv` itself (Debian's python3-venv bundles pip, setuptools).
    Venv,
}
