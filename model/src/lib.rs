//! cloudy-model: what cloudy-agent and cloudy-image share, with no async runtime and no
//! network code, so that the image builder and the fuzz targets need nothing else.
//!
//! - `names`: the syntax of names (hostnames, node ids, kinds, interfaces, endpoints)
//! - `kinds`: the one table of service kinds
//! - `record`: the service record, its limits, its TXT and JSON forms
//! - `info`: a node's info (its status for the Community map), as it travels between members
//! - `summary`: a member's probe summary, as it travels between members
//! - `rating`: a user's rating of a provider, its limits and its signed form
//! - `seed`: the user's `cloudy.toml`, a file per section
//! - `update`: update manifests, signed by K of the community's N update keys, and who may install them

pub mod info;
pub mod kinds;
pub mod names;
pub mod rating;
pub mod record;
pub mod seed;
pub mod summary;
pub mod update;
